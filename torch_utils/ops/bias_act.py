"""Fused bias + activation + gain + clamp: `y = clamp(act(x + b, alpha) * gain, -clamp, clamp)`.

Official StyleGAN2-ADA network pickles call `bias_act(...)` and read `activation_funcs[name]` by
these names (docs/REFERENCE.md section 1), so the signature and the table are fixed.

Implementations (`impl`):
  'ref'  - pure PyTorch; handles every dtype and device; autograd gives all gradients.
  'cuda' - the default: the CUDA kernel (bias_act.cu) for CUDA tensors and the multi-threaded C++
           kernel (bias_act.cpp) for CPU tensors, each built by ninja on first use and cached on
           disk (torch_utils.custom_ops). Falls back to 'ref' silently where no kernel applies
           (other devices or dtypes, SG2KD_DISABLE_CUSTOM_OPS=1); a failed build warns once.

Gradients on the kernel path, first and second order (R1 differentiates D's input gradient):
  _BiasAct (forward kernel)  --backward-->  _BiasActGrad: dx = dy * gain * act'(.) * unclamped
                             (_BiasActGradWithDb when b needs a gradient: the same pass also
                             forms db = dx summed over every dim but `dim`, on CPU per channel run)
  _BiasActGrad --backward--> d(dy) = _BiasActGrad(d_dx)   (the same linear map again, so
                             differentiable to any order), d(x) = _BiasActGrad2(d_dx * dy) with
                             act''(x + b) for the smooth activations (zero for piecewise-linear
                             ones), and d(b) = d(x) summed over every dim but `dim`.
act' is read off the saved output y for linear/relu/lrelu when gain > 0 and alpha >= 0 (y is
usually kept alive by the next layer anyway, so x + b need not be), else off the saved x and b.
Clamp: the gradient is zero where |act(x + b) * gain| >= clamp, ties included - the same
convention as torch.clamp's gradient, so both paths agree. Third-order gradients through act''
raise an error on the kernel path (use impl='ref' for them).
"""

import math
import os

import torch
import torch.nn.functional as F

import dnnlib
from torch_utils import custom_ops

# kernel_idx matches the Act enum in bias_act_kernel.h. ref: which saved tensor the first
# derivative is computed from ('y': the output, 'x': the input + bias).
activation_funcs = {
    "linear": dnnlib.EasyDict(func=lambda x, alpha=0, **_: x, def_alpha=0, def_gain=1,
                              kernel_idx=0, ref="y", has_2nd_grad=False),
    "relu": dnnlib.EasyDict(func=lambda x, alpha=0, **_: torch.relu(x), def_alpha=0, def_gain=math.sqrt(2),
                            kernel_idx=1, ref="y", has_2nd_grad=False),
    "lrelu": dnnlib.EasyDict(func=lambda x, alpha=0.2, **_: F.leaky_relu(x, alpha), def_alpha=0.2,
                             def_gain=math.sqrt(2), kernel_idx=2, ref="y", has_2nd_grad=False),
    "tanh": dnnlib.EasyDict(func=lambda x, alpha=0, **_: torch.tanh(x), def_alpha=0, def_gain=1,
                            kernel_idx=3, ref="x", has_2nd_grad=True),
    "sigmoid": dnnlib.EasyDict(func=lambda x, alpha=0, **_: torch.sigmoid(x), def_alpha=0, def_gain=1,
                               kernel_idx=4, ref="x", has_2nd_grad=True),
    "elu": dnnlib.EasyDict(func=lambda x, alpha=0, **_: F.elu(x), def_alpha=0, def_gain=1,
                           kernel_idx=5, ref="x", has_2nd_grad=True),
    "selu": dnnlib.EasyDict(func=lambda x, alpha=0, **_: F.selu(x), def_alpha=0, def_gain=1,
                            kernel_idx=6, ref="x", has_2nd_grad=True),
    "softplus": dnnlib.EasyDict(func=lambda x, alpha=0, **_: F.softplus(x), def_alpha=0, def_gain=1,
                                kernel_idx=7, ref="x", has_2nd_grad=True),
    "swish": dnnlib.EasyDict(func=lambda x, alpha=0, **_: torch.sigmoid(x) * x, def_alpha=0,
                             def_gain=math.sqrt(2), kernel_idx=8, ref="x", has_2nd_grad=True),
}

# Kernel modes (the Mode enum in bias_act_kernel.h).
_FORWARD, _GRAD_X, _GRAD2_X, _GRAD_Y = 0, 1, 2, 3
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}
# Portable flags (no -march=native), so a shared build cache is safe across machines; the loops
# are memory-bound, where wider vectors gain little. -fno-trapping-math lets GCC vectorise the
# activations' selects (it changes no result, only FP-exception flags); -fopenmp makes
# at::parallel_for multi-threaded and links the libgomp torch already loaded.
_CPU_CFLAGS = ["-O3", "-fno-trapping-math", "-fopenmp"]
_CPU_BUILD_KWARGS = dict(extra_cflags=_CPU_CFLAGS, extra_ldflags=["-fopenmp"])
_CUDA_BUILD_KWARGS = dict(extra_cflags=_CPU_CFLAGS + ["-DBIAS_ACT_WITH_CUDA"], extra_ldflags=["-fopenmp"],
                          extra_cuda_cflags=["-O3", "-DBIAS_ACT_WITH_CUDA"])

