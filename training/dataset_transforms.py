"""Image conversion for dataset_tool.py: colour mode, crop and resize to the output format.

Mode rule: a dataset is written grayscale (1 channel) when every source image has a grayscale mode
('1', 'L', 'LA', 'I', 'I;16*', 'F'), and RGB (3 channels) otherwise. Alpha (RGBA, LA, palette
transparency) is composited onto black, i.e. colours are multiplied by alpha, so fully transparent
pixels become black whatever colour they happened to store. 16-bit images are scaled to 8 bits
(65535 -> 255), not clipped. CMYK, YCbCr and palette images are converted to RGB by PIL.

Transforms (`--transform`), for an output of `--resolution=WxH`:
- none: resize to WxH (the aspect ratio changes if it differs);
- center-crop: crop the largest centred W:H region, then resize to WxH;
- center-crop-wide: the same, then paste centred into a black SxS canvas, S = max(W, H)
  (letterboxing: a wide image keeps its full width, with black bars above and below).
"""

import re

import numpy as np
import PIL.Image

from training.dataset_io import DatasetError

TRANSFORMS = ("center-crop", "center-crop-wide")
RESIZE_FILTERS = {"box": PIL.Image.Resampling.BOX, "lanczos": PIL.Image.Resampling.LANCZOS}
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def parse_resolution(text: str):
    """'WxH' or 'N' (= NxN) -> (W, H); anything else raises DatasetError."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text or "")
    if not match:
        raise DatasetError(f"--resolution={text!r}: expected WIDTHxHEIGHT, e.g. --resolution=256x256")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width < 1 or height < 1:
        raise DatasetError(f"--resolution={text!r}: width and height must be positive, e.g. --resolution=256x256")
    return width, height


def is_grayscale_mode(mode: str) -> bool:
    return mode in GRAYSCALE_MODES


def output_size(first_size, resolution=None, transform=None):
    """(width, height) of the written images, given the first source image's size and the options."""
    if resolution is None:
        if transform is not None:
            raise DatasetError(f"--transform={transform} needs --resolution=WxH (the output size); add it")
        return tuple(first_size)
    width, height = resolution
    if transform == "center-crop-wide":
        side = max(width, height)
        return side, side
    return width, height


def check_output_size(size):
    """Raise DatasetError unless `size` is square with a power-of-two side."""
    width, height = size
    if width != height or width & (width - 1) != 0:
        raise DatasetError(
            f"output images would be {width}x{height}, but training needs square images with a power-of-two side; "
            "pass --resolution=NxN (e.g. 256x256), plus --transform=center-crop or center-crop-wide "
            "for non-square sources"
        )


def to_mode(image: PIL.Image.Image, channels: int) -> PIL.Image.Image:
    """Convert a loaded image to 'L' (channels=1) or 'RGB' (channels=3) following the module's mode rule."""
    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = PIL.Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif image.mode == "F":
        image = PIL.Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), "L")
    elif image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
        rgb = (rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255  # Composite onto black, rounded.
        image = PIL.Image.fromarray(rgb.astype(np.uint8), "RGB")
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def crop_to_aspect(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """The largest centred region of `image` with aspect width:height."""
    src_w, src_h = image.size
    if src_w * height > src_h * width:  # Source is wider: trim left and right.
        crop_w = max(1, round(src_h * width / height))
        left = (src_w - crop_w) // 2
        return image.crop((left, 0, left + crop_w, src_h))
    crop_h = max(1, round(src_w * height / width))
    top = (src_h - crop_h) // 2
    return image.crop((0, top, src_w, top + crop_h))


def resize(image: PIL.Image.Image, size, resize_filter: str) -> PIL.Image.Image:
    """Resize to `size` (w, h). Box on an integer factor uses PIL's reduce: an exact block mean, rounded once."""
    if tuple(image.size) == tuple(size):
        return image
    src_w, src_h = image.size
    width, height = size
    if resize_filter == "box" and src_w % width == 0 and src_h % height == 0:
        return image.reduce((src_w // width, src_h // height))
    return image.resize((width, height), RESIZE_FILTERS[resize_filter])


def make_transform(resolution=None, transform=None, resize_filter="lanczos"):
    """A function PIL image ('L'/'RGB') -> PIL image of the output size (see the module doc)."""
    if resize_filter not in RESIZE_FILTERS:
        raise DatasetError(f"--resize-filter={resize_filter}: unknown; use box or lanczos")
    if transform is not None and transform not in TRANSFORMS:
        raise DatasetError(f"--transform={transform}: unknown; use center-crop or center-crop-wide")
    if resolution is None:
        if transform is not None:
            raise DatasetError(f"--transform={transform} needs --resolution=WxH (the output size); add it")
        return lambda image: image
    width, height = resolution

    def apply(image):
        if transform is not None:
            image = crop_to_aspect(image, width, height)
        image = resize(image, (width, height), resize_filter)
        if transform == "center-crop-wide" and width != height:
            side = max(width, height)
            canvas = PIL.Image.new(image.mode, (side, side), 0)
            canvas.paste(image, ((side - width) // 2, (side - height) // 2))
            image = canvas
        return image

    return apply
