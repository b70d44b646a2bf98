"""Tests for torch_utils.ops.conv2d_gradfix against torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from torch_utils.ops import conv2d_gradfix

# (transposed, stride, padding, dilation, groups, output_padding, kernel (kh, kw))
CONFIGS = [
    (False, 1, 0, 1, 1, 0, (3, 3)),
    (False, 1, 1, 1, 1, 0, (3, 3)),
    (False, 2, 1, 1, 2, 0, (3, 3)),
    (False, (2, 1), (0, 2), (1, 2), 1, 0, (3, 2)),
    (False, 1, 0, 1, 4, 0, (1, 1)),
    (False, 3, 2, 2, 2, 0, (2, 3)),
    (True, 1, 0, 1, 1, 0, (3, 3)),
    (True, 2, 0, 1, 1, 1, (3, 3)),
    (True, 2, 1, 1, 2, 0, (4, 4)),
    (True, (2, 3), (1, 0), (1, 2), 1, (1, 2), (3, 2)),
    (True, 1, 0, 1, 4, 0, (1, 1)),
    (True, 2, 1, 3, 2, 2, (2, 2)),  # output_padding >= stride but < dilation
]


def _make(config, dtype, bias, seed=0, batch=2, cin=4, cout=8, size=(7, 6)):
    """Random leaf tensors [x, w, (b)] for one config: x `[batch, cin, *size]`, cin -> cout channels."""
    transposed, _, _, _, groups, _, (kh, kw) = config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, *size, generator=gen, dtype=dtype)
    w_shape = (cin, cout // groups, kh, kw) if transposed else (cout, cin // groups, kh, kw)
    w = torch.randn(w_shape, generator=gen, dtype=dtype)
    b = torch.randn(cout, generator=gen, dtype=dtype) if bias else None
    return [t.requires_grad_(True) for t in (x, w, b) if t is not None]


def _conv(module, config, x, w, b=None):
    """Run the config through `module` (torch.nn.functional or conv2d_gradfix)."""
    transposed, stride, padding, dilation, groups, output_padding, _ = config
    if transposed:
        return module.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)
    return module.conv2d(x, w, b, stride, padding, dilation, groups)


def _pipeline(module, config, leaves):
    """Forward, first-order grads and second-order grads of an R1-like penalty, all flattened.

    L = sum(y^2 * v) (so grad_output depends on x and w); P = sum(dL/dx^2) + sum(dL/dw^2);
    returns [y, dL/dx, dL/dw, (dL/db), dP/dx, dP/dw, (dP/db)].
    """
    y = _conv(module, config, *leaves)
    v = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    loss = (y.square() * v).sum()
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    penalty = grads[0].square().sum() + grads[1].square().sum()
    grads2 = torch.autograd.grad(penalty, leaves, allow_unused=True)
    return [y, *grads, *grads2]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch_forward_grad_and_double_grad(config, dtype, bias):
    assert conv2d_gradfix.HAS_CONVOLUTION_BACKWARD  # this torch has the op: the custom path is tested
    ours = _pipeline(conv2d_gradfix, config, _make(config, dtype, bias))
    ref = _pipeline(F, config, _make(config, dtype, bias))
    tol = {"rtol": 1e-4, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-9}
    assert len(ours) == len(ref)
    for mine, theirs in zip(ours, ref):
        torch.testing.assert_close(mine, theirs, **tol)
    assert ours[0].grad_fn is not None and "_Conv" in type(ours[0].grad_fn).__name__


def test_third_order_matches_torch():
    config = (False, 2, 1, 1, 2, 0, (3, 3))

    def third(module):
        x, w = _make(config, torch.float64, bias=False)
        y = _conv(module, config, x, w)
        (gx,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.square().sum(), w, create_graph=True)
        return torch.autograd.grad((gw.sin()).sum(), [x, w])

    for mine, theirs in zip(third(conv2d_gradfix), third(F)):
        torch.testing.assert_close(mine, theirs, rtol=1e-7, atol=1e-6)  # values reach ~1e4


@pytest.mark.parametrize("config", [CONFIGS[3], CONFIGS[9]])
def test_gradcheck_and_gradgradcheck(config):
    # Tiny tensors: gradgradcheck cost grows with the product of input and output sizes.
    leaves = _make(config, torch.float64, bias=True, batch=1, cin=2, cout=2, size=(4, 3))

    def fn(*args):
        return _conv(conv2d_gradfix, config, *args)

    assert torch.autograd.gradcheck(fn, leaves)
    assert torch.autograd.gradgradcheck(fn, leaves)


class _RecordConvBackward(TorchDispatchMode):
    """Record the output_mask of every aten.convolution_backward that actually runs."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket is torch.ops.aten.convolution_backward:
            self.masks.append(tuple(kwargs.get("output_mask", args[-1] if len(args) == 11 else None)))
        return func(*args, **kwargs)


