"""ADA: the non-leaking augmentation pipeline of "Training Generative Adversarial Networks with
Limited Data" (Karras et al. 2020), written from the paper's description.

`AugmentPipe` applies, in this order and each with probability `p * <multiplier>` per sample:

    blit    xflip, rotate90, xint (integer translation)
    geom    scale (isotropic), rotate (arbitrary), aniso (anisotropic scale), xfrac (fractional translation)
    color   brightness, contrast, lumaflip, hue, saturation
    filter  imgfilter (random gains of 4 frequency bands)
    noise   additive Gaussian RGB noise
    cutout  one square set to 0

Why it does not leak: every transform is drawn per sample and is invertible in distribution, and
the resampling is done so that it does not blur or alias the images systematically:
- blit transforms permute pixels exactly (reflection at the borders);
- the general geometric transforms are composed into ONE 3x3 matrix per sample and applied once:
  reflection padding, 2x upsampling with the sym6 wavelet lowpass, bilinear sampling on the 2x
  grid, 2x downsampling with the same wavelet. With the identity matrix this round trip is exact
  (the wavelet's even shifts are orthonormal), so an un-transformed sample comes back unchanged;
- colour transforms are one 4x4 affine matrix per sample in RGB.

Samples that draw no transform in a stage are passed through bit-exactly (`torch.where`), so p = 0
is the identity. Every step is differentiable to second order (R1 on augmented reals) through
`torch_utils.ops`.

Keep this module self-contained: `AugmentPipe` is a persistent class whose pickles embed this
file's source. Import only numpy, torch and the `torch_utils` names the official codebase also
provides (misc, persistence, ops.upfirdn2d, ops.grid_sample_gradfix, ops.conv2d_gradfix).
"""

import numpy as np
import torch

from torch_utils import misc, persistence
from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix, upfirdn2d

# ----------------------------------------------------------------------------
# Wavelet lowpass (scaling) filters, orthonormal convention: sum = sqrt(2), sum h[n] h[n + 2k] = delta_k.
# sym2 is Daubechies' 4-tap filter in closed form, (1 -+ sqrt 3) / (4 sqrt 2), (3 -+ sqrt 3) / (4 sqrt 2).
# sym6 comes from Daubechies' spectral factorisation of the order-6 maxflat polynomial, choosing the
# roots that give the least phase non-linearity (the symlet rule), evaluated with 50-digit precision;
# it agrees with the published sym6 table (PyWavelets / wavelets.pybytes.com) to about 2e-12.

_SQRT3 = np.sqrt(3.0)
SYM2 = [(1 - _SQRT3) / (4 * np.sqrt(2.0)), (3 - _SQRT3) / (4 * np.sqrt(2.0)),
        (3 + _SQRT3) / (4 * np.sqrt(2.0)), (1 + _SQRT3) / (4 * np.sqrt(2.0))]
SYM6 = [0.015404109327044824, 0.0034907120842221625, -0.11799011114852003, -0.048311742585698055,
        0.49105594192797373, 0.787641141028651, 0.33792942172816583, -0.072637522786376583,
        -0.021060292512370848, 0.044724901770781385, 0.0017677118642540077, -0.0078007083250323804]

# Expected share of image power in the 4 imgfilter bands (lowest first); natural images put most
# of their power in the lowest band. The random band gains are normalised against this.
IMGFILTER_EXPECTED_POWER = [10 / 13, 1 / 13, 1 / 13, 1 / 13]

# ----------------------------------------------------------------------------
# Presets of train.py --augpipe.

# Transform groups (the letters of the preset names) and the presets built from them.
_AUGPIPE_GROUPS = {
    "blit": {"xflip": 1, "rotate90": 1, "xint": 1},
    "geom": {"scale": 1, "rotate": 1, "aniso": 1, "xfrac": 1},
    "color": {"brightness": 1, "contrast": 1, "lumaflip": 1, "hue": 1, "saturation": 1},
    "filter": {"imgfilter": 1},
    "noise": {"noise": 1},
    "cutout": {"cutout": 1},
}


