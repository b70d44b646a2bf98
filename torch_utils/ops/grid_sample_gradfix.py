"""Bilinear `grid_sample` that is twice differentiable with respect to its input.

ADA's geometric augmentation resamples images with `grid_sample`, and the R1 penalty then takes
the gradient of D w.r.t. the un-augmented image and differentiates it again. That second pass
needs the derivative of grid_sample's input gradient, which this module provides exactly.

`grid_sample(input, grid)` equals `torch.nn.functional.grid_sample(input, grid, mode='bilinear',
padding_mode='zeros', align_corners=False)`. When the custom path applies (`enabled` and this torch
provides `aten::grid_sampler_2d_backward`) it runs through two autograd Functions:

- `_GridSample`: the forward; its backward calls `_GridSampleBackward`.
- `_GridSampleBackward`: (grad_input, grad_grid) from `aten::grid_sampler_2d_backward`, using the
  op's `output_mask` (when it has one) to skip what is not needed.

Orders of differentiation:
- first order w.r.t. input and grid: exact (torch's own kernels).
- second order through grad_input: exact. grad_input is linear in grad_output
  (grad_input = S(grid)^T grad_output), so its derivative w.r.t. grad_output is grid_sample itself
  applied to the incoming gradient; w.r.t. grid it is grid_sample's grid gradient; w.r.t. input it
  is zero.
- second order through grad_grid: NOT provided. grad_grid is returned as a non-differentiable
  tensor (requires_grad=False even under create_graph), so any attempt to differentiate it is
  explicit: autograd treats it as a constant, or raises when it is the only thing differentiated.
  ADA's grids never require gradients, so training never needs this term.

Without the custom path, and inside an autocast region (whose casting rules apply at the
F.grid_sample level), this falls back to `torch.nn.functional.grid_sample`, whose own double
backward w.r.t. input may be unavailable in some torch builds.
"""

import torch

# Public flag (official pickles and training loops set it): False = always use torch.nn.functional.
enabled = True

_BILINEAR = 0  # interpolation_mode code of aten::grid_sampler_2d
_ZEROS = 0  # padding_mode code of aten::grid_sampler_2d


def _find_backward_op():
    """Return (aten::grid_sampler_2d_backward or None, whether it takes an `output_mask`)."""
    try:
        op = torch.ops.aten.grid_sampler_2d_backward
    except (AttributeError, RuntimeError):
        return None, False
    try:
        arg_names = [arg.name for arg in op.default._schema.arguments]
    except (AttributeError, RuntimeError):
        arg_names = []
    return op, "output_mask" in arg_names


# Feature detection (no version strings).
_aten_grid_sampler_2d_backward, HAS_OUTPUT_MASK = _find_backward_op()
HAS_GRID_SAMPLER_BACKWARD = _aten_grid_sampler_2d_backward is not None


def grid_sample(input, grid):  # noqa: A002 -- torch's name
    """Bilinearly sample `input` `[N, C, H, W]` at `grid` `[N, Ho, Wo, 2]` (x, y in [-1, 1],
    align_corners=False, zeros outside) -> `[N, C, Ho, Wo]`; twice differentiable w.r.t. input."""
    # Autocast regions stay with torch: its casting rules apply at the F.grid_sample level.
    if not (enabled and HAS_GRID_SAMPLER_BACKWARD) or _autocast_active(input):
        return _torch_grid_sample(input, grid)
    return _GridSample.apply(input, grid)


def _autocast_active(input):  # noqa: A002
    """Whether autocast is on for input's device (older torch only answers for CUDA)."""
    device_type = input.device.type if isinstance(input, torch.Tensor) else "cpu"
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return device_type == "cuda" and torch.is_autocast_enabled()


def _torch_grid_sample(input, grid):  # noqa: A002
    """The torch reference with this module's fixed options."""
    return torch.nn.functional.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class _GridSample(torch.autograd.Function):
    """out = S(grid) input: bilinear resampling of `input` at `grid`."""

    @staticmethod
    def forward(ctx, input, grid):  # noqa: A002
        ctx.save_for_backward(input, grid)
        return _torch_grid_sample(input, grid)

    @staticmethod
    def backward(ctx, grad_output):
        input, grid = ctx.saved_tensors  # noqa: A001
        mask = tuple(ctx.needs_input_grad[:2])
        if not any(mask):
            return None, None
        return _GridSampleBackward.apply(grad_output, input, grid, mask)


class _GridSampleBackward(torch.autograd.Function):
    """(grad_input, grad_grid) of `_GridSample` for grad_output `go`; None where not in `mask`."""

    @staticmethod
    def forward(ctx, grad_output, input, grid, mask):  # noqa: A002
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_output, input, grid)
        args = (grad_output, input, grid, _BILINEAR, _ZEROS, False)
        if HAS_OUTPUT_MASK:
            grad_input, grad_grid = _aten_grid_sampler_2d_backward(*args, list(mask))
        else:
            grad_input, grad_grid = _aten_grid_sampler_2d_backward(*args)
        grad_input = grad_input if mask[0] else None
        grad_grid = grad_grid if mask[1] else None
        if grad_grid is not None:
            # Second order through the grid gradient is not implemented: say so by making it constant.
            ctx.mark_non_differentiable(grad_grid)
        return grad_input, grad_grid

    @staticmethod
    def backward(ctx, gg_input, gg_grid):
        # gg_grid is ignored by design: grad_grid was marked non-differentiable (see module doc).
        del gg_grid
        grad_output, _, grid = ctx.saved_tensors
        need_go, _, need_grid = ctx.needs_input_grad[:3]
        d_go = d_grid = None
        if gg_input is None:
            return None, None, None, None
        if need_go:
            # <gg_in, S^T go> = <S gg_in, go>: the derivative w.r.t. go is grid_sample of gg_in.
            d_go = _GridSample.apply(gg_input, grid)
        if need_grid:
            # d/dgrid <go, S(grid) gg_in>: the grid gradient of sampling gg_in, with output gradient go.
            d_grid = _GridSampleBackward.apply(grad_output, gg_input, grid, (False, True))[1]
        # grad_input does not depend on input (it is linear in go only): its input derivative is zero.
        return d_go, None, d_grid, None