_plugins = {}  # device type ('cpu' / 'cuda') -> loaded plugin module, or None when unavailable


def plugin_spec(device_type):
    """(module_name, sources, kwargs) of the plugin for 'cpu' or 'cuda' tensors, such that
    `custom_ops.get_plugin(module_name, sources, **kwargs)` builds it (kwargs: headers, source_dir
    and build options)."""
    common = dict(headers=["bias_act_kernel.h"], source_dir=os.path.dirname(os.path.abspath(__file__)))
    if device_type == "cpu":
        return "bias_act_cpu_plugin", ["bias_act.cpp"], dict(common, **_CPU_BUILD_KWARGS)
    if device_type == "cuda":
        return "bias_act_cuda_plugin", ["bias_act.cpp", "bias_act.cu"], dict(common, **_CUDA_BUILD_KWARGS)
    raise ValueError(f"bias_act has kernels for 'cpu' and 'cuda' tensors, not {device_type!r}; use impl='ref'")


def _init(device_type):
    """The plugin for `device_type`, built on first use (never at import); None when unavailable."""
    if device_type not in _plugins:
        name, sources, kwargs = plugin_spec(device_type)
        _plugins[device_type] = custom_ops.try_get_plugin(name, sources, **kwargs)
    return _plugins[device_type]


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="cuda"):
    """Add a per-channel bias, apply an activation, scale, and clamp, in one fused pass.

    x: input of any shape, e.g. [N, C, H, W]. b: bias [x.shape[dim]] added along `dim`, or None.
    act: a key of `activation_funcs`. alpha: activation parameter (lrelu's negative slope), None =
    the activation's default. gain: output scale, None = its default. clamp: clamp the output to
    [-clamp, clamp], None = no clamp. impl: 'cuda' (kernels where available, see the module
    docstring) or 'ref' (pure PyTorch). Returns y, shaped like x; twice differentiable.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"bias_act: x must be a torch.Tensor, got {type(x).__name__}")
    if impl not in ("cuda", "ref"):
        raise ValueError(f"bias_act: impl={impl!r}; use 'cuda' (kernels, the default) or 'ref'")
    spec, dim, alpha, gain, clamp = _parse_args(x, b, dim, act, alpha, gain, clamp)
    if impl == "cuda" and _kernel_usable(x, b):
        plugin = _init(x.device.type)
        if plugin is not None:
            return _BiasAct.apply(x, b, _Config(plugin, spec, dim, alpha, gain, clamp))
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _parse_args(x, b, dim, act, alpha, gain, clamp):
    """Validate the arguments; return (spec, dim, alpha, gain, clamp) with defaults filled in."""
    spec = activation_funcs.get(act)
    if spec is None:
        raise ValueError(f"bias_act: unknown act={act!r}; choose one of {sorted(activation_funcs)}")
    if b is not None:
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"bias_act: b must be a torch.Tensor or None, got {type(b).__name__}")
        if not -x.ndim <= dim < x.ndim:
            raise ValueError(f"bias_act: dim={dim} is out of range for a {x.ndim}-D x; pass the channel dim")
        dim = dim % x.ndim
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: b has shape {list(b.shape)}, expected [{x.shape[dim]}] (x.shape[dim={dim}])")
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)
    return spec, dim, alpha, gain, clamp


def _kernel_usable(x, b):
    """Whether a kernel covers this call (device, dtype, matching b); otherwise 'ref' runs."""
    dtypes = _KERNEL_DTYPES.get(x.device.type)
    if dtypes is None or x.dtype not in dtypes:
        return False
    return b is None or (b.device == x.device and b.dtype == x.dtype)


def _bias_act_ref(x, b, dim, spec, alpha, gain, clamp):
    """Pure-PyTorch path: x [any shape], b [x.shape[dim]] or None -> y shaped like x."""
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha=alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


class _Config:
    """The non-tensor arguments of one call, shared by the autograd Functions below."""

    def __init__(self, plugin, spec, dim, alpha, gain, clamp):
        self.plugin, self.dim, self.alpha, self.gain, self.clamp = plugin, dim, alpha, gain, clamp
        self.act = spec.kernel_idx
        self.has_2nd_grad = spec.has_2nd_grad
        # Reading act' off y needs y's sign to follow x's: true for gain > 0 and alpha >= 0.
        self.from_y = spec.ref == "y" and gain > 0 and alpha >= 0

    def run(self, inp, b, ref, mode):
        """One kernel pass (see bias_act_kernel.h); inp, ref [x.shape], b [x.shape[dim]] or None."""
        return self.plugin.bias_act(inp, b, ref, self.dim, self.act, mode, self.alpha, self.gain, self.clamp)

    def run_with_db(self, inp, b, ref, mode):
        """A gradient pass that also returns its sum over every dim but `dim` (the bias gradient), in
        the same pass over memory where the plugin can: (out [x.shape], db [x.shape[dim]])."""
        return self.plugin.bias_act_with_db(inp, b, ref, self.dim, self.act, mode, self.alpha, self.gain,
                                            self.clamp)


def _sum_to_bias(t, dim):
    """t [x.shape] summed over every dim but `dim` -> [x.shape[dim]]."""
    dims = [i for i in range(t.ndim) if i != dim]
    return t.sum(dims) if dims else t


class _BiasAct(torch.autograd.Function):
    """y = kernel forward; saves y or (x, b), whichever the first derivative is read off."""

    @staticmethod
    def forward(ctx, x, b, cfg):  # noqa: D102
        y = cfg.run(x, b, None, _FORWARD)
        ctx.cfg = cfg
        ctx.save_for_backward(*((None, None, y) if cfg.from_y else (x, b, None)))
        return y

    @staticmethod
    def backward(ctx, dy):  # noqa: D102
        x, b, y = ctx.saved_tensors
        cfg = ctx.cfg
        dx = db = None
        # y enters as a constant: act' is piecewise constant in it, so its gradient is zero.
        y = None if y is None else y.detach()
        if ctx.needs_input_grad[1]:
            # db = dx summed to the bias shape, formed inside the same kernel pass as dx.
            dx, db = _BiasActGradWithDb.apply(dy, x, b, y, cfg)
        elif ctx.needs_input_grad[0]:
            dx = _BiasActGrad.apply(dy, x, b, y, cfg)
        return (dx if ctx.needs_input_grad[0] else None), db, None


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * gain * act'(.) * unclamped, a linear map of dy; [x.shape] each."""

    @staticmethod
    def forward(ctx, dy, x, b, y, cfg):  # noqa: D102
        ctx.cfg = cfg
        needs_dy = cfg.has_2nd_grad and not cfg.from_y  # only act'' needs dy again
        ctx.save_for_backward(dy if needs_dy else None, x, b, y)
        if cfg.from_y:
            return cfg.run(dy, None, y, _GRAD_Y)
        return cfg.run(dy, b, x, _GRAD_X)

    @staticmethod
    def backward(ctx, d_dx):  # noqa: D102
        dy, x, b, y = ctx.saved_tensors
        cfg = ctx.cfg
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActGrad.apply(d_dx, x, b, y, cfg)
        if cfg.has_2nd_grad and not cfg.from_y and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            d_xb = _BiasActGrad2.apply(d_dx * dy, x, b, cfg)
            d_x = d_xb if ctx.needs_input_grad[1] else None
            d_b = _sum_to_bias(d_xb, cfg.dim) if ctx.needs_input_grad[2] else None
        return d_dy, d_x, d_b, None, None