def _union(*groups):
    """Merged kwargs of the named groups of `_AUGPIPE_GROUPS`."""
    merged = {}
    for group in groups:
        merged.update(_AUGPIPE_GROUPS[group])
    return merged


# train.py --augpipe NAME -> AugmentPipe kwargs.
augpipe_specs = {
    **{name: _union(name) for name in _AUGPIPE_GROUPS},
    "bg": _union("blit", "geom"),
    "bgc": _union("blit", "geom", "color"),
    "bgcf": _union("blit", "geom", "color", "filter"),
    "bgcfn": _union("blit", "geom", "color", "filter", "noise"),
    "bgcfnc": _union("blit", "geom", "color", "filter", "noise", "cutout"),
}

# ----------------------------------------------------------------------------
# Filters.


def _upsample_taps(taps, factor):
    """Insert factor - 1 zeros between the taps of a 1-D filter (a trous)."""
    out = np.zeros((len(taps) - 1) * factor + 1)
    out[::factor] = taps
    return out


def _centre_pad(taps, length):
    """Zero-pad an odd-length 1-D filter symmetrically to `length` taps."""
    extra = (length - len(taps)) // 2
    return np.pad(taps, [extra, extra])


def imgfilter_bank(lowpass=SYM2, num_bands=4):
    """Zero-phase octave filter bank [num_bands, taps] (lowest band first) built from a wavelet.

    lo = h * flip(h) / 2 is the zero-phase half-band lowpass (|H|^2 / 2) and hi = delta - lo its
    power-complementary highpass (orthonormal wavelets make lo's even taps a delta / 2). Splitting
    the low part again with the filters dilated by 2, 4, ... gives bands [0, pi/8], [pi/8, pi/4],
    [pi/4, pi/2], [pi/2, pi] for 4 bands. The bands sum to a delta, so unit gains are the identity.
    """
    h = np.asarray(lowpass, dtype=np.float64)
    lo = np.convolve(h, h[::-1]) / 2
    hi = -lo
    hi[len(hi) // 2] += 1
    rest = np.ones(1)
    bands = []
    for level in range(num_bands - 1):
        factor = 2**level
        bands.append(np.convolve(rest, _upsample_taps(hi, factor)))
        rest = np.convolve(rest, _upsample_taps(lo, factor))
    bands.append(rest)
    bands = bands[::-1]
    return np.stack([_centre_pad(b, len(rest)) for b in bands])


# ----------------------------------------------------------------------------
# Random draws.


class _Draws:
    """Per-sample random numbers for one forward pass.

    With `debug_percentile` = q in [0, 1], every draw is replaced by its q-quantile and every
    enabled transform is applied, so a fixed q shows the pipeline at one strength.
    """

    def __init__(self, num, p, device, debug_percentile=None):
        self.num = num  # batch size N
        self.p = p  # clamped augment probability, scalar tensor on `device`
        self.device = device
        self.q = None if debug_percentile is None else float(debug_percentile)

    def gate(self, multiplier, prob=None):
        """bool [N]: whether each sample gets a transform of probability p * multiplier (or `prob`)."""
        if self.q is not None:
            return torch.full([self.num], multiplier > 0, dtype=torch.bool, device=self.device)
        prob = self.p * multiplier if prob is None else prob
        return torch.rand([self.num], device=self.device) < prob

    def uniform(self, low, high, extra=()):
        """[N, *extra] uniform in [low, high)."""
        shape = [self.num, *extra]
        if self.q is not None:
            return torch.full(shape, low + (high - low) * self.q, device=self.device)
        return torch.rand(shape, device=self.device) * (high - low) + low

    def normal(self, extra=()):
        """[N, *extra] standard normal."""
        shape = [self.num, *extra]
        if self.q is not None:
            q = min(max(self.q, 1e-6), 1 - 1e-6)  # the 0 and 1 quantiles are infinite
            value = float(np.sqrt(2.0) * torch.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64)))
            return torch.full(shape, value, device=self.device)
        return torch.randn(shape, device=self.device)

    def randint(self, count):
        """[N] int64 uniform in {0, ..., count - 1}."""
        if self.q is not None:
            return torch.full([self.num], min(int(self.q * count), count - 1), device=self.device)
        return torch.randint(count, [self.num], device=self.device)


