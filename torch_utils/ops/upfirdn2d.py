"""upfirdn2d: upsample, pad, FIR-filter and downsample a batch of 2-D images in one op.

Public API (the names and signatures StyleGAN2-ADA network pickles call):
    setup_filter(f, device, normalize, flip_filter, gain, separable) -> filter tensor
    upfirdn2d(x, f, up, down, padding, flip_filter, gain, impl)
    filter2d(x, f, padding, ...)      'same'-size filtering
    upsample2d(x, f, up, padding, ...)
    downsample2d(x, f, down, padding, ...)
plus the helpers `_parse_scaling`, `_parse_padding` and `_get_filter_size` that conv2d_resample uses.

What upfirdn2d computes, per axis (x and y independently):
    1. upsample: insert `up - 1` zeros after every input pixel (length n -> n * up);
    2. pad with zeros by (pad0, pad1); a negative pad crops instead;
    3. convolve with the FIR filter f, keeping only the 'valid' outputs (footprint fully inside);
       flip_filter=False is a true convolution, True a correlation; f is scaled by
       gain ** (f.ndim / 2), so `gain` applies exactly once for 2-D and for separable 1-D filters;
    4. downsample: keep every `down`-th output, starting at index 0.
Output length: (n * up + pad0 + pad1 - taps) // down + 1.

Implementations (`impl`):
    'ref'  - pure PyTorch (zero insertion by reshape, F.pad + slicing, depthwise conv2d, slicing);
             differentiable by autograd to any order.
    'cuda' - the default (what pickles pass): the CUDA kernel for CUDA tensors, the multi-threaded
             C++ kernel for CPU tensors. Each plugin is built on first use (never at import). When
             a kernel is unavailable (build failure, unsupported dtype, SG2KD_DISABLE_CUSTOM_OPS=1)
             the reference path runs instead; a failed build warns once (custom_ops).

The kernel path is one autograd Function whose backward is again an upfirdn2d through the same
Function (flipped filter, up and down swapped, padding from `_backward_padding`), so gradients of
every order work. The filter `f` gets no gradient on the kernel path (it is a fixed buffer in
StyleGAN2); use impl='ref' if a learnable filter is ever needed.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import custom_ops

_SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
CPU_PLUGIN_NAME = "upfirdn2d_cpu_plugin"
CUDA_PLUGIN_NAME = "upfirdn2d_cuda_plugin"
_KERNEL_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float16, torch.float32, torch.float64)}
_plugins = {}  # device type -> loaded plugin module, or None when it could not be built


def _plugin_spec(device_type):
    """(module name, sources, build kwargs) of the 'cpu' or 'cuda' plugin, for custom_ops."""
    if device_type == "cpu":
        return CPU_PLUGIN_NAME, ["upfirdn2d.cpp"], dict(source_dir=_SOURCE_DIR,
                                                        extra_cflags=custom_ops.native_cpu_cflags())
    return CUDA_PLUGIN_NAME, ["upfirdn2d_cuda.cpp", "upfirdn2d.cu"], dict(
        headers=["upfirdn2d_cuda.h"], source_dir=_SOURCE_DIR, extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "--use_fast_math"])


def _reset_plugins():
    """Forget the loaded plugins so the next kernel call loads (or skips) them again (tests)."""
    _plugins.clear()


def _get_plugin(device_type):
    """The kernel plugin for 'cpu' or 'cuda' tensors, built on first use; None if unavailable."""
    if custom_ops.custom_ops_disabled():
        return None
    if device_type not in _plugins:
        name, sources, kwargs = _plugin_spec(device_type)
        _plugins[device_type] = custom_ops.try_get_plugin(name, sources, **kwargs)
    return _plugins[device_type]


# ---------------------------------------------------------------------------------------------
# Argument helpers (also used by conv2d_resample).

def _parse_scaling(scaling):
    """int s -> [s, s]; [sx, sy] -> [sx, sy]. Every factor must be an int >= 1."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    if not isinstance(scaling, (list, tuple)) or len(scaling) != 2:
        raise ValueError(f"scaling factor {scaling!r} must be an int or a list [sx, sy]")
    sx, sy = scaling
    if not all(isinstance(s, (int, np.integer)) and s >= 1 for s in (sx, sy)):
        raise ValueError(f"scaling factors {scaling!r} must be integers >= 1")
    return [int(sx), int(sy)]


def _parse_padding(padding):
    """int p -> [p, p, p, p]; [px, py] -> [px, px, py, py]; [px0, px1, py0, py1] as given."""
    if isinstance(padding, (int, np.integer)):
        padding = [padding, padding]
    if not isinstance(padding, (list, tuple)) or len(padding) not in (2, 4):
        raise ValueError(f"padding {padding!r} must be an int, [px, py] or [px0, px1, py0, py1]")
    if not all(isinstance(p, (int, np.integer)) for p in padding):
        raise ValueError(f"padding {padding!r} must hold integers (negative values crop)")
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    return [int(p) for p in padding]


