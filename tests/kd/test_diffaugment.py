"""Tests for stylegan2_ada_kd/diffaugment.py: DiffAugment's policies and their distributions."""

import pickle

import pytest
import torch

from stylegan2_ada_kd import diffaugment
from stylegan2_ada_kd.diffaugment import DiffAugment, diff_augment
from torch_utils import persistence


def images(n=8, c=3, h=16, w=16, seed=0):
    """Random images in [1, 2): no zeros, so zero fill and cutout are visible."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand([n, c, h, w], generator=gen) + 1


def test_policy_parsing():
    assert diffaugment.parse_policy("color,translation,cutout") == ("color", "translation", "cutout")
    assert diffaugment.parse_policy("cutout, color") == ("color", "cutout")  # canonical order
    assert diffaugment.parse_policy("") == () and diffaugment.parse_policy(None) == ()
    with pytest.raises(ValueError, match="unknown flip"):
        diffaugment.parse_policy("color,flip")
    with pytest.raises(ValueError, match="twice"):
        diffaugment.parse_policy("cutout,cutout")


def test_empty_policy_is_identity():
    x = images()
    assert diff_augment(x, "") is x


def test_color_draws_within_bounds():
    torch.manual_seed(0)
    brightness, saturation, contrast = diffaugment.draw_color(20000)
    for values, low, high in [(brightness, -0.5, 0.5), (saturation, 0, 2), (contrast, 0.5, 1.5)]:
        assert float(values.min()) >= low and float(values.max()) < high
        assert float(values.min()) < low + 0.01 and float(values.max()) > high - 0.01  # uniform over the range


def test_color_on_grey_and_flat_images():
    flat = torch.full([4, 3, 8, 8], 0.25)
    b, s, c = torch.tensor([0.3, -0.2, 0.0, 0.49]), torch.tensor([0.0, 1.5, 2.0, 1.0]), torch.tensor([0.5, 1.2, 1.0, 1.4])
    torch.testing.assert_close(diffaugment.apply_color(flat, b, s, c), flat + b[:, None, None, None])  # only brightness
    x = images(n=4)
    y = diffaugment.apply_color(x, torch.zeros(4), torch.zeros(4), torch.ones(4))  # saturation 0 -> grey
    torch.testing.assert_close(y, x.mean(dim=1, keepdim=True).expand_as(x))
    y = diffaugment.apply_color(x, torch.zeros(4), torch.ones(4), c)  # contrast about the image mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    torch.testing.assert_close(y, (x - mean) * c[:, None, None, None] + mean)


def test_translation_amounts_within_bounds():
    assert diffaugment.max_shift(16) == 2 and diffaugment.max_shift(32) == 4 and diffaugment.max_shift(20) == 3
    torch.manual_seed(0)
    shifts = diffaugment.draw_translation(5000, 32, 16)
    assert set(shifts[:, 0].tolist()) == set(range(-2, 3))  # x: width 16
    assert set(shifts[:, 1].tolist()) == set(range(-4, 5))  # y: height 32


def test_translation_moves_content_with_zero_fill():
    x = images(n=25)
    shifts = torch.tensor([[tx, ty] for tx in range(-2, 3) for ty in range(-2, 3)])
    y = diffaugment.apply_translation(x, shifts)
    for i, (tx, ty) in enumerate(shifts.tolist()):
        expected = torch.zeros_like(x[i])
        expected[:, max(ty, 0):16 + min(ty, 0), max(tx, 0):16 + min(tx, 0)] = \
            x[i, :, max(-ty, 0):16 + min(-ty, 0), max(-tx, 0):16 + min(-tx, 0)]
        assert torch.equal(y[i], expected)


def test_translation_policy_bounds_end_to_end():
    x = images(n=64)
    torch.manual_seed(0)
    y = diff_augment(x, "translation")
    for i in range(64):
        empty_cols = (y[i] == 0).all(dim=0).all(dim=0)  # zero-filled columns on one side
        empty_rows = (y[i] == 0).all(dim=0).all(dim=1)
        assert int(empty_cols.sum()) <= 2 and int(empty_rows.sum()) <= 2


def test_cutout_amounts_within_bounds():
    assert diffaugment.cutout_size(16) == 8 and diffaugment.cutout_size(15) == 8 and diffaugment.cutout_size(9) == 5
    torch.manual_seed(0)
    centres = diffaugment.draw_cutout(5000, 9, 16)
    assert set(centres[:, 0].tolist()) == set(range(17))  # even side 8: centre on a pixel corner 0..16
    assert set(centres[:, 1].tolist()) == set(range(9))  # odd side 5: centre on a pixel 0..8


def test_cutout_policy_zeroes_one_clipped_square():
    x = images(n=64)
    torch.manual_seed(0)
    y = diff_augment(x, "cutout")
    sides = set()
    for i in range(64):
        cut = (y[i] == 0).all(dim=0)
        assert bool(((y[i] == x[i]).all(dim=0) | cut).all())
        rows, cols = int(cut.any(dim=1).sum()), int(cut.any(dim=0).sum())
        assert int(cut.sum()) == rows * cols  # a rectangle
        assert 4 <= rows <= 8 and 4 <= cols <= 8  # side 8, at least half of it inside
        sides.add((rows, cols))
    assert (8, 8) in sides and len(sides) > 3


def test_per_sample_draws_and_determinism():
    x = images(n=1).expand(16, 3, 16, 16)
    torch.manual_seed(5)
    a = diff_augment(x)
    torch.manual_seed(5)
    b = diff_augment(x)
    assert torch.equal(a, b)
    assert len({tuple(a[i].flatten()[:64].tolist()) for i in range(16)}) == 16  # each sample its own draw


def test_channels_last_layout_matches():
    x = images(n=4)
    torch.manual_seed(2)
    first = diff_augment(x)
    torch.manual_seed(2)
    last = diff_augment(x.permute(0, 2, 3, 1), channels_first=False)
    assert last.shape == (4, 16, 16, 3)
    torch.testing.assert_close(last.permute(0, 3, 1, 2), first)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_gradients_and_double_backward(policy):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    x = images(n=4).requires_grad_(True)
    logits = torch.nn.functional.softplus(conv(diff_augment(x, policy))).sum(dim=[1, 2, 3])
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    assert torch.isfinite(grad).all() and float(grad.detach().abs().sum()) > 0
    grad.square().sum().backward()
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0


def test_module_wrapper():
    module = DiffAugment(policy="translation,color")
    assert module.policy == "color,translation" and float(module.p) == 1
    x = images(n=3, c=1)
    assert module(x).shape == x.shape
    with pytest.raises(ValueError, match="debug_percentile"):
        module(x, debug_percentile=0.5)
    assert persistence.is_persistent(module)
    loaded = pickle.loads(pickle.dumps(module))
    assert loaded.init_kwargs == {"policy": "translation,color"} and loaded.policy == "color,translation"
    torch.manual_seed(0)
    expected = module(x)
    torch.manual_seed(0)
    assert torch.equal(loaded(x), expected)


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="float tensor"):
        diff_augment(torch.zeros(3, 16, 16))
    with pytest.raises(TypeError, match="comma-separated"):
        diff_augment(images(), policy=["color"])
