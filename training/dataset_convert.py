"""Convert an image source into a training dataset: the logic behind dataset_tool.py.

Two passes. The scan reads only image headers (mode and size) to pick the output mode (grayscale
only when every image is grayscale) and to check sizes before anything is written; CIFAR and sample
sources have a known format and skip it. The write pass decodes, converts and stores each image
through the atomic DatasetWriter. With skip_bad, unreadable files are left out and reported (a file
whose header reads but whose pixels are corrupt is found in the write pass, so the dataset then has
fewer than max_images images); without it, the first one stops the conversion with its name.
"""

import dataclasses
import itertools
import os
from typing import Optional

import numpy as np

from training.dataset_io import DatasetError, load_pixels
from training.dataset_sources import open_source
from training.dataset_transforms import check_output_size, is_grayscale_mode, make_transform, output_size, to_mode
from training.dataset_writer import DatasetWriter, check_destination


@dataclasses.dataclass
class ScanResult:
    """What the scan pass learned about the images to write."""

    items: list              # SourceItems to write, in order.
    channels: int            # 1 (all grayscale) or 3.
    first_size: tuple        # (width, height) of the first image.
    skipped: list            # [(name, reason)] of unreadable files.


@dataclasses.dataclass
class ConvertResult:
    """Summary of a finished conversion."""

    dest: str                # Absolute path of the written dataset.
    source: str              # Description of the source.
    num_images: int          # Images written.
    resolution: int          # Side of the square images.
    channels: int            # 1 or 3.
    labelled: bool           # Whether dataset.json has labels.
    class_names: Optional[list]  # Class names written, or None.
    label_kind: str          # "none", "classes" or "vectors of length D".
    skipped: list            # [(name, reason)] of files left out (skip_bad).


def _no_progress(iterable, total, desc):
    return iterable


def convert_dataset(
    source,                 # Folder, zip, CIFAR archive/folder path, or "sample:NAME".
    dest,                   # Output folder or .zip path.
    max_images=None,        # Write at most this many images (the first ones); None = all.
    resolution=None,        # (width, height) of the output; None = keep the source size.
    transform=None,         # None, "center-crop" or "center-crop-wide".
    resize_filter="lanczos",  # "box" or "lanczos".
    split=None,             # CIFAR split, "train" (default) or "test"; None for other sources.
    seed=None,              # Seed of sample: sources (default 0); None for other sources.
    skip_bad=False,         # Leave out unreadable files instead of stopping.
    overwrite=False,        # Replace an existing non-empty destination.
    progress=None,          # progress(iterable, total, desc) -> iterable, e.g. a tqdm wrapper; None = silent.
) -> ConvertResult:
    """Write `source` as a StyleGAN2-ADA dataset at `dest`. Bad input raises DatasetError."""
    progress = progress or _no_progress
    if max_images is not None and max_images < 1:
        raise DatasetError(f"--max-images={max_images}: must be at least 1")
    transform_fn = make_transform(resolution, transform, resize_filter)
    check_destination(dest, overwrite)
    if os.path.exists(source) and os.path.exists(dest) and os.path.samefile(source, dest):
        raise DatasetError(f"{dest}: --dest is the --source itself; pick another --dest")
    with open_source(source, split, seed, max_images) as src:
        scan = scan_source(src, max_images, same_size=resolution is None, skip_bad=skip_bad, progress=progress)
        size = output_size(scan.first_size, resolution, transform)
        check_output_size(size)
        return _write(src, scan, dest, overwrite, transform_fn, size, skip_bad, progress)


def scan_source(src, max_images=None, same_size=True, skip_bad=False, progress=_no_progress) -> ScanResult:
    """Pick the items to write and the output channels from image headers (see module doc)."""
    limit = len(src) if max_images is None else min(len(src), max_images)
    if src.uniform_format is not None:
        mode, size = src.uniform_format
        items = list(itertools.islice(src, limit))
        return ScanResult(items=items, channels=1 if is_grayscale_mode(mode) else 3, first_size=size, skipped=[])
    items, skipped, modes, first = [], [], set(), None
    for item in progress(src, total=limit, desc="Scanning"):
        if len(items) == limit:
            break
        try:
            with item.open() as image:
                mode, size = image.mode, image.size
        except DatasetError as exc:
            if not skip_bad:
                raise DatasetError(f"{exc} (or pass --skip-bad to leave such files out)") from None
            skipped.append((item.name, str(exc)))
            continue
        if first is None:
            first = (item, size)
        elif same_size and size != first[1]:
            raise DatasetError(
                f"{item.where}: image is {size[0]}x{size[1]} but the first image ({first[0].name}) is "
                f"{first[1][0]}x{first[1][1]}; pass --resolution=WxH (and --transform=center-crop for other "
                "aspect ratios) to resize every image"
            )
        items.append(item)
        modes.add(mode)
    if not items:
        raise DatasetError(f"{src.description}: none of the {len(skipped)} image files could be read")
    channels = 1 if all(is_grayscale_mode(mode) for mode in modes) else 3
    return ScanResult(items=items, channels=channels, first_size=first[1], skipped=skipped)


def load_converted(item, channels, transform_fn) -> np.ndarray:
    """Decode one item and convert it: uint8 `[H, W]` (channels=1) or `[H, W, 3]`."""
    image = load_pixels(item.open(), item.where)
    try:
        return np.asarray(transform_fn(to_mode(image, channels)))
    except DatasetError:
        raise
    except Exception as exc:  # PIL cannot convert some exotic modes (e.g. LAB); the file is unusable as is.
        raise DatasetError(f"{item.where}: cannot convert mode {image.mode} ({exc}); save it as RGB") from None
    finally:
        image.close()


def _write(src, scan, dest, overwrite, transform_fn, size, skip_bad, progress) -> ConvertResult:
    """The write pass: convert every planned item and store it; returns the summary."""
    skipped = list(scan.skipped)
    labels = []
    expected_shape = (size[1], size[0]) + ((3,) if scan.channels == 3 else ())
    with DatasetWriter(dest, overwrite) as writer:
        for item in progress(scan.items, total=len(scan.items), desc="Writing"):
            try:
                array = load_converted(item, scan.channels, transform_fn)
            except DatasetError as exc:
                if not skip_bad:
                    raise DatasetError(f"{exc} (or pass --skip-bad to leave such files out)") from None
                skipped.append((item.name, str(exc)))
                continue
            if array.shape != expected_shape:
                raise RuntimeError(f"{item.where}: converted to {array.shape}, expected {expected_shape} (a bug)")
            labels.append([writer.add_image(array), item.label])
        if not labels:
            raise DatasetError(f"{src.description}: none of the image files could be read")
        metadata = {"labels": labels if src.labelled else None}
        if src.class_names is not None:
            metadata["class_names"] = list(src.class_names)
        writer.commit(metadata)
    return ConvertResult(
        dest=writer.dest,
        source=src.description,
        num_images=len(labels),
        resolution=size[0],
        channels=scan.channels,
        labelled=src.labelled,
        class_names=None if src.class_names is None else list(src.class_names),
        label_kind=_label_kind(labels) if src.labelled else "none",
        skipped=skipped,
    )


def _label_kind(labels):
    first = labels[0][1]
    return f"vectors of length {len(first)}" if isinstance(first, list) else "classes"
