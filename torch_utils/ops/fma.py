"""Fused multiply-add `a * b + c` with broadcasting and gradients reduced to each input's shape."""

import torch


def fma(a, b, c):
    """Return `a * b + c` (tensors, broadcast together) -> shape `broadcast(a, b, c)`.

    One fused kernel (`torch.addcmul`) in the forward pass. Gradients are summed over the
    dimensions each input was broadcast along, so they have that input's shape; the backward is
    made of differentiable torch ops, so it can be differentiated again (any order).
    """
    for name, value in (("a", a), ("b", b), ("c", c)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"fma: argument {name} is {type(value).__name__}; pass a torch.Tensor "
                            f"(e.g. torch.as_tensor({name}, device=...))")
    return _FusedMultiplyAdd.apply(a, b, c)


class _FusedMultiplyAdd(torch.autograd.Function):
    """out = a * b + c."""

    @staticmethod
    def forward(ctx, a, b, c):
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return torch.addcmul(c, a, b)

    @staticmethod
    def backward(ctx, grad_out):
        a, b = ctx.saved_tensors
        need_a, need_b, need_c = ctx.needs_input_grad[:3]
        grad_a = _sum_to_shape(grad_out * b, a.shape) if need_a else None
        grad_b = _sum_to_shape(grad_out * a, b.shape) if need_b else None
        grad_c = _sum_to_shape(grad_out, ctx.c_shape) if need_c else None
        return grad_a, grad_b, grad_c


def _sum_to_shape(x, shape):
    """Sum `x` over the dimensions that broadcasting added or expanded, giving `shape`.

    x: broadcast result `[*lead, *shape']` where `shape'` matches `shape` except for size-1 entries.
    """
    extra = x.ndim - len(shape)
    if extra > 0:
        x = x.sum(dim=tuple(range(extra)))
    expanded = tuple(i for i, size in enumerate(shape) if size == 1 and x.shape[i] != 1)
    if expanded:
        x = x.sum(dim=expanded, keepdim=True)
    return x.reshape(shape)