class _BiasActGradWithDb(torch.autograd.Function):
    """(dx, db): _BiasActGrad's dx and db = dx summed over every dim but `dim`, in one kernel pass.
    db is linear in dx, so its incoming gradient folds into dx's as a broadcast along `dim`."""

    @staticmethod
    def forward(ctx, dy, x, b, y, cfg):  # noqa: D102
        ctx.cfg = cfg
        needs_dy = cfg.has_2nd_grad and not cfg.from_y
        ctx.save_for_backward(dy if needs_dy else None, x, b, y)
        if cfg.from_y:
            return cfg.run_with_db(dy, None, y, _GRAD_Y)
        return cfg.run_with_db(dy, b, x, _GRAD_X)

    @staticmethod
    def backward(ctx, d_dx, d_db):  # noqa: D102
        if d_db is not None:
            _, x, _, y = ctx.saved_tensors
            shape = (x if x is not None else y).shape
            g = d_db.reshape([-1 if i == ctx.cfg.dim else 1 for i in range(len(shape))])
            d_dx = g.expand(shape) if d_dx is None else d_dx + g
        return _BiasActGrad.backward(ctx, d_dx)


class _BiasActGrad2(torch.autograd.Function):
    """g * gain * act''(x + b) * unclamped for the smooth activations; [x.shape] each."""

    @staticmethod
    def forward(ctx, g, x, b, cfg):  # noqa: D102
        return cfg.run(g, b, x, _GRAD2_X)

    @staticmethod
    def backward(ctx, *grads):  # noqa: D102
        raise RuntimeError("bias_act: third-order gradients are not implemented on the kernel path; "
                           "pass impl='ref' where you need them")
