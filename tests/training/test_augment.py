"""Tests for training/augment.py: the ADA AugmentPipe, its wavelets and presets."""

import io
import math
import pickle

import numpy as np
import pytest
import torch

from torch_utils import persistence
from training import augment
from training.augment import AugmentPipe, augpipe_specs

ALL_TRANSFORMS = ["xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast",
                  "lumaflip", "hue", "saturation", "imgfilter", "noise", "cutout"]


def make_pipe(p=1.0, **kwargs):
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def images(n=4, c=3, h=16, w=16, seed=0):
    """Random images in about [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand([n, c, h, w], generator=gen) * 2 - 1


def blob(n=1, c=3, res=32, cx=0.0, cy=0.0, sigma=0.15):
    """A smooth Gaussian blob [n, c, res, res] centred at (cx, cy) in [-1, 1] coordinates."""
    g = (torch.arange(res, dtype=torch.float64) + 0.5) / res * 2 - 1
    img = torch.exp(-((g[None, :] - cx) ** 2 + (g[:, None] - cy) ** 2) / (2 * sigma**2))
    return img.float()[None, None].repeat(n, c, 1, 1)


def moments(img):
    """(mean x, mean y, std x, std y) in pixels of a non-negative image [H, W]."""
    h, w = img.shape
    total = img.sum()
    xs, ys = torch.arange(w, dtype=img.dtype), torch.arange(h, dtype=img.dtype)
    mx, my = (img.sum(0) * xs).sum() / total, (img.sum(1) * ys).sum() / total
    sx = ((img.sum(0) * (xs - mx) ** 2).sum() / total).sqrt()
    sy = ((img.sum(1) * (ys - my) ** 2).sum() / total).sqrt()
    return float(mx), float(my), float(sx), float(sy)


def normal_quantile(q):
    return math.sqrt(2) * float(torch.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64)))


# ----------------------------------------------------------------------------
# Wavelets and filters.


@pytest.mark.parametrize("name, taps", [("SYM2", 4), ("SYM6", 12)])
def test_wavelet_defining_properties(name, taps):
    h = np.array(getattr(augment, name), dtype=np.float64)
    assert len(h) == taps
    assert h.sum() == pytest.approx(np.sqrt(2), abs=1e-12)
    for k in range(taps // 2):  # orthonormal even shifts
        assert np.dot(h[: taps - 2 * k], h[2 * k:]) == pytest.approx(1.0 if k == 0 else 0.0, abs=1e-12)
    g = h[::-1] * (-1) ** np.arange(taps)  # quadrature-mirror highpass: taps / 2 vanishing moments
    for m in range(taps // 2):
        assert abs(np.sum(g * np.arange(taps, dtype=np.float64) ** m)) < 1e-9 * taps**m


def test_sym6_is_the_near_symmetric_choice():
    # Minimum-phase db6 has its energy in its first taps; the near-symmetric symlet has it mid-filter.
    h = np.abs(np.array(augment.SYM6))
    assert 4 <= int(np.argmax(h)) <= 6
    assert augment.SYM6[0] == pytest.approx(0.015404109327, abs=1e-11)  # the published sym6 table
    assert augment.SYM6[5] == pytest.approx(0.787641141030, abs=1e-11)


def test_buffers_and_filter_bank():
    pipe = AugmentPipe()
    assert set(dict(pipe.named_buffers())) == {"p", "Hz_geom", "Hz_fbank"}
    assert pipe.p.shape == () and pipe.p.dtype == torch.float32 and float(pipe.p) == 0
    assert pipe.Hz_geom.shape == (12,) and float(pipe.Hz_geom.sum()) == pytest.approx(1, abs=1e-6)
    bank = augment.imgfilter_bank()
    assert pipe.Hz_fbank.shape == (4, bank.shape[1]) and bank.shape[1] % 2 == 1
    delta = np.zeros(bank.shape[1])
    delta[bank.shape[1] // 2] = 1
    np.testing.assert_allclose(bank.sum(0), delta, atol=1e-12)  # unit gains = identity
    np.testing.assert_allclose(bank, bank[:, ::-1], atol=1e-15)  # zero phase
    # At the centre of each octave [0, pi/8], [pi/8, pi/4], [pi/4, pi/2], [pi/2, pi] its own band dominates.
    omega = np.linspace(0, np.pi, 801)
    n = np.arange(bank.shape[1]) - bank.shape[1] // 2
    response = np.cos(np.outer(omega, n)) @ bank.T  # [801, 4], real (zero phase)
    np.testing.assert_allclose(response.sum(axis=1), 1, atol=1e-12)
    edges = [0, np.pi / 8, np.pi / 4, np.pi / 2, np.pi]
    for band in range(4):
        row = response[np.searchsorted(omega, (edges[band] + edges[band + 1]) / 2)]
        assert int(np.argmax(row)) == band


def test_presets():
    assert set(augpipe_specs) == {"blit", "geom", "color", "filter", "noise", "cutout",
                                  "bg", "bgc", "bgcf", "bgcfn", "bgcfnc"}
    assert augpipe_specs["blit"] == {"xflip": 1, "rotate90": 1, "xint": 1}
    assert augpipe_specs["geom"] == {"scale": 1, "rotate": 1, "aniso": 1, "xfrac": 1}
    assert augpipe_specs["color"] == {"brightness": 1, "contrast": 1, "lumaflip": 1, "hue": 1, "saturation": 1}
    assert augpipe_specs["bgcfnc"] == {name: 1 for name in ALL_TRANSFORMS}
    assert augpipe_specs["bgc"] == {**augpipe_specs["bg"], **augpipe_specs["color"]}
    for spec in augpipe_specs.values():
        AugmentPipe(**spec)


def test_pickle_round_trip_keeps_kwargs_and_p():
    pipe = make_pipe(0.3, **augpipe_specs["bgc"], xint_max=0.25)
    assert persistence.is_persistent(pipe)
    buf = io.BytesIO()
    pickle.dump(pipe, buf)
    loaded = pickle.loads(buf.getvalue())
    assert loaded.init_kwargs == {**augpipe_specs["bgc"], "xint_max": 0.25}
    assert float(loaded.p) == pytest.approx(0.3) and loaded.xint_max == 0.25
    x = images()
    torch.manual_seed(3)
    expected = pipe(x)
    torch.manual_seed(3)
    torch.testing.assert_close(loaded(x), expected)


# ----------------------------------------------------------------------------
# Identity, probability, determinism, shapes.


@pytest.mark.parametrize("channels", [1, 3])
def test_p_zero_is_bit_exact_identity(channels):
    x = images(c=channels)
    assert torch.equal(make_pipe(0.0, **augpipe_specs["bgcfnc"])(x), x)


def test_p_is_clamped_to_one():
    x = images(n=6)
    torch.manual_seed(1)
    high = make_pipe(7.0, **augpipe_specs["bgcfnc"])(x)
    torch.manual_seed(1)
    one = make_pipe(1.0, **augpipe_specs["bgcfnc"])(x)
    assert torch.equal(high, one)
    assert torch.equal(make_pipe(-2.0, **augpipe_specs["bgcfnc"])(x), x)


def test_probability_per_sample():
    # p * multiplier per sample: with p = 0.5 about half the samples get a cutout.
    x = images(n=400, h=8, w=8) + 3  # no zeros before cutout
    torch.manual_seed(0)
    y = make_pipe(0.5, cutout=1)(x)
    hit = (y == 0).flatten(1).any(dim=1).float().mean()
    assert 0.42 < float(hit) < 0.58
    torch.manual_seed(0)
    y = make_pipe(0.5, cutout=0.5)(x)
    assert 0.17 < float((y == 0).flatten(1).any(dim=1).float().mean()) < 0.33


def test_determinism_under_seed():
    x = images(n=6)
    pipe = make_pipe(0.7, **augpipe_specs["bgcfnc"])
    torch.manual_seed(123)
    a = pipe(x)
    torch.manual_seed(123)
    b = pipe(x)
    torch.manual_seed(124)
    c = pipe(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("n, c, h, w", [(1, 3, 16, 16), (5, 3, 16, 16), (3, 1, 16, 16), (2, 3, 16, 24)])
def test_shapes_and_dtype_kept(n, c, h, w):
    spec = dict(augpipe_specs["bgcfnc"])
    if h != w:
        spec["rotate90"] = 0
    pipe = make_pipe(1.0, **spec)
    x = images(n=n, c=c, h=h, w=w)
    assert pipe(x).shape == x.shape
    assert pipe(x.double()).dtype == torch.float64
    assert pipe(x.half()).dtype == torch.float16


def test_errors_are_clear():
    with pytest.raises(ValueError, match="square"):
        make_pipe(rotate90=1)(images(h=16, w=24))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        make_pipe(hue=1)(images(c=2))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        make_pipe(xflip=1)(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="debug_percentile"):
        make_pipe(xflip=1)(images(), debug_percentile=1.5)
    with pytest.raises(ValueError, match="imgfilter_bands"):
        AugmentPipe(imgfilter_bands=[1, 1])


# ----------------------------------------------------------------------------
# Blit: exact pixel permutations.


def test_xflip_equals_torch_flip():
    x = images(n=32)
    torch.manual_seed(0)
    y = make_pipe(xflip=1)(x)
    flipped = [torch.equal(y[i], x[i].flip(2)) for i in range(32)]
    kept = [torch.equal(y[i], x[i]) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 4 < sum(flipped) < 28  # i ~ U{0, 1}
    assert torch.equal(make_pipe(xflip=1)(x, debug_percentile=0.99), x.flip(3))


def test_rotate90_preserves_pixels():
    x = images(n=32)
    torch.manual_seed(0)
    y = make_pipe(rotate90=1)(x)
    seen = set()
    for i in range(32):
        matches = [k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, dims=[1, 2]))]
        assert len(matches) == 1
        seen.add(matches[0])
        assert torch.equal(y[i].flatten().sort().values, x[i].flatten().sort().values)
    assert seen == {0, 1, 2, 3}


def reflect_shift(img, tx, ty):
    """img [C, H, W] translated by (tx, ty) pixels, reflection at the borders."""
    _, h, w = img.shape
    ix = torch.from_numpy(np.abs((np.arange(w) - tx + (w - 1)) % (2 * w - 2) - (w - 1)))
    iy = torch.from_numpy(np.abs((np.arange(h) - ty + (h - 1)) % (2 * h - 2) - (h - 1)))
    return img[:, iy][:, :, ix]


def test_xint_is_a_bounded_integer_translation():
    x = images(n=24)
    torch.manual_seed(0)
    y = make_pipe(xint=1)(x)  # xint_max 0.125 of 16 px: |shift| <= 2
    shifts = set()
    for i in range(24):
        found = [(tx, ty) for tx in range(-2, 3) for ty in range(-2, 3) if torch.equal(y[i], reflect_shift(x[i], tx, ty))]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 5
    assert torch.equal(make_pipe(xint=1)(x, debug_percentile=1.0), torch.stack([reflect_shift(s, 2, 2) for s in x]))


# ----------------------------------------------------------------------------
# Geometric resampling.


def test_resample_identity_round_trip_is_exact():
    pipe = AugmentPipe(scale=1)
    x = images(n=3)
    eye = torch.eye(3).expand(3, 3, 3)
    torch.testing.assert_close(pipe._resample(x, eye), x, atol=5e-5, rtol=0)


def test_rotation_by_90_degrees_matches_rot90():
    # debug_percentile 0.625 -> two rotations of +45 degrees each (pre- and post-aniso).
    x = blob(cx=0.3, cy=-0.2)
    y = make_pipe(rotate=1)(x, debug_percentile=0.625)
    errors = [float((y - torch.rot90(x, k, dims=[2, 3])).abs().max()) for k in range(4)]
    assert min(errors) < 0.01 and sorted(errors)[1] > 0.3


def test_scale_aniso_xfrac_move_a_blob_as_drawn():
    x = blob(res=32, sigma=0.12)
    mx, my, sx, sy = moments(x[0, 0])
    q = 0.8
    z = normal_quantile(q)
    y = make_pipe(scale=1)(x, debug_percentile=q)[0, 0]
    s = 2 ** (0.2 * z)
    assert moments(y)[2] == pytest.approx(sx * s, rel=0.02) and moments(y)[3] == pytest.approx(sy * s, rel=0.02)
    y = make_pipe(aniso=1)(x, debug_percentile=q)[0, 0]
    assert moments(y)[2] == pytest.approx(sx * s, rel=0.02) and moments(y)[3] == pytest.approx(sy / s, rel=0.02)
    y = make_pipe(xfrac=1)(x, debug_percentile=q)[0, 0]
    shift = 0.125 * z * 32
    assert moments(y)[0] == pytest.approx(mx + shift, abs=0.05) and moments(y)[1] == pytest.approx(my + shift, abs=0.05)


def test_geometric_parameter_distributions():
    torch.manual_seed(0)
    pipe = make_pipe(1.0, scale=1, aniso=1, rotate=1, xfrac=1, scale_std=0.3)
    draws = augment._Draws(4000, pipe.p, torch.device("cpu"))
    m_inv, active = pipe._geom_matrix(draws, 16, 16, torch.device("cpu"))
    assert bool(active.all())
    det = torch.linalg.det(m_inv[:, :2, :2])  # 1 / s^2: rotations and aniso keep the area
    assert float(torch.log2(det).std() / 2) == pytest.approx(0.3, rel=0.08)
    # Probability of at least one of the two rotations is p * rotate.
    pipe = make_pipe(0.5, rotate=1)
    draws = augment._Draws(4000, pipe.p, torch.device("cpu"))
    _, active = pipe._geom_matrix(draws, 16, 16, torch.device("cpu"))
    assert float(active.float().mean()) == pytest.approx(0.5, abs=0.04)


# ----------------------------------------------------------------------------
# Colour.


def test_brightness_shifts_the_mean_by_the_drawn_offset():
    x = images(n=4)
    q = 0.9
    y = make_pipe(brightness=1)(x, debug_percentile=q)
    torch.testing.assert_close(y - x, torch.full_like(x, 0.2 * normal_quantile(q)), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    y = make_pipe(brightness=1)(images(n=2000, h=2, w=2))
    offsets = (y - images(n=2000, h=2, w=2)).mean(dim=[1, 2, 3])
    assert float(offsets.std()) == pytest.approx(0.2, rel=0.08) and abs(float(offsets.mean())) < 0.02


def test_contrast_scales_about_zero():
    x = images()
    q = 0.3
    y = make_pipe(contrast=1)(x, debug_percentile=q)
    torch.testing.assert_close(y, x * 2 ** (0.5 * normal_quantile(q)), atol=1e-5, rtol=1e-5)


def test_saturation_zero_gives_grey():
    x = images()
    y = make_pipe(saturation=1, saturation_std=20)(x, debug_percentile=0.0)  # factor 2 ** (-95)
    grey = x.mean(dim=1, keepdim=True).expand_as(x)
    torch.testing.assert_close(y, grey, atol=1e-5, rtol=0)


def test_lumaflip_negates_luma_and_keeps_chroma():
    x = images()
    y = make_pipe(lumaflip=1)(x, debug_percentile=0.99)
    torch.testing.assert_close(y.mean(dim=1), -x.mean(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(y - y.mean(dim=1, keepdim=True), x - x.mean(dim=1, keepdim=True), atol=1e-5, rtol=0)


def test_hue_rotation_by_120_degrees_permutes_channels():
    x = images()
    y = make_pipe(hue=1)(x, debug_percentile=5 / 6)  # theta = 2 pi / 3 about the grey axis
    errors = [float((y - x[:, perm]).abs().max()) for perm in ([1, 2, 0], [2, 0, 1])]
    assert min(errors) < 1e-5


def test_grey_images_with_colour_transforms():
    x = images(c=1)
    y = make_pipe(lumaflip=1, hue=1, saturation=1)(x, debug_percentile=0.99)
    torch.testing.assert_close(y, -x, atol=1e-5, rtol=0)  # hue and saturation leave grey alone
    y = make_pipe(brightness=1)(x, debug_percentile=0.9)
    torch.testing.assert_close(y, x + 0.2 * normal_quantile(0.9), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------
# Filter, noise, cutout.


def test_imgfilter_gains_keep_expected_power():
    x = images()
    torch.testing.assert_close(make_pipe(imgfilter=1)(x, debug_percentile=0.5), x, atol=1e-5, rtol=0)
    pipe = make_pipe(0.5, imgfilter=1)
    torch.manual_seed(0)
    gains, active = pipe._filter_gains(augment._Draws(2000, pipe.p, torch.device("cpu")), torch.device("cpu"))
    power = torch.tensor(augment.IMGFILTER_EXPECTED_POWER)
    torch.testing.assert_close((gains.square() * power).sum(dim=1), torch.ones(2000))
    assert float(active.float().mean()) == pytest.approx(1 - 0.5**4, abs=0.04)  # any of 4 bands at p = 0.5
    # A flat image only sees the lowest band: the output is the input times that band's gain.
    flat = torch.full([3, 3, 16, 16], 0.5)
    pipe = make_pipe(imgfilter=1)
    torch.manual_seed(1)
    gains, _ = pipe._filter_gains(augment._Draws(3, pipe.p, torch.device("cpu")), torch.device("cpu"))
    torch.manual_seed(1)
    y = pipe(flat)
    torch.testing.assert_close(y, 0.5 * gains[:, 0, None, None, None].expand_as(y), atol=1e-5, rtol=1e-5)


def test_imgfilter_changes_high_frequencies():
    x = images(n=2)
    y = make_pipe(imgfilter=1, imgfilter_bands=[0, 0, 0, 1])(x, debug_percentile=0.05)  # damp the top band
    def highpass_power(t):
        return float((t[..., 1:] - t[..., :-1]).square().mean())

    assert highpass_power(y) < 0.6 * highpass_power(x)


def test_noise_std_matches_drawn_sigma():
    x = images(n=2, h=64, w=64)
    q = 0.9
    y = make_pipe(noise=1)(x, debug_percentile=q)
    sigma = 0.1 * normal_quantile(q)
    assert float((y - x).std()) == pytest.approx(abs(sigma), rel=0.05)


def test_cutout_zeros_one_square():
    x = images(n=16) + 3  # no zeros before cutout
    torch.manual_seed(0)
    y = make_pipe(cutout=1)(x)
    for i in range(16):
        zero = (y[i] == 0).all(dim=0)
        assert bool(((y[i] == x[i]).all(dim=0) | zero).all())
        rows, cols = zero.any(dim=1).nonzero(), zero.any(dim=0).nonzero()
        assert zero.sum() == len(rows) * len(cols)  # a rectangle
        assert len(rows) <= 8 and len(cols) <= 8 and zero.sum() >= 16  # side 0.5 * 16, clipped


# ----------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize("name", ALL_TRANSFORMS)
def test_gradients_reach_the_input(name):
    x = images(n=2).requires_grad_(True)
    torch.manual_seed(0)
    y = make_pipe(**{name: 1})(x, debug_percentile=0.8)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_double_backward_r1_on_augmented_reals():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    x = images(n=3).requires_grad_(True)
    y = make_pipe(1.0, **augpipe_specs["bgcfnc"])(x)
    logits = torch.nn.functional.leaky_relu(conv(y), 0.2).sum(dim=[1, 2, 3])
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    r1 = grad.square().sum()
    r1.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    assert float(conv.weight.grad.abs().sum()) > 0