def _get_filter_size(f):
    """(fw, fh) of a filter: [fh, fw] -> (fw, fh); 1-D [fw] -> (fw, fw); None -> (1, 1)."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise ValueError(f"filter must be None or a 1-D/2-D tensor, got {_describe(f)}; "
                         "build it with setup_filter()")
    fw = f.shape[-1]
    fh = f.shape[0]
    return int(fw), int(fh)


def _describe(obj):
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {list(obj.shape)} and dtype {obj.dtype}"
    return f"{type(obj).__name__} {obj!r}"


# ---------------------------------------------------------------------------------------------
# Filter set-up.

def setup_filter(f, device=torch.device("cpu"), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn filter taps into the float32 filter tensor the ops take.

    f: None (-> [1]), a number, or taps as a list / array / tensor, 1-D [fw] or 2-D [fh, fw].
    normalize: divide by the sum of the taps (so a constant image keeps its value).
    flip_filter: flip the taps along every axis.
    gain: overall gain, folded in as gain ** (ndim / 2) (a 1-D filter is applied twice).
    separable: keep a 1-D filter 1-D (applied horizontally then vertically); None = only when it
        has >= 8 taps. A non-separable 1-D filter becomes its 2-D outer product.
    Returns a float32 tensor [fw] or [fh, fw] on `device`.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"setup_filter: taps must be 1-D or 2-D and non-empty, got shape {list(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if separable and f.ndim != 1:
        raise ValueError(f"setup_filter: separable=True needs 1-D taps, got shape {list(f.shape)}; "
                         "pass separable=False or 1-D taps")
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()  # not in place: as_tensor may alias the caller's tensor
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ---------------------------------------------------------------------------------------------
# The op.

def _check_args(x, f, up, down, padding, impl):
    """Validate and normalise; return (upx, upy, downx, downy, [px0, px1, py0, py1])."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"upfirdn2d: x must be a floating-point tensor [N, C, H, W], got {_describe(x)}")
    if f is not None and (not isinstance(f, torch.Tensor) or f.ndim not in (1, 2)
                          or not f.is_floating_point() or f.numel() == 0):
        raise ValueError(f"upfirdn2d: f must be None or a float 1-D [fw] / 2-D [fh, fw] tensor, "
                         f"got {_describe(f)}; build it with setup_filter()")
    if impl not in ("ref", "cuda"):
        raise ValueError(f"upfirdn2d: impl={impl!r} is not supported; use 'cuda' (kernel with fallback) or 'ref'")
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padding = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = padding
    out_w = _out_size(x.shape[3], upx, px0, px1, fw, downx)
    out_h = _out_size(x.shape[2], upy, py0, py1, fh, downy)
    if out_w < 1 or out_h < 1:
        raise ValueError(f"upfirdn2d: input {list(x.shape)} with up=[{upx}, {upy}], padding={padding}, "
                         f"filter {fw}x{fh} and down=[{downx}, {downy}] gives an empty output "
                         f"({out_h}x{out_w}); increase the padding or the input size")
    return upx, upy, downx, downy, padding


def _out_size(n, up, pad0, pad1, taps, down):
    """Output length along one axis: valid outputs of the padded, upsampled signal, then strided."""
    span = n * up + pad0 + pad1 - taps
    return span // down + 1 if span >= 0 else 0


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Upsample, pad, FIR-filter and downsample a batch of images (see the module docstring).

    x: [N, C, H, W] floating tensor (any memory format).
    f: float32 filter [fh, fw] or separable [fw] (from setup_filter), or None for identity.
    up, down: int or [x, y] integer factors >= 1. padding: int, [px, py] or [px0, px1, py0, py1]
        (negative crops). flip_filter: correlate instead of convolve. gain: overall scale.
    impl: 'cuda' (kernel on CUDA and CPU tensors, reference fallback) or 'ref'.
    Returns [N, C, H_out, W_out] with H_out = (H * upy + py0 + py1 - fh) // downy + 1 (W alike).
    """
    upx, upy, downx, downy, padding = _check_args(x, f, up, down, padding, impl)
    if impl == "cuda" and _kernel_available(x):
        if f is None:
            f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
        return _Upfirdn2d.apply(x, f, (upx, upy), (downx, downy), tuple(padding), bool(flip_filter), gain)
    return _upfirdn2d_ref(x, f, upx, upy, downx, downy, padding, flip_filter, gain)


def _kernel_available(x):
    """True when a kernel for x's device and dtype is (or can be) loaded."""
    device_type = x.device.type
    if x.dtype not in _KERNEL_DTYPES.get(device_type, ()):
        return False
    return _get_plugin(device_type) is not None


