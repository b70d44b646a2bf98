"""Tests for torch_utils.ops.fma: a * b + c with broadcasting-aware gradients."""

import pytest
import torch

from torch_utils.ops.fma import fma

SHAPES = [  # (a, b, c)
    ((2, 3, 4), (2, 3, 4), (2, 3, 4)),
    ((3, 1, 4), (5, 1), (4,)),
    ((1,), (2, 3), (2, 1)),
    ((), (2, 3), ()),
    ((4, 1, 1, 1), (4, 8, 3, 3), (1, 8, 1, 1)),  # modulated-conv style weight scaling
]


def _leaves(shapes, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(True) for shape in shapes]


@pytest.mark.parametrize("shapes", SHAPES)
def test_forward_and_gradients_match_autograd_of_plain_expression(shapes):
    a, b, c = _leaves(shapes)
    out = fma(a, b, c)
    expected = a * b + c
    torch.testing.assert_close(out, expected)
    v = torch.randn(expected.shape, dtype=expected.dtype)
    mine = torch.autograd.grad((out * v).sum(), [a, b, c])
    theirs = torch.autograd.grad((expected * v).sum(), [a, b, c])
    for grad, ref, leaf in zip(mine, theirs, (a, b, c)):
        assert grad.shape == leaf.shape
        torch.testing.assert_close(grad, ref)


def test_gradient_is_summed_over_broadcast_dims():
    a = torch.ones(3, 1, requires_grad=True)
    b = torch.full((3, 4), 2.0)
    c = torch.zeros(4, requires_grad=True)
    fma(a, b, c).sum().backward()
    torch.testing.assert_close(a.grad, torch.full((3, 1), 8.0))  # 4 columns of b = 2
    torch.testing.assert_close(c.grad, torch.full((4,), 3.0))  # 3 rows
    assert b.grad is None


@pytest.mark.parametrize("shapes", SHAPES[1:3])
def test_gradcheck_and_gradgradcheck(shapes):
    leaves = _leaves(shapes)
    assert torch.autograd.gradcheck(fma, leaves)
    assert torch.autograd.gradgradcheck(fma, leaves)


def test_forward_is_one_fused_function_node():
    a, b, c = _leaves(SHAPES[1])
    assert "FusedMultiplyAdd" in type(fma(a, b, c).grad_fn).__name__


def test_non_tensor_argument_is_reported():
    with pytest.raises(TypeError, match="argument c"):
        fma(torch.ones(2), torch.ones(2), 1.0)
