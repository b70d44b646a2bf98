"""2D convolution fused with up/downsampling by a FIR filter (the StyleGAN2 conv layer).

Definition (what every path below computes). With (fw, fh) the filter size and the padding
[px0, px1, py0, py1] widened for the resampling filter:
    up > 1:   px0 += (fw + up - 1) // 2; px1 += (fw - up) // 2; (y alike with fh)
    down > 1: px0 += (fw - down + 1) // 2; px1 += (fw - down) // 2; (y alike with fh)
the result is
    x = upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up**2)
    x = conv2d(x, w', groups=groups)                      # 'valid', w' = w, or w flipped when
                                                          # flip_weight=False and w is over 1x1
    x = upfirdn2d(x, f, down=down) if down > 1 else x
(flip_filter is passed to every upfirdn2d). `_generic` is exactly this; the other paths are cheaper
rearrangements of the same linear map, each derived where it is defined and tested against it.
"""

import numpy as np

from torch_utils import misc
from torch_utils.ops import conv2d_gradfix, upfirdn2d


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """Pad, upsample, convolve and downsample `x` (see the module docstring for the exact map).

    x: `[N, Cin, H, W]`. w: `[Cout, Cin / groups, kh, kw]`. f: filter from
    `upfirdn2d.setup_filter` (`[fh, fw]` or separable `[fw]`), or None (no filtering).
    up, down: integer factors >= 1. padding: int, [px, py] or [px0, px1, py0, py1] (before the
    filter widening; negative crops). groups: as in conv2d (StyleGAN2 folds the batch into groups
    for modulated convs). flip_weight: True = correlation (like F.conv2d), False = true
    convolution. flip_filter: passed to upfirdn2d.
    Returns `[N, Cout, H', W']`.
    """
    up, down, groups = _check_args(x, w, f, up, down, groups)
    _, _, kh, kw = w.shape
    fw, fh = upfirdn2d._get_filter_size(f)
    pads = _resampling_padding(upfirdn2d._parse_padding(padding), up, down, fw, fh)
    if kw == 1 and kh == 1 and up == 1 and down > 1:
        # A 1x1 conv mixes channels pixel by pixel, so it commutes with per-channel padding,
        # filtering and subsampling: subsample first and convolve fewer pixels.
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=pads, flip_filter=flip_filter)
        return conv2d_gradfix.conv2d(x, w, groups=groups)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        # Same commutation: convolve at the low resolution, then upsample.
        x = conv2d_gradfix.conv2d(x, w, groups=groups)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=pads, gain=up**2, flip_filter=flip_filter)
    if up == 1 and down > 1:
        return _down_strided(x, w, f, down, pads, groups, flip_weight, flip_filter)
    if up > 1 and down == 1:
        return _up_transposed(x, w, f, up, pads, groups, flip_weight, flip_filter)
    if up == 1 and down == 1:
        return _no_resampling(x, w, pads, groups, flip_weight)
    return _generic(x, w, f, up, down, pads, groups, flip_weight, flip_filter)


def _check_args(x, w, f, up, down, groups):
    """Validate the arguments; return (up, down, groups) as Python ints."""
    for name, value in (("up", up), ("down", down), ("groups", groups)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"conv2d_resample: {name}={value!r} must be an integer >= 1")
    if not (hasattr(w, "ndim") and w.ndim == 4):
        raise ValueError(f"conv2d_resample: w must be a 4-D tensor [Cout, Cin/groups, kh, kw], "
                         f"got shape {list(getattr(w, 'shape', []))}")
    if w.shape[0] % groups != 0:
        raise ValueError(f"conv2d_resample: w has {w.shape[0]} output channels, not divisible by "
                         f"groups={groups}; use a groups value that divides it")
    misc.assert_shape(x, [None, w.shape[1] * int(groups), None, None])
    upfirdn2d._get_filter_size(f)  # raises a clear error for a malformed filter
    return int(up), int(down), int(groups)


def _resampling_padding(padding, up, down, fw, fh):
    """Widen [px0, px1, py0, py1] for the resampling filter (the module docstring's rules)."""
    px0, px1, py0, py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    return [px0, px1, py0, py1]


