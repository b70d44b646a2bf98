"""3x3 stride-1 convolutions on the CPU by Winograd's F(2x2, 3x3) algorithm.

A direct 3x3 convolution costs 9 multiply-adds per output pixel and channel pair; F(2x2, 3x3)
computes each 2x2 output tile from its 4x4 input patch with 16, i.e. 2.25x fewer, as 16 matrix
products M[k] = U[k] @ V[k] (torch.bmm) between

    U = G w G^T   [16, O, C]   the transformed weight (PyTorch, small)
    V = B^T d B   [16, C, P]   the transformed input tiles, P = N * ceil(Ho/2) * ceil(Wo/2)

followed by y = A^T M A per tile (winograd.cpp holds the tile transforms and their adjoints).
On this project's 2-core CPU, where convolutions already run near the matrix-product peak, that is
the only way left to make them faster (`python bench/ops.py`, the "conv 3x3" rows).

Every part is linear in x or in w, so the backward passes are again transforms, their adjoints
and matrix products: `_InputTransform` and `_InputAdjoint` are each other's derivative, likewise
`_OutputTransform` and `_OutputAdjoint`, so gradients of any order (R1, path length) exist.
The results equal the direct convolution up to float rounding (relative 1e-6 in float32).
"""

import os

import numpy as np
import torch

from torch_utils import custom_ops

_SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
PLUGIN_NAME = "winograd_cpu_plugin"
# Where F(2x2, 3x3) pays off on the CPU (measured fwd + bwd, 2 cores, AVX2): with fewer channels
# or fewer tiles the products are too small to run near peak and the tile transforms dominate.
MIN_CHANNELS = 256  # min(C, O); 128 channels measured 0.5-1.0x the direct conv at every size
MIN_WORK = 2**26    # C * O * tiles: 512 channels from 256 tiles (1.4x), 256 from 1024 (1.1x) up
_plugins = {}

# G (4x3) of F(2x2, 3x3): U = G w G^T, flattened to the [16, 9] map of w's 3x3 taps.
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
_WEIGHT_MAP = np.kron(_G, _G)  # [16, 9]: row 4 * r + c, column 3 * a + b


def _plugin():
    """The CPU plugin, built on first use; None when custom ops are disabled or the build failed."""
    if custom_ops.custom_ops_disabled():
        return None
    if "cpu" not in _plugins:
        _plugins["cpu"] = custom_ops.try_get_plugin(PLUGIN_NAME, ["winograd.cpp"], source_dir=_SOURCE_DIR,
                                                    extra_cflags=custom_ops.native_cpu_cflags())
    return _plugins["cpu"]


def applicable(input, weight, stride, padding, dilation, groups):  # noqa: A002 -- torch's name
    """True when conv2d(input, weight, ...) should run here: a float32/64 CPU [N, C, H, W] input, a
    [O, C, 3, 3] weight with O, C >= MIN_CHANNELS and C * O * tiles >= MIN_WORK, stride 1, dilation
    1, one group, padding >= 0 (pairs as normalised by conv2d_gradfix), and the plugin builds."""
    if input.device.type != "cpu" or input.ndim != 4 or weight.ndim != 4 or groups != 1:
        return False
    if input.dtype not in (torch.float32, torch.float64) or weight.dtype != input.dtype:
        return False
    if tuple(weight.shape[2:]) != (3, 3) or min(weight.shape[0], weight.shape[1]) < MIN_CHANNELS:
        return False
    if tuple(stride) != (1, 1) or tuple(dilation) != (1, 1) or min(padding) < 0:
        return False
    out_h, out_w = input.shape[2] + 2 * padding[0] - 2, input.shape[3] + 2 * padding[1] - 2
    if out_h < 1 or out_w < 1:
        return False
    tiles = input.shape[0] * ((out_h + 1) // 2) * ((out_w + 1) // 2)
    if weight.shape[0] * weight.shape[1] * tiles < MIN_WORK:
        return False
    return _plugin() is not None


def conv2d(input, weight, padding):  # noqa: A002
    """3x3 correlation, stride 1: input [N, C, H, W], weight [O, C, 3, 3], padding (py, px)
    -> [N, O, H + 2 py - 2, W + 2 px - 2]; differentiable to any order. Check `applicable` first."""
    n, _, h, w = input.shape
    out_h, out_w = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    weight_map = torch.as_tensor(_WEIGHT_MAP, dtype=weight.dtype, device=weight.device)
    u = (weight.reshape(weight.shape[0] * weight.shape[1], 9) @ weight_map.t())  # [O * C, 16]
    u = u.t().reshape(16, weight.shape[0], weight.shape[1])
    v = _InputTransform.apply(input, (n, h, w, int(padding[0]), int(padding[1])))
    return _OutputTransform.apply(torch.bmm(u, v), (n, out_h, out_w))


class _InputTransform(torch.autograd.Function):
    """x [N, C, H, W] -> V [16, C, P]; geometry = (N, H, W, pad_y, pad_x)."""

    @staticmethod
    def forward(ctx, x, geometry):
        ctx.geometry = geometry
        return _plugin().input_transform(x, geometry[3], geometry[4])

    @staticmethod
    def backward(ctx, grad):
        return _InputAdjoint.apply(grad, ctx.geometry), None


class _InputAdjoint(torch.autograd.Function):
    """V [16, C, P] -> x [N, C, H, W], the transpose of _InputTransform."""

    @staticmethod
    def forward(ctx, v, geometry):
        ctx.geometry = geometry
        return _plugin().input_adjoint(v, *geometry)

    @staticmethod
    def backward(ctx, grad):
        return _InputTransform.apply(grad, ctx.geometry), None


class _OutputTransform(torch.autograd.Function):
    """M [16, O, P] -> y [N, O, Ho, Wo]; geometry = (N, Ho, Wo)."""

    @staticmethod
    def forward(ctx, m, geometry):
        ctx.geometry = geometry
        return _plugin().output_transform(m, *geometry)

    @staticmethod
    def backward(ctx, grad):
        return _OutputAdjoint.apply(grad, ctx.geometry), None


class _OutputAdjoint(torch.autograd.Function):
    """y [N, O, Ho, Wo] -> M [16, O, P], the transpose of _OutputTransform."""

    @staticmethod
    def forward(ctx, grad_y, geometry):
        ctx.geometry = geometry
        return _plugin().output_adjoint(grad_y)

    @staticmethod
    def backward(ctx, grad):
        return _OutputTransform.apply(grad, ctx.geometry), None