def _upfirdn2d_ref(x, f, upx, upy, downx, downy, padding, flip_filter, gain):
    """Pure-PyTorch upfirdn2d; arguments already validated. x [N, C, H, W] -> [N, C, H', W']."""
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    if upx > 1 or upy > 1:
        # Zero insertion: give every pixel a trailing block of (upy, upx) whose first entry is it.
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    if f is None:
        x = x * gain if gain != 1 else x
    else:
        f = f.to(device=x.device, dtype=x.dtype) * (gain ** (f.ndim / 2))
        if not flip_filter:
            f = f.flip(list(range(f.ndim)))  # conv2d correlates; flipping makes it a convolution
        weight = f[None, None].repeat([c, 1] + [1] * f.ndim)  # depthwise: [C, 1, fh, fw] or [C, 1, fw]
        if f.ndim == 2:
            x = F.conv2d(x, weight, groups=c)
        else:
            x = F.conv2d(x, weight.unsqueeze(2), groups=c)  # horizontal pass [C, 1, 1, fw]
            x = F.conv2d(x, weight.unsqueeze(3), groups=c)  # vertical pass [C, 1, fw, 1]
    return x[:, :, ::downy, ::downx]


def _backward_padding(in_size, out_size, up, down, pad0, taps):
    """Padding (pad0', pad1') along one axis for the transposed op that maps dy back to dx.

    Forward: y[o] = sum_t g[t] * u[o * down + t - pad0], u the zero-inserted input. So
    du[k] = sum_o dy[o] * g[k + pad0 - o * down], a 'full' convolution of the down-upsampled dy
    with the flipped filter: pad0' = taps - 1 - pad0. pad1' is chosen so the valid outputs are
    exactly (in_size - 1) * up + 1, whose every up-th sample (the real input pixels) is dx.
    """
    new_pad0 = taps - 1 - pad0
    new_pad1 = (in_size - 1) * up - out_size * down + pad0 + 1
    return new_pad0, new_pad1


class _Upfirdn2d(torch.autograd.Function):
    """Kernel-path upfirdn2d. Static args travel through apply(); f gets no gradient."""

    @staticmethod
    def forward(ctx, x, f, up, down, padding, flip_filter, gain):  # pylint: disable=arguments-differ
        ctx.save_for_backward(f)
        ctx.args = (up, down, padding, flip_filter, gain, x.shape[2], x.shape[3])
        return _kernel_forward(x, f, up, down, padding, flip_filter, gain)

    @staticmethod
    def backward(ctx, dy):  # pylint: disable=arguments-differ
        (f,) = ctx.saved_tensors
        (upx, upy), (downx, downy), (px0, px1, py0, py1), flip_filter, gain, h, w = ctx.args
        dx = None
        if ctx.needs_input_grad[0]:
            fw, fh = _get_filter_size(f)
            qx0, qx1 = _backward_padding(w, dy.shape[3], upx, downx, px0, fw)
            qy0, qy1 = _backward_padding(h, dy.shape[2], upy, downy, py0, fh)
            dx = _Upfirdn2d.apply(dy, f, (downx, downy), (upx, upy), (qx0, qx1, qy0, qy1),
                                  not flip_filter, gain)
        return dx, None, None, None, None, None, None


def _kernel_forward(x, f, up, down, padding, flip_filter, gain):
    """Run the plugin for x's device: x [N, C, H, W], f [fh, fw] or [fw] (raw, as passed)."""
    plugin = _get_plugin(x.device.type)
    if plugin is None:  # disabled or unloaded after the Function was built (e.g. a double backward)
        return _upfirdn2d_ref(x, f, *up, *down, list(padding), flip_filter, gain)
    # The kernels correlate with a pre-scaled filter; flip and gain are folded in here (tiny tensor).
    weight_dtype = torch.float32 if x.dtype == torch.float16 else x.dtype
    g = f.detach().to(device=x.device, dtype=weight_dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        g = g.flip(list(range(g.ndim)))
    return plugin.upfirdn2d(x.contiguous(), g.contiguous(), up[0], up[1], down[0], down[1], *padding)


# ---------------------------------------------------------------------------------------------
# Convenience wrappers.

def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Filter x [N, C, H, W] with f, keeping its size (plus `padding`, as in upfirdn2d)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    padding = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=padding, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Upsample x [N, C, H, W] by `up` with interpolation filter f -> [N, C, H * upy, W * upx].

    The gain is multiplied by upx * upy to make up for the inserted zeros.
    """
    upx, upy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    padding = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2,
               py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=[upx, upy], padding=padding, flip_filter=flip_filter,
                     gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="cuda"):
    """Downsample x [N, C, H, W] by `down` with anti-aliasing filter f -> [N, C, H // downy, W // downx]."""
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    padding = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2,
               py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=[downx, downy], padding=padding, flip_filter=flip_filter, gain=gain, impl=impl)