def _correlation_weight(w, flip_weight):
    """w' of the definition: the kernel F.conv2d must correlate with. w: `[Cout, Cin/g, kh, kw]`."""
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        return w.flip([2, 3])
    return w


def _generic(x, w, f, up, down, pads, groups, flip_weight, flip_filter):
    """The definition itself (used for up > 1 together with down > 1)."""
    x = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=pads, gain=up**2, flip_filter=flip_filter)
    x = conv2d_gradfix.conv2d(x, _correlation_weight(w, flip_weight), groups=groups)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x


def _no_resampling(x, w, pads, groups, flip_weight):
    """up = down = 1: f plays no part; a symmetric, non-negative padding goes into conv2d itself."""
    px0, px1, py0, py1 = pads
    w = _correlation_weight(w, flip_weight)
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return conv2d_gradfix.conv2d(x, w, padding=[py0, px0], groups=groups)
    x = upfirdn2d.upfirdn2d(x, None, padding=pads)
    return conv2d_gradfix.conv2d(x, w, groups=groups)


def _down_strided(x, w, f, down, pads, groups, flip_weight, flip_filter):
    """down > 1 (kernel over 1x1): filter at full resolution, then a conv with stride=down.

    Derivation (per axis): the definition is 'valid' filter(conv(pad(x))) sampled at 0, down, ...
    Both 'valid' filtering and 'valid' correlation are shift-invariant and start at offset 0, so
    they commute and filter(pad(x)) followed by conv with stride down gives the same samples; the
    lengths agree as well: ceil((Hp - fh - kh + 2) / down) both ways (Hp = padded height).
    The padding is therefore unchanged: [px0, px1, py0, py1] goes to the filtering upfirdn2d.
    """
    x = upfirdn2d.upfirdn2d(x, f, padding=pads, flip_filter=flip_filter)
    return conv2d_gradfix.conv2d(x, _correlation_weight(w, flip_weight), stride=down, groups=groups)


def _up_transposed(x, w, f, up, pads, groups, flip_weight, flip_filter):
    """up > 1 (kernel over 1x1): transposed conv with stride=up, then filter with gain up**2.

    Derivation (per axis, k = kernel size): the conv and the filter commute, so the definition is
    filter(h) with h = 'valid' correlation of v = pad_{p0,p1}(zero-insert_up(x)) with w'. Writing
    v[up*j + p0] = x[j], h[m] = sum_j x[j] w'[up*j + p0 - m] = T[m + k - 1 - p0], where
    T = conv_transpose(x, flip(w'), stride=up) has length (H - 1) * up + k. So h is T padded by
    p0 - k + 1 in front and (len h) - (len T) - (p0 - k + 1) = p1 + up - k behind, and the
    result is upfirdn2d(T, f, padding=[px0 - kw + 1, px1 + up - kw, py0 - kh + 1, py1 + up - kh],
    gain=up**2). A crop on both sides of an axis is done by the transposed conv's own padding.
    """
    px0, px1, py0, py1 = pads
    cout, cin_per_group, kh, kw = w.shape
    pads = [px0 - kw + 1, px1 + up - kw, py0 - kh + 1, py1 + up - kh]
    crop_x = max(0, min(-pads[0], -pads[1]))
    crop_y = max(0, min(-pads[2], -pads[3]))
    pads = [pads[0] + crop_x, pads[1] + crop_x, pads[2] + crop_y, pads[3] + crop_y]
    # conv_transpose2d wants [Cin, Cout/groups, kh, kw]: swap the channel axes within each group.
    w = w.reshape(groups, cout // groups, cin_per_group, kh, kw).transpose(1, 2)
    w = w.reshape(groups * cin_per_group, cout // groups, kh, kw)
    if flip_weight:
        w = w.flip([2, 3])  # flip(w') with w' = w; for flip_weight=False w' = flip(w), so none
    x = conv2d_gradfix.conv_transpose2d(x, w, stride=up, padding=[crop_y, crop_x], groups=groups)
    return upfirdn2d.upfirdn2d(x, f, padding=pads, gain=up**2, flip_filter=flip_filter)
