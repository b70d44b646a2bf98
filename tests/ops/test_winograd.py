"""torch_utils.ops.winograd: F(2x2, 3x3) 3x3 convolutions against torch's direct convolution.

Values and gradients of every order against F.conv2d, the transforms' adjoint identities, and the
dispatch from conv2d_gradfix.conv2d (which convolutions take the Winograd path, no_weight_gradients).
"""

import pytest
import torch
import torch.nn.functional as F

from tests.ops.conftest import load_cpu_plugin, use_cpu_plugin
from torch_utils import custom_ops
from torch_utils.ops import conv2d_gradfix, winograd


@pytest.fixture(scope="module")
def cpu_plugin(torch_extensions_dir):
    return load_cpu_plugin(winograd, lambda _: winograd._plugin(), torch_extensions_dir)


@pytest.fixture(autouse=True)
def _kernel_state(torch_extensions_dir, cpu_plugin, monkeypatch):
    use_cpu_plugin(winograd, cpu_plugin, torch_extensions_dir, monkeypatch)


SHAPES = [  # (N, C, O, H, W, (pad_y, pad_x)): odd and even sizes, every padding the tiles must crop
    (2, 3, 4, 5, 7, (1, 1)), (1, 2, 2, 4, 4, (0, 0)), (2, 3, 3, 6, 5, (2, 1)), (1, 1, 1, 3, 3, (0, 1)),
    (3, 2, 5, 1, 1, (1, 1)), (1, 4, 2, 8, 3, (1, 0)),
]


def _pair(shape, dtype=torch.float64, seed=0):
    n, c, o, h, w, _ = shape
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, dtype=dtype, generator=gen).requires_grad_(),
            torch.randn(o, c, 3, 3, dtype=dtype, generator=gen).requires_grad_())


@pytest.mark.parametrize("shape", SHAPES)
def test_values_equal_direct_convolution(shape):
    x, w = _pair(shape)
    torch.testing.assert_close(winograd.conv2d(x, w, shape[5]), F.conv2d(x, w, padding=shape[5]),
                               rtol=1e-12, atol=1e-12)
    x32, w32 = _pair(shape, torch.float32)
    torch.testing.assert_close(winograd.conv2d(x32, w32, shape[5]), F.conv2d(x32, w32, padding=shape[5]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_first_and_second_order_gradients(shape):
    x, w = _pair(shape)
    conv = lambda a, b: winograd.conv2d(a, b, shape[5])  # noqa: E731
    assert torch.autograd.gradcheck(conv, (x, w))
    assert torch.autograd.gradgradcheck(conv, (x, w))


@pytest.mark.parametrize("shape", SHAPES)
def test_transforms_and_adjoints_are_transposes(shape, cpu_plugin):
    n, c, _, h, w, (py, px) = shape
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=gen)
    v = cpu_plugin.input_transform(x, py, px)
    v_probe = torch.randn(v.shape, dtype=torch.float64, generator=gen)
    x_back = cpu_plugin.input_adjoint(v_probe, n, h, w, py, px)
    assert torch.allclose((v * v_probe).sum(), (x * x_back).sum(), rtol=1e-12)  # <T x, v> = <x, T' v>
    out_h, out_w = h + 2 * py - 2, w + 2 * px - 2
    m = torch.randn(16, c, v.shape[2], dtype=torch.float64, generator=gen)
    y = cpu_plugin.output_transform(m, n, out_h, out_w)
    y_probe = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    assert torch.allclose((y * y_probe).sum(), (m * cpu_plugin.output_adjoint(y_probe)).sum(), rtol=1e-12)


def test_conv2d_gradfix_takes_the_winograd_path_only_where_it_applies(monkeypatch):
    calls = []
    real = winograd.conv2d
    monkeypatch.setattr(winograd, "conv2d", lambda *a: calls.append(1) or real(*a))
    c = winograd.MIN_CHANNELS
    gen = torch.Generator().manual_seed(3)
    x, w, b = (torch.randn(shape, generator=gen) for shape in ([2, c, 6, 6], [c, c, 3, 3], [c]))
    conv2d_gradfix.conv2d(x, w, b, padding=1)  # 2 * 3 * 3 tiles: too little work to pay off
    assert len(calls) == 0 and c * c * 18 < winograd.MIN_WORK
    monkeypatch.setattr(winograd, "MIN_WORK", c * c * 18)
    got = conv2d_gradfix.conv2d(x, w, b, padding=1)
    assert len(calls) == 1
    expected = F.conv2d(x, w, b, padding=1)  # float32 sums of 9 * c terms: compare at the output's scale
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    conv2d_gradfix.conv2d(x, w, stride=2, padding=1)  # strided
    conv2d_gradfix.conv2d(x, w[:, : c // 2], groups=2, padding=1)  # grouped
    conv2d_gradfix.conv2d(x[:, : c // 2], w[: c // 2, : c // 2], padding=1)  # too few channels to pay off
    conv2d_gradfix.conv2d(x, torch.randn(c, c, 1, 1))  # 1x1
    assert len(calls) == 1
    monkeypatch.setenv(custom_ops.DISABLE_ENV, "1")  # the reference path everywhere
    conv2d_gradfix.conv2d(x, w, padding=1)
    assert len(calls) == 1


def test_no_weight_gradients_on_the_winograd_path_matches_the_direct_path(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_WORK", 0)
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 32)
    c = winograd.MIN_CHANNELS
    calls = []
    real = winograd.conv2d
    monkeypatch.setattr(winograd, "conv2d", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(2)
    x0, w0 = torch.randn(2, c, 5, 5, generator=gen), torch.randn(c, c, 3, 3, generator=gen) / 20

    def r1_weight_grad(conv):  # R1 as the loss: input gradient with weight gradients off, then backward
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with conv2d_gradfix.no_weight_gradients():
            (gx,) = torch.autograd.grad(conv(x, w).square().sum(), [x], create_graph=True)
            assert w.grad is None
        gx.square().sum().backward()
        return w.grad

    winograd_path = r1_weight_grad(lambda x, w: conv2d_gradfix.conv2d(x, w, padding=1))
    direct = r1_weight_grad(lambda x, w: F.conv2d(x, w, padding=1))
    torch.testing.assert_close(winograd_path, direct, rtol=1e-4, atol=1e-4)
    assert len(calls) == 1
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    with conv2d_gradfix.no_weight_gradients():
        conv2d_gradfix.conv2d(x, w, padding=1).sum().backward()
    assert w.grad is None and x.grad is not None