def _lognormal(draws, std_log2):
    """[N] 2 ** N(0, std_log2^2): log-normal with std std_log2 * ln 2 in the natural log."""
    return torch.exp2(draws.normal() * std_log2)


def _select(gate, value, identity):
    """value where gate else identity (gate [N] broadcast over value's trailing dims)."""
    gate = gate.reshape([-1] + [1] * (value.ndim - 1))
    return torch.where(gate, value, torch.as_tensor(identity, dtype=value.dtype, device=value.device))


# ----------------------------------------------------------------------------
# Matrices (batched [N, 3, 3] or [N, 4, 4]).


def _eye(num, size, device):
    return torch.eye(size, device=device).expand(num, size, size)


def _translate2d_inv(tx, ty):
    """[N, 3, 3] inverse of a translation by (tx, ty) [N] each."""
    m = _eye(tx.shape[0], 3, tx.device).clone()
    m[:, 0, 2] = -tx
    m[:, 1, 2] = -ty
    return m


def _scale2d_inv(sx, sy):
    """[N, 3, 3] inverse of an axis scaling by (sx, sy) [N] each."""
    m = _eye(sx.shape[0], 3, sx.device).clone()
    m[:, 0, 0] = 1 / sx
    m[:, 1, 1] = 1 / sy
    return m


def _rotate2d_inv(theta):
    """[N, 3, 3] inverse of a rotation by theta [N] radians."""
    m = _eye(theta.shape[0], 3, theta.device).clone()
    c, s = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, s, -s, c
    return m


def _luma_axis(device):
    """[4] unit luma axis (1, 1, 1, 0) / sqrt 3 in homogeneous RGB."""
    return misc.constant(np.array([1, 1, 1, 0]) / np.sqrt(3), dtype=torch.float32, device=device)


def _rotate3d_about(axis, theta):
    """[N, 4, 4] rotation by theta [N] about the unit `axis` [4] (Rodrigues' formula)."""
    v = axis[:3]
    cross = torch.zeros(3, 3, device=theta.device)
    cross[0, 1], cross[0, 2], cross[1, 2] = -v[2], v[1], -v[0]
    cross = cross - cross.T
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    r = c * torch.eye(3, device=theta.device) + s * cross + (1 - c) * torch.outer(v, v)
    m = _eye(theta.shape[0], 4, theta.device).clone()
    m[:, :3, :3] = r
    return m


# ----------------------------------------------------------------------------
# Index helpers.


