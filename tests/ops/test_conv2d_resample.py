"""Tests for torch_utils.ops.conv2d_resample: every fast path against the definition."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_gradfix, conv2d_resample, upfirdn2d


@pytest.fixture(autouse=True)
def _pure_pytorch_upfirdn2d(monkeypatch):
    """Keep upfirdn2d on its reference path: no kernel build inside these fast unit tests."""
    monkeypatch.setenv("SG2KD_DISABLE_CUSTOM_OPS", "1")


def _definition(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """Independent re-implementation of the definition: upfirdn2d(impl='ref') + F.conv2d."""
    px0, px1, py0, py1 = [padding] * 4 if isinstance(padding, int) else padding
    fw, fh = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    x = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1],
                            gain=up**2, flip_filter=flip_filter, impl="ref")
    kernel = w if flip_weight else w.flip([2, 3])
    x = F.conv2d(x, kernel, groups=groups)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter, impl="ref")
    return x


def _filters():
    """An asymmetric 2-D filter (so flip_filter matters) and a non-square random one."""
    gen = torch.Generator().manual_seed(7)
    return [upfirdn2d.setup_filter([1, 2, 4, 1]), torch.rand(3, 4, generator=gen) + 0.1]


def _tensors(n, cin, cout, k, groups, size, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, *size, generator=gen, dtype=dtype)
    w = torch.randn(cout, cin // groups, k, k, generator=gen, dtype=dtype)
    return x, w


PADDINGS = [0, 1, [2, 0, 1, 3], [1, 2, 0, 1]]


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1)])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_every_path_matches_the_definition(up, down, k, groups, monkeypatch):
    if up == 1 or down == 1:
        # Prove the fast paths are what is being compared: the generic one must not run.
        monkeypatch.setattr(conv2d_resample, "_generic", lambda *a: pytest.fail("generic path used"))
    x, w = _tensors(2, 4, 6, k, groups, size=(7, 5))
    cases = itertools.product(_filters(), PADDINGS, [True, False], [True, False])
    for f, padding, flip_weight, flip_filter in cases:
        args = (f, up, down, padding, groups, flip_weight, flip_filter)
        expected = _definition(x, w, *args)
        result = conv2d_resample.conv2d_resample(x, w, *args)
        assert result.shape == expected.shape, (args, result.shape, expected.shape)
        torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-10, msg=lambda m, a=args: f"{a}: {m}")


@pytest.mark.parametrize("padding", [[-1, -1, 0, 0], [0, -1, 1, 1], [-2, -2, -1, -1]])
def test_negative_padding_crops_like_the_definition(padding):
    x, w = _tensors(1, 2, 3, 3, 1, size=(9, 8))
    f = _filters()[0]
    for up, down in [(1, 1), (2, 1), (1, 2)]:
        expected = _definition(x, w, f, up, down, padding, 1, False, False)
        result = conv2d_resample.conv2d_resample(x, w, f, up, down, padding, 1, False, False)
        torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-10)


def test_filter_none_with_resampling():
    x, w = _tensors(1, 2, 2, 3, 1, size=(6, 6))
    for up, down in [(2, 1), (1, 2)]:
        expected = _definition(x, w, None, up, down, 1, 1, True, False)
        torch.testing.assert_close(conv2d_resample.conv2d_resample(x, w, None, up, down, 1), expected)


def test_stylegan2_layer_shapes_and_modulated_grouped_case():
    """The layers StyleGAN2 builds: 3x3 up (modulated, batch folded into groups), 3x3 down, 1x1 skip."""
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    batch, cin, cout, res = 3, 4, 5, 8
    x, w = _tensors(1, batch * cin, batch * cout, 3, batch, size=(res, res))
    y = conv2d_resample.conv2d_resample(x, w, f, up=2, padding=1, groups=batch, flip_weight=False)
    assert y.shape == (1, batch * cout, 2 * res, 2 * res)
    torch.testing.assert_close(y, _definition(x, w, f, 2, 1, 1, batch, False, False))
    # Folding the batch into groups equals running each sample with its own weights.
    for i in range(batch):
        xi = x[:, i * cin:(i + 1) * cin]
        wi = w[i * cout:(i + 1) * cout]
        yi = conv2d_resample.conv2d_resample(xi, wi, f, up=2, padding=1, flip_weight=False)
        torch.testing.assert_close(y[:, i * cout:(i + 1) * cout], yi)
    x, w = _tensors(2, 4, 6, 3, 1, size=(res, res))
    assert conv2d_resample.conv2d_resample(x, w, f, down=2, padding=1).shape == (2, 6, res // 2, res // 2)
    x, w = _tensors(2, 4, 6, 1, 1, size=(res, res))
    assert conv2d_resample.conv2d_resample(x, w, f, down=2).shape == (2, 6, res // 2, res // 2)
    assert conv2d_resample.conv2d_resample(x, w, f, up=2).shape == (2, 6, 2 * res, 2 * res)


def _r1_pipeline(fn, x, w):
    """Output, first-order grads and second-order grads of sum(dL/dx^2) (L = sum(y^2 * v))."""
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = fn(x, w)
    v = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    grad_x, grad_w = torch.autograd.grad((y.square() * v).sum(), [x, w], create_graph=True)
    return [y, grad_x, grad_w, *torch.autograd.grad(grad_x.square().sum(), [x, w])]


@pytest.mark.parametrize("up,down,k", [(2, 1, 3), (1, 2, 3), (2, 1, 1), (1, 2, 1), (1, 1, 3), (2, 2, 3)])
def test_gradients_and_double_gradients_match_the_definition(up, down, k):
    f = _filters()[0]
    x, w = _tensors(2, 4, 4, k, 2, size=(5, 6))
    args = (f, up, down, [1, 0, 2, 1], 2, False, True)
    ours = _r1_pipeline(lambda x, w: conv2d_resample.conv2d_resample(x, w, *args), x, w)
    ref = _r1_pipeline(lambda x, w: _definition(x, w, *args), x, w)
    for mine, theirs in zip(ours, ref):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-9)


def test_gradgradcheck_up_path():
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).to(torch.float64)
    x, w = _tensors(1, 2, 2, 3, 1, size=(3, 3))
    x.requires_grad_(True)
    w.requires_grad_(True)

    def fn(x, w):
        return conv2d_resample.conv2d_resample(x, w, f, up=2, padding=1)

    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_no_weight_gradients_reaches_the_convolutions():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for up, down in [(2, 1), (1, 2), (1, 1)]:
        x, w = _tensors(1, 2, 2, 3, 1, size=(6, 6))
        x.requires_grad_(True)
        w.requires_grad_(True)
        with conv2d_gradfix.no_weight_gradients():
            conv2d_resample.conv2d_resample(x, w, f, up=up, down=down, padding=1).square().sum().backward()
        assert w.grad is None and x.grad is not None


@pytest.mark.parametrize("kwargs,match", [
    ({"up": 0}, "up=0"), ({"down": 1.5}, "down=1.5"), ({"groups": 4}, "groups=4"),
    ({"padding": [1, 2, 3]}, "padding"),
])
def test_bad_arguments_are_reported(kwargs, match):
    x, w = _tensors(1, 2, 6, 3, 1, size=(6, 6))
    with pytest.raises(ValueError, match=match):
        conv2d_resample.conv2d_resample(x, w, upfirdn2d.setup_filter([1, 3, 3, 1]), **kwargs)


def test_channel_mismatch_is_reported():
    x, w = _tensors(1, 2, 6, 3, 1, size=(6, 6))
    with pytest.raises(AssertionError, match="dimension 1"):
        conv2d_resample.conv2d_resample(x, w, groups=2)