@pytest.mark.parametrize("transposed", [False, True])
def test_no_weight_gradients_skips_weight_gradient_work(transposed):
    config = CONFIGS[8] if transposed else CONFIGS[2]
    x, w, b = _make(config, torch.float32, bias=True)
    with _RecordConvBackward() as outside:
        _conv(conv2d_gradfix, config, x, w, b).square().sum().backward()
    assert outside.masks == [(True, True, True)]
    x_grad_ref = x.grad.clone()
    for t in (x, w, b):
        t.grad = None
    with conv2d_gradfix.no_weight_gradients(), _RecordConvBackward() as inside:
        _conv(conv2d_gradfix, config, x, w, b).square().sum().backward()
    # The only convolution backward that ran was told not to produce a weight gradient.
    assert inside.masks == [(True, False, True)]
    assert w.grad is None
    torch.testing.assert_close(x.grad, x_grad_ref)
    assert b.grad is not None


def test_no_weight_gradients_r1_pattern_keeps_second_order_weight_gradient():
    """First pass inside the context (input grad only), penalty backward outside, as R1 does."""
    config = CONFIGS[2]

    def r1(module, skip):
        x, w = _make(config, torch.float64, bias=False)
        y = _conv(module, config, x, w).tanh().sum()
        with conv2d_gradfix.no_weight_gradients(skip):
            (gx,) = torch.autograd.grad(y, x, create_graph=True)
        gx.square().sum().backward()
        return x.grad, w.grad

    ref = r1(F, skip=False)
    for mine, theirs in zip(r1(conv2d_gradfix, skip=True), ref):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)


def test_no_weight_gradients_nesting_and_restore():
    assert not conv2d_gradfix.weight_gradients_disabled
    with conv2d_gradfix.no_weight_gradients():
        assert conv2d_gradfix.weight_gradients_disabled
        with conv2d_gradfix.no_weight_gradients(False):
            assert conv2d_gradfix.weight_gradients_disabled  # inner False does not re-enable
        with conv2d_gradfix.no_weight_gradients():
            pass
        assert conv2d_gradfix.weight_gradients_disabled
    assert not conv2d_gradfix.weight_gradients_disabled
    with conv2d_gradfix.no_weight_gradients(disable=False):
        assert not conv2d_gradfix.weight_gradients_disabled
    with pytest.raises(ValueError), conv2d_gradfix.no_weight_gradients():
        raise ValueError("restored on error too")
    assert not conv2d_gradfix.weight_gradients_disabled


def test_disabled_module_flag_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(conv2d_gradfix, "enabled", False)
    config = CONFIGS[1]
    x, w = _make(config, torch.float32, bias=False)
    y = _conv(conv2d_gradfix, config, x, w)
    assert "_Conv" not in type(y.grad_fn).__name__
    torch.testing.assert_close(y, _conv(F, config, x, w))
    with conv2d_gradfix.no_weight_gradients():
        y.sum().backward()
    assert w.grad is not None  # torch's own backward knows nothing of the flag


def test_string_padding_and_unbatched_input():
    x, w, b = _make(CONFIGS[0], torch.float64, bias=True)
    torch.testing.assert_close(conv2d_gradfix.conv2d(x, w, b, padding="same"), F.conv2d(x, w, b, padding="same"))
    torch.testing.assert_close(conv2d_gradfix.conv2d(x[0], w, b, padding=1), F.conv2d(x[0], w, b, padding=1))
    y = conv2d_gradfix.conv_transpose2d(x[0], w.transpose(0, 1), None, stride=2)
    torch.testing.assert_close(y, F.conv_transpose2d(x[0], w.transpose(0, 1), None, stride=2))


def test_autocast_region_matches_torch_dtype():
    x, w = _make(CONFIGS[1], torch.float32, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mine, theirs = _conv(conv2d_gradfix, CONFIGS[1], x, w), _conv(F, CONFIGS[1], x, w)
    assert mine.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(mine, theirs)


def test_bad_stride_is_reported():
    x, w = _make(CONFIGS[0], torch.float32, bias=False)
    with pytest.raises(ValueError, match="stride"):
        conv2d_gradfix.conv2d(x, w, stride=(1, 2, 3))