def _reflect_index(index, size):
    """Map integer positions [any shape] into [0, size) by mirror reflection (no edge repeat)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = torch.remainder(index, period)
    return torch.where(index >= size, period - index, index)


def _reflect_pad(x, pad):
    """Reflection-pad x [N, C, H, W] by pad = [x0, x1, y0, y1] (any amount) -> [N, C, H', W'].

    Index-based rather than F.pad: it allows pads larger than the image and is differentiable to
    any order (index_select).
    """
    x0, x1, y0, y1 = pad
    _, _, h, w = x.shape
    ix = _reflect_index(torch.arange(-x0, w + x1, device=x.device), w)
    iy = _reflect_index(torch.arange(-y0, h + y1, device=x.device), h)
    return x.index_select(3, ix).index_select(2, iy)


def _blit_index(flip, quarter, shift, h, w):
    """[N, H * W] flat input index of every output pixel for a flip, then a rotation by quarter * 90
    degrees, then an integer translation shift [N, 2] (x, y), reflected at the borders.

    Works in doubled coordinates about the centre, X = 2x - (W - 1), which are integers for every
    pixel. A multiple of 90 degrees maps each input axis to one output axis, so the index is built
    from per-axis vectors [N, W] and [N, H] and one broadcast, not per-pixel arithmetic.
    """
    device = flip.device
    # Inverse mapping, output -> input: undo the translation, then the rotation, then the flip.
    ux = (2 * torch.arange(w, device=device) - (w - 1))[None, :] - 2 * shift[:, 0, None]  # [N, W]
    uy = (2 * torch.arange(h, device=device) - (h - 1))[None, :] - 2 * shift[:, 1, None]  # [N, H]
    cos = misc.constant([1, 0, -1, 0], dtype=torch.int64, device=device)[quarter][:, None]
    sin = misc.constant([0, 1, 0, -1], dtype=torch.int64, device=device)[quarter][:, None]
    sign = (1 - 2 * flip)[:, None]

    def to_index(doubled, size):
        return _reflect_index(torch.div(doubled + (size - 1), 2, rounding_mode="floor"), size)

    # Even quarters: input x from output x, input y from output y. Odd ones swap the axes.
    straight = to_index(cos * uy, h)[:, :, None] * w + to_index(sign * cos * ux, w)[:, None, :]
    swapped = to_index(-sin * ux, h)[:, None, :] * w + to_index(sign * sin * uy, w)[:, :, None]
    odd = (quarter % 2 == 1)[:, None, None]
    return torch.where(odd, swapped, straight).reshape(-1, h * w)


# ----------------------------------------------------------------------------
# The pipeline.


@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    """ADA augmentation pipeline. forward(images [N, C, H, W]) -> augmented images, same shape and dtype.

    `p` (buffer, scalar) is the overall augment probability, set by the training loop; it is
    clamped to [0, 1] when used. Each transform hits a sample with probability p * its multiplier.
    Colour transforms need C = 3; with C = 1 a grey image is treated as (x, x, x): brightness,
    contrast and luma flip apply, hue and saturation do nothing.
    """

    def __init__(self,
        xflip=0,                        # multiplier: mirror x (i ~ U{0, 1})
        rotate90=0,                     # multiplier: rotate by i * 90 degrees, i ~ U{0..3} (square images)
        xint=0,                         # multiplier: integer translation
        xint_max=0.125,                 # integer translation range, fraction of the image size
        scale=0,                        # multiplier: isotropic scale
        rotate=0,                       # multiplier: arbitrary rotation
        aniso=0,                        # multiplier: anisotropic scale
        xfrac=0,                        # multiplier: fractional translation
        scale_std=0.2,                  # isotropic scale: log2-std of the log-normal factor
        rotate_max=1,                   # rotation range, fraction of +-180 degrees
        aniso_std=0.2,                  # anisotropic scale: log2-std of the log-normal factor
        xfrac_std=0.125,                # fractional translation: std, fraction of the image size
        brightness=0,                   # multiplier: additive brightness
        contrast=0,                     # multiplier: contrast (scale about 0)
        lumaflip=0,                     # multiplier: invert luma (Householder reflection)
        hue=0,                          # multiplier: hue rotation about the luma axis
        saturation=0,                   # multiplier: saturation (scale off the luma axis)
        brightness_std=0.2,             # brightness: std of the additive offset
        contrast_std=0.5,               # contrast: log2-std of the log-normal factor
        hue_max=1,                      # hue rotation range, fraction of +-180 degrees
        saturation_std=1,               # saturation: log2-std of the log-normal factor
        imgfilter=0,                    # multiplier: frequency-band filtering
        imgfilter_bands=[1, 1, 1, 1],   # per-band multipliers, lowest band first (copied, never mutated)  # noqa: B006
        imgfilter_std=1,                # band gains: log2-std of the log-normal factors
        noise=0,                        # multiplier: additive Gaussian noise
        cutout=0,                       # multiplier: cutout
        noise_std=0.1,                  # noise: std of the per-sample sigma ~ |N(0, noise_std^2)|
        cutout_size=0.5,                # cutout: side of the square, fraction of the image size
    ):
        super().__init__()
        self.register_buffer("p", torch.zeros([]))
        self.xflip, self.rotate90, self.xint, self.xint_max = float(xflip), float(rotate90), float(xint), float(xint_max)
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.scale_std, self.rotate_max = float(scale_std), float(rotate_max)
        self.aniso_std, self.xfrac_std = float(aniso_std), float(xfrac_std)
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std = float(hue_max), float(saturation_std)
        self.imgfilter, self.imgfilter_bands = float(imgfilter), [float(b) for b in imgfilter_bands]
        self.imgfilter_std = float(imgfilter_std)
        self.noise, self.cutout = float(noise), float(cutout)
        self.noise_std, self.cutout_size = float(noise_std), float(cutout_size)
        if len(self.imgfilter_bands) != 4:
            raise ValueError(f"AugmentPipe: imgfilter_bands={imgfilter_bands!r} must hold 4 multipliers, lowest band first")
        # Normalised to sum 1, the form upfirdn2d takes; 12 taps.
        self.register_buffer("Hz_geom", upfirdn2d.setup_filter(SYM6))
        self.register_buffer("Hz_fbank", torch.as_tensor(imgfilter_bank(SYM2), dtype=torch.float32))

    def forward(self, images, debug_percentile=None):
        """images [N, C, H, W] float (about [-1, 1]) -> [N, C, H, W] same dtype.

        debug_percentile: None for random augmentation; q in [0, 1] applies every enabled transform
        with each random parameter at its q-quantile (for visualising the strength).
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise ValueError("AugmentPipe: images must be a float tensor [N, C, H, W], got "
                             f"{type(images).__name__} {list(getattr(images, 'shape', []))}")
        if debug_percentile is not None and not 0 <= float(debug_percentile) <= 1:
            raise ValueError(f"AugmentPipe: debug_percentile={debug_percentile} must be None or in [0, 1]")
        x = images if images.dtype in (torch.float32, torch.float64) else images.float()
        p = self.p.detach().to(device=x.device, dtype=torch.float32).clamp(0, 1)
        draws = _Draws(x.shape[0], p, x.device, debug_percentile)
        x = self._blit(x, draws)
        x = self._geom(x, draws)
        x = self._color(x, draws)
        x = self._filter(x, draws)
        x = self._noise(x, draws)
        x = self._cutout(x, draws)
        return x.to(images.dtype)

    # ---------------------------------------------------------------- blit

    def _blit(self, x, draws):
        """xflip, rotate90, xint as one exact per-sample pixel permutation (reflection at the borders)."""
        if self.xflip == 0 and self.rotate90 == 0 and self.xint == 0:
            return x
        n, c, h, w = x.shape
        if self.rotate90 > 0 and h != w:
            raise ValueError(f"AugmentPipe: rotate90 needs square images, got {h}x{w}; set rotate90=0")
        flip = draws.randint(2) * draws.gate(self.xflip)
        quarter = draws.randint(4) * draws.gate(self.rotate90)
        shift = torch.round(draws.uniform(-self.xint_max, self.xint_max, [2]) * torch.tensor([w, h], device=x.device))
        shift = (shift * draws.gate(self.xint)[:, None]).long()
        index = _blit_index(flip, quarter, shift, h, w)  # [N, H * W]
        index = index[:, None, :].expand(n, c, h * w)
        return x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)

    # ---------------------------------------------------------------- geom

    def _geom_matrix(self, draws, w, h, device):
        """([N, 3, 3] output -> input matrix in pixels about the image centre, bool [N] active).

        Transforms in order: scale, rotation, aniso, rotation, xfrac; m_inv is the product of
        their inverses in the same order.
        """
        num = draws.num
        m_inv = _eye(num, 3, device)
        active = torch.zeros([num], dtype=torch.bool, device=device)
        gate = draws.gate(self.scale)
        s = _select(gate, _lognormal(draws, self.scale_std), 1.0)
        m_inv, active = m_inv @ _scale2d_inv(s, s), active | gate
        # Two rotations around the anisotropic scale, each with the probability that makes
        # "at least one rotation" happen with probability p * rotate.
        p_rot = 1 - torch.sqrt((1 - draws.p * self.rotate).clamp(0, 1))
        gate = draws.gate(self.rotate, p_rot)
        theta = _select(gate, draws.uniform(-np.pi, np.pi) * self.rotate_max, 0.0)
        m_inv, active = m_inv @ _rotate2d_inv(theta), active | gate
        gate = draws.gate(self.aniso)
        s = _select(gate, _lognormal(draws, self.aniso_std), 1.0)
        m_inv, active = m_inv @ _scale2d_inv(s, 1 / s), active | gate
        gate = draws.gate(self.rotate, p_rot)
        theta = _select(gate, draws.uniform(-np.pi, np.pi) * self.rotate_max, 0.0)
        m_inv, active = m_inv @ _rotate2d_inv(theta), active | gate
        gate = draws.gate(self.xfrac)
        t = _select(gate, draws.normal([2]) * self.xfrac_std, 0.0) * torch.tensor([w, h], device=device)
        m_inv, active = m_inv @ _translate2d_inv(t[:, 0], t[:, 1]), active | gate
        return m_inv, active

    def _geom(self, x, draws):
        """scale, rotate, aniso, xfrac: one matrix per sample, applied once (see `_resample`)."""
        if self.scale == 0 and self.rotate == 0 and self.aniso == 0 and self.xfrac == 0:
            return x
        _, _, h, w = x.shape
        m_inv, active = self._geom_matrix(draws, w, h, x.device)
        return self._resample(x, m_inv, active)

    def _resample(self, x, m_inv, active=None):
        """Warp x [N, C, H, W] by m_inv [N, 3, 3] (output -> input, pixels about the centre).

        Reflection-pad, upsample 2x with the wavelet lowpass f, sample bilinearly on the 2x grid,
        downsample 2x with f (correlation, the adjoint of the upsampling). The 2x grid is
        fw - 1 samples larger than 2H x 2W so that the 'valid' downsampling returns H x W.
        Samples where `active` [N] (default: all) is False come back unchanged.
        """
        if active is None:
            active = torch.ones([x.shape[0]], dtype=torch.bool, device=x.device)
        _, _, h, w = x.shape
        f = self.Hz_geom.to(device=x.device, dtype=x.dtype)
        fw = f.shape[0]
        a = fw // 2 - 1  # filter offset of the up/down passes: input pixel i lands near 2x pixel 2i
        # sym6 is not symmetric: its centre of mass `delay` (5.10 of 0..11 taps, not 5.5) says where
        # each input pixel really lands on the 2x grid. Placing both 2x grids by it keeps rotations
        # and scales centred; 2x pixel k sits at (k + a - delay) / 2 + 1/2 in pixels of its image.
        taps = self.Hz_geom.to(device=x.device, dtype=torch.float32)  # grid maths in float32 (m_inv's dtype)
        delay = (taps * torch.arange(fw, device=x.device)).sum() / taps.sum()
        ux = (torch.arange(2 * w + fw - 1, device=x.device) - delay) / 2 + 0.5 - w / 2
        uy = (torch.arange(2 * h + fw - 1, device=x.device) - delay) / 2 + 0.5 - h / 2
        pad = self._geom_padding(m_inv, active, ux, uy, w, h, fw)
        if pad is None:
            return x
        y = _reflect_pad(x, pad)
        y = upfirdn2d.upfirdn2d(y, f, up=2, padding=[fw // 2, a, fw // 2, a], gain=4)
        # Input position P (pixels from the padded image's corner) of each 2x output sample, as the
        # 2x pixel index k = 2 P - 1 - a + delay normalised for align_corners=False: (2 k + 1) / L - 1.
        # All affine in (ux, uy), so one [N, 2, 3] matrix and one batched matmul build the grid.
        size = torch.tensor([w + pad[0] + pad[1], h + pad[2] + pad[3]], dtype=m_inv.dtype, device=x.device)
        offset = torch.tensor([w / 2 + pad[0], h / 2 + pad[2]], dtype=m_inv.dtype, device=x.device)
        theta = 2 * m_inv[:, :2, :] / size[None, :, None]
        theta[:, :, 2] += (2 * offset - 0.5 - a + delay) / size - 1
        base_y, base_x = torch.meshgrid(uy, ux, indexing="ij")
        base = torch.stack([base_x, base_y, torch.ones_like(base_x)], dim=2)  # [Hg, Wg, 3]
        grid = (base.reshape(1, -1, 3) @ theta.transpose(1, 2)).reshape(-1, len(uy), len(ux), 2)
        y = grid_sample_gradfix.grid_sample(y, grid.to(x.dtype))
        y = upfirdn2d.upfirdn2d(y, f, down=2, flip_filter=True)
        return torch.where(active[:, None, None, None], y, x)

    @staticmethod
    def _geom_padding(m_inv, active, ux, uy, w, h, fw):
        """[x0, x1, y0, y1] reflection padding that covers every sampled input position, or None
        when no sample is active (the whole resampling is then skipped, e.g. at p = 0).

        The sampled region's extent comes from the four corners of the output grid. The margin
        `fw / 4 + 1` input pixels keeps the bilinear taps off the zero-padded border of the
        upsampled image. Capped at twice the image size (beyond that the sampler reads zeros).
        """
        ones = torch.ones_like(ux[0])
        corners = torch.stack([torch.stack([ux[i], uy[j], ones]) for i, j in ((0, 0), (-1, 0), (0, -1), (-1, -1))])
        v = (m_inv[:, None, :2, :] @ corners.to(m_inv.dtype)[None, :, :, None])[..., 0]  # [N, 4, 2]
        stats = torch.cat([active.any().to(v.dtype)[None], v.amin(dim=[0, 1]), v.amax(dim=[0, 1])])
        any_active, low_x, low_y, high_x, high_y = stats.tolist()  # the pipeline's one device sync
        if not any_active:
            return None
        low, high = (low_x, low_y), (high_x, high_y)
        margin = fw / 4 + 1
        pad = [-low[0] - w / 2, high[0] - w / 2, -low[1] - h / 2, high[1] - h / 2]
        limits = [2 * w, 2 * w, 2 * h, 2 * h]
        return [int(min(max(np.ceil(p + margin), 0), lim)) for p, lim in zip(pad, limits)]

    # ---------------------------------------------------------------- color

    def _color_matrix(self, draws, device):
        """([N, 4, 4] affine RGB matrix, bool [N] active), transforms applied in the listed order."""
        num = draws.num
        c_mat = _eye(num, 4, device)
        active = torch.zeros([num], dtype=torch.bool, device=device)
        v = _luma_axis(device)
        vv = torch.outer(v, v)
        eye = torch.eye(4, device=device)
        gate = draws.gate(self.brightness)
        b = _select(gate, draws.normal() * self.brightness_std, 0.0)
        step = eye.repeat(num, 1, 1)
        step[:, :3, 3] = b[:, None]
        c_mat, active = step @ c_mat, active | gate
        gate = draws.gate(self.contrast)
        s = _select(gate, _lognormal(draws, self.contrast_std), 1.0)
        step = torch.diag_embed(torch.stack([s, s, s, torch.ones_like(s)], dim=1))
        c_mat, active = step @ c_mat, active | gate
        gate = draws.gate(self.lumaflip)
        i = _select(gate, draws.randint(2).float(), 0.0)
        c_mat, active = (eye - 2 * vv * i[:, None, None]) @ c_mat, active | gate
        gate = draws.gate(self.hue)
        theta = _select(gate, draws.uniform(-np.pi, np.pi) * self.hue_max, 0.0)
        c_mat, active = _rotate3d_about(v, theta) @ c_mat, active | gate
        gate = draws.gate(self.saturation)
        s = _select(gate, _lognormal(draws, self.saturation_std), 1.0)
        c_mat, active = (vv + (eye - vv) * s[:, None, None]) @ c_mat, active | gate
        return c_mat, active

    def _color(self, x, draws):
        """brightness, contrast, lumaflip, hue, saturation as one 4x4 matrix per sample."""
        if self.brightness == 0 and self.contrast == 0 and self.lumaflip == 0 and self.hue == 0 and self.saturation == 0:
            return x
        n, c, h, w = x.shape
        c_mat, active = self._color_matrix(draws, x.device)
        c_mat = c_mat.to(x.dtype)
        if c == 3:
            y = c_mat[:, :3, :3] @ x.reshape(n, 3, h * w) + c_mat[:, :3, 3:]
            y = y.reshape(n, c, h, w)
        elif c == 1:
            # A grey image is (x, x, x): the matrix maps it to mean-of-rows, averaged back to grey.
            gain = c_mat[:, :3, :3].sum(dim=[1, 2]) / 3
            y = x * gain[:, None, None, None] + c_mat[:, :3, 3].mean(dim=1)[:, None, None, None]
        else:
            raise ValueError(f"AugmentPipe: colour transforms need 1 or 3 channels, got {c}; "
                             "set brightness=contrast=lumaflip=hue=saturation=0")
        return torch.where(active[:, None, None, None], y, x)

    # ---------------------------------------------------------------- filter

    def _filter_gains(self, draws, device):
        """([N, 4] band gains, lowest band first, bool [N] active).

        Each band independently gets a log-normal gain with probability p * imgfilter * its band
        multiplier; the gains are then scaled so that sum_b power_b * gain_b^2 = 1, keeping the
        expected power of an image whose spectrum follows IMGFILTER_EXPECTED_POWER.
        """
        gains, gates = [], []
        for band_multiplier in self.imgfilter_bands:
            gate = draws.gate(self.imgfilter * band_multiplier)
            gains.append(_select(gate, _lognormal(draws, self.imgfilter_std), 1.0))
            gates.append(gate)
        gains = torch.stack(gains, dim=1)
        power = misc.constant(IMGFILTER_EXPECTED_POWER, dtype=torch.float32, device=device)
        gains = gains / (gains.square() * power).sum(dim=1, keepdim=True).sqrt()
        return gains, torch.stack(gates, dim=1).any(dim=1)

    def _filter(self, x, draws):
        """imgfilter: per-sample band gains applied as one separable zero-phase filter per sample.

        The filter is the gain-weighted sum of the octave bands of `Hz_fbank`, applied along x then
        y with reflection padding (conv2d_gradfix, so R1 can differentiate it twice).
        """
        if self.imgfilter == 0 or not any(self.imgfilter_bands):
            return x
        n, c, h, w = x.shape
        gains, active = self._filter_gains(draws, x.device)
        # Separable: each axis gets sqrt(gain), so frequencies (wx, wy) in bands (i, j) are scaled by
        # sqrt(g_i g_j), which is g_i on the diagonal and at DC.
        taps = (gains.sqrt() @ self.Hz_fbank.to(x.device)).to(x.dtype)  # [N, K]
        k = taps.shape[1]
        # Grouped convolution: one depthwise filter per (sample, channel).
        weight = taps[:, None, :].expand(n, c, k).reshape(n * c, 1, 1, k)
        y = _reflect_pad(x, [k // 2] * 4).reshape(1, n * c, h + k - 1, w + k - 1)
        y = conv2d_gradfix.conv2d(y, weight, groups=n * c)  # horizontal pass
        y = conv2d_gradfix.conv2d(y, weight.transpose(2, 3), groups=n * c)  # vertical pass
        return torch.where(active[:, None, None, None], y.reshape(n, c, h, w), x)

    # ---------------------------------------------------------------- noise, cutout

    def _noise(self, x, draws):
        """Additive Gaussian noise with per-sample sigma ~ |N(0, noise_std^2)|."""
        if self.noise == 0:
            return x
        gate = draws.gate(self.noise)
        sigma = _select(gate, draws.normal().abs() * self.noise_std, 0.0).to(x.dtype)
        return x + torch.randn_like(x) * sigma[:, None, None, None]

    def _cutout(self, x, draws):
        """Zero a square of side cutout_size * image size at a uniform random centre."""
        if self.cutout == 0:
            return x
        _, _, h, w = x.shape
        gate = draws.gate(self.cutout)
        centre = draws.uniform(0, 1, [2])
        cx = (torch.arange(w, device=x.device) + 0.5) / w  # pixel centres, fraction of the size
        cy = (torch.arange(h, device=x.device) + 0.5) / h
        outside_x = (cx[None, None, :] - centre[:, 0, None, None]).abs() >= self.cutout_size / 2
        outside_y = (cy[None, :, None] - centre[:, 1, None, None]).abs() >= self.cutout_size / 2
        keep = outside_x | outside_y | ~gate[:, None, None]
        return x * keep[:, None, :, :].to(x.dtype)

    def extra_repr(self):
        enabled = [name for name in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac",
                                     "brightness", "contrast", "lumaflip", "hue", "saturation",
                                     "imgfilter", "noise", "cutout") if getattr(self, name) != 0]
        return f"enabled={','.join(enabled) or 'none'}"
