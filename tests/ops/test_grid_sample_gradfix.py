"""Tests for torch_utils.ops.grid_sample_gradfix against torch and finite differences."""

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import grid_sample_gradfix


def _torch_grid_sample(x, grid):
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _inputs(dtype=torch.float64, seed=0, size=(2, 3, 5, 6), out_hw=(4, 3)):
    """x `[N, C, H, W]` and a grid `[N, Ho, Wo, 2]` that also reaches outside [-1, 1] (zeros padding)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, generator=gen, dtype=dtype)
    grid = torch.rand(size[0], *out_hw, 2, generator=gen, dtype=dtype) * 2.6 - 1.3
    return x, grid


def test_feature_detected_on_this_torch():
    assert grid_sample_gradfix.HAS_GRID_SAMPLER_BACKWARD
    x, grid = _inputs()
    out = grid_sample_gradfix.grid_sample(x.requires_grad_(True), grid)
    assert "_GridSample" in type(out.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_first_order_match_torch(dtype):
    x, grid = _inputs(dtype)
    results = []
    for fn in (grid_sample_gradfix.grid_sample, _torch_grid_sample):
        xi, gi = x.clone().requires_grad_(True), grid.clone().requires_grad_(True)
        out = fn(xi, gi)
        v = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
        results.append([out, *torch.autograd.grad((out * v).sum(), [xi, gi])])
    for mine, theirs in zip(*results):
        torch.testing.assert_close(mine, theirs)


def test_only_input_gradient_when_grid_is_constant():
    x, grid = _inputs()
    x.requires_grad_(True)
    grid_sample_gradfix.grid_sample(x, grid).sum().backward()
    assert x.grad is not None and grid.grad is None


def test_gradcheck_and_gradgradcheck_wrt_input():
    x, grid = _inputs(size=(1, 2, 4, 3), out_hw=(3, 2))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(grid_sample_gradfix.grid_sample, (x, grid))
    assert torch.autograd.gradgradcheck(grid_sample_gradfix.grid_sample, (x, grid))


def _r1_penalty(x, w, grid):
    """R1-like: D(aug(x)) = sum(w * softplus(grid_sample(x))); penalty = ||dD/dx||^2."""
    out = grid_sample_gradfix.grid_sample(x, grid)
    score = (w * F.softplus(out)).sum()
    (grad_x,) = torch.autograd.grad(score, x, create_graph=True)
    return grad_x.square().sum()


def _central_differences(fn, value, eps=1e-6):
    """Numerical gradient of the scalar fn(tensor) at `value` by central differences."""
    numeric = torch.zeros_like(value)
    for i in range(value.numel()):
        step = torch.zeros_like(value)
        step.view(-1)[i] = eps
        numeric.view(-1)[i] = (fn(value + step) - fn(value - step)) / (2 * eps)
    return numeric


def test_r1_style_double_backward_matches_finite_differences():
    x, grid = _inputs(size=(1, 2, 4, 4), out_hw=(3, 3))
    w = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad_x, grad_w = torch.autograd.grad(_r1_penalty(x.requires_grad_(True), w.requires_grad_(True), grid), [x, w])
    assert grad_w.abs().max() > 1e-3  # the penalty really depends on the "discriminator" weights
    x, w = x.detach(), w.detach()
    numeric_x = _central_differences(lambda xv: _r1_penalty(xv.requires_grad_(True), w, grid).item(), x)
    numeric_w = _central_differences(lambda wv: _r1_penalty(x.clone().requires_grad_(True), wv, grid).item(), w)
    torch.testing.assert_close(grad_x, numeric_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_w, numeric_w, rtol=1e-5, atol=1e-6)


def test_mixed_second_order_wrt_grid_is_exact():
    """d/dgrid of <v, dL/dx> is provided (the term through grad_input); compare with torch."""
    x, grid = _inputs(size=(1, 2, 4, 4), out_hw=(3, 3))
    v = torch.randn_like(x)
    u = torch.randn(1, 2, 3, 3, dtype=x.dtype)
    results = []
    for fn in (grid_sample_gradfix.grid_sample, _torch_grid_sample):
        xi, gi = x.clone().requires_grad_(True), grid.clone().requires_grad_(True)
        out = fn(xi, gi)
        (grad_x,) = torch.autograd.grad((out * u).sum(), xi, create_graph=True)
        results.append(torch.autograd.grad((grad_x * v).sum(), gi)[0])
    torch.testing.assert_close(results[0], results[1])


def test_grid_gradient_is_explicitly_not_differentiable():
    x, grid = _inputs()
    x.requires_grad_(True)
    grid.requires_grad_(True)
    out = grid_sample_gradfix.grid_sample(x, grid)
    grad_x, grad_grid = torch.autograd.grad(out.square().sum(), [x, grid], create_graph=True)
    assert grad_x.requires_grad
    assert not grad_grid.requires_grad  # second order through the grid gradient: not provided
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(grad_grid.sum(), x)


def test_disabled_flag_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(grid_sample_gradfix, "enabled", False)
    x, grid = _inputs()
    out = grid_sample_gradfix.grid_sample(x.requires_grad_(True), grid)
    assert "_GridSample" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, _torch_grid_sample(x, grid))
