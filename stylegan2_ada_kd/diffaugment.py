"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

One random differentiable transform is drawn per sample and per call and applied to every image
D sees, real and fake, in both the D and the G updates, so gradients pass through it into G.
Policies (METHOD.md 6.1), always applied in this order whatever the order in the policy string:

    color        brightness b ~ U(-0.5, 0.5) added; each pixel's deviation from its own mean over
                 the channels scaled by U(0, 2) (saturation); the deviation from the image mean
                 scaled by U(0.5, 1.5) (contrast)
    translation  integer shift in x and y, each uniform in [-floor(r * size + 0.5), +floor(r * size + 0.5)]
                 (r = 1/8, size = W for x and H for y), zero fill
    cutout       one rectangle of floor(0.5 * W + 0.5) x floor(0.5 * H + 0.5) pixels set to 0, at a
                 uniform random centre, clipped at the borders

`diff_augment(x, policy)` is the function; `DiffAugment(policy)` wraps it as a module that the
training loop calls like ADA's `AugmentPipe` (forward(images) -> images). It is a persistent class,
so a snapshot holding it stays loadable wherever `torch_utils` is importable; keep this module
self-contained (torch and torch_utils.persistence only).
"""

import torch

from torch_utils import persistence

POLICIES = ("color", "translation", "cutout")  # the canonical order of application
DEFAULT_POLICY = "color,translation,cutout"
TRANSLATION_RATIO = 1 / 8  # max shift, fraction of the image size
CUTOUT_RATIO = 0.5  # side of the cut square, fraction of the image size

# ----------------------------------------------------------------------------
# Policy strings.


def parse_policy(policy):
    """'color,translation' -> ('color', 'translation') in canonical order; '' or None -> ()."""
    if policy is None:
        return ()
    if not isinstance(policy, str):
        raise TypeError(f"DiffAugment policy must be a comma-separated string, got {type(policy).__name__}")
    names = [name.strip() for name in policy.split(",") if name.strip()]
    unknown = sorted(set(names) - set(POLICIES))
    if unknown:
        raise ValueError(f"DiffAugment policy {policy!r}: unknown {', '.join(unknown)}; "
                         f"use a comma list of {', '.join(POLICIES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"DiffAugment policy {policy!r} names a transform twice; list each once")
    return tuple(name for name in POLICIES if name in names)


# ----------------------------------------------------------------------------
# color


def draw_color(num, device=None):
    """Per-sample colour factors: (brightness [N] in [-0.5, 0.5), saturation [N] in [0, 2),
    contrast [N] in [0.5, 1.5))."""
    brightness = torch.rand([num], device=device) - 0.5
    saturation = torch.rand([num], device=device) * 2
    contrast = torch.rand([num], device=device) + 0.5
    return brightness, saturation, contrast


def apply_color(x, brightness, saturation, contrast):
    """x [N, C, H, W]; factors [N] each -> [N, C, H, W]: add brightness, then scale the deviation
    from the per-pixel channel mean (saturation), then from the per-image mean (contrast)."""
    x = x + brightness[:, None, None, None].to(x.dtype)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * saturation[:, None, None, None].to(x.dtype) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * contrast[:, None, None, None].to(x.dtype) + mean


# ----------------------------------------------------------------------------
# translation


def max_shift(size, ratio=TRANSLATION_RATIO):
    """Largest shift in pixels along an axis of `size` pixels: floor(ratio * size + 0.5)."""
    return int(size * ratio + 0.5)


def draw_translation(num, height, width, ratio=TRANSLATION_RATIO, device=None):
    """[N, 2] int64 shifts (x, y), each uniform in [-max_shift, +max_shift] of its axis."""
    sx, sy = max_shift(width, ratio), max_shift(height, ratio)
    tx = torch.randint(-sx, sx + 1, [num], device=device)
    ty = torch.randint(-sy, sy + 1, [num], device=device)
    return torch.stack([tx, ty], dim=1)


def apply_translation(x, shifts):
    """x [N, C, H, W] moved by shifts [N, 2] (x, y) pixels: out[y, x] = in[y - ty, x - tx], 0 outside."""
    n, c, h, w = x.shape
    shifts = shifts.to(x.device)
    src_x = torch.arange(w, device=x.device)[None, None, :] - shifts[:, 0, None, None]
    src_y = torch.arange(h, device=x.device)[None, :, None] - shifts[:, 1, None, None]
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)  # [N, H, W]
    index = src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)
    index = index.reshape(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
    return out * inside[:, None].to(x.dtype)


# ----------------------------------------------------------------------------
# cutout


def cutout_size(size, ratio=CUTOUT_RATIO):
    """Side of the cut along an axis of `size` pixels: floor(ratio * size + 0.5)."""
    return int(size * ratio + 0.5)


def draw_cutout(num, height, width, ratio=CUTOUT_RATIO, device=None):
    """[N, 2] int64 centres (x, y) of the cut.

    An odd side s is centred on a pixel (centre in 0..size-1), an even side on a pixel corner
    (centre in 0..size), so every centre is equally likely and the cut is symmetric in distribution.
    """
    sx, sy = cutout_size(width, ratio), cutout_size(height, ratio)
    cx = torch.randint(0, width + 1 - sx % 2, [num], device=device)
    cy = torch.randint(0, height + 1 - sy % 2, [num], device=device)
    return torch.stack([cx, cy], dim=1)


def apply_cutout(x, centres, ratio=CUTOUT_RATIO):
    """x [N, C, H, W] with pixels [c - s // 2, c - s // 2 + s) in x and y set to 0, centres [N, 2]."""
    _, _, h, w = x.shape
    sx, sy = cutout_size(w, ratio), cutout_size(h, ratio)
    centres = centres.to(x.device)
    x0 = (centres[:, 0] - sx // 2)[:, None, None]
    y0 = (centres[:, 1] - sy // 2)[:, None, None]
    px = torch.arange(w, device=x.device)[None, None, :]
    py = torch.arange(h, device=x.device)[None, :, None]
    cut = (px >= x0) & (px < x0 + sx) & (py >= y0) & (py < y0 + sy)  # [N, H, W]
    return x * (~cut)[:, None].to(x.dtype)


# ----------------------------------------------------------------------------
# The policy as a whole.


def diff_augment(x, policy=DEFAULT_POLICY, channels_first=True,
                 translation_ratio=TRANSLATION_RATIO, cutout_ratio=CUTOUT_RATIO):
    """Apply `policy` to a batch with fresh per-sample draws; differentiable w.r.t. x (any order).

    x: [N, C, H, W] (channels_first) or [N, H, W, C], floating point.
    Returns a tensor of the same shape, layout and dtype.
    """
    names = parse_policy(policy)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError("diff_augment: x must be a float tensor [N, C, H, W] (or [N, H, W, C] with "
                         f"channels_first=False), got {type(x).__name__} {list(getattr(x, 'shape', []))}")
    if not names:
        return x
    if not channels_first:
        x = x.permute(0, 3, 1, 2)
    n, _, h, w = x.shape
    if "color" in names:
        x = apply_color(x, *draw_color(n, x.device))
    if "translation" in names:
        x = apply_translation(x, draw_translation(n, h, w, translation_ratio, x.device))
    if "cutout" in names:
        x = apply_cutout(x, draw_cutout(n, h, w, cutout_ratio, x.device), cutout_ratio)
    if not channels_first:
        x = x.permute(0, 2, 3, 1)
    return x


@persistence.persistent_class
class DiffAugment(torch.nn.Module):
    """DiffAugment as an augment stage: forward(images [N, C, H, W]) -> [N, C, H, W].

    Drop-in for the training loop's `augment_pipe`: no adaptive probability (every image is
    augmented); `p` reads as a constant 1 so progress reports still work, and is not adjustable.
    """

    def __init__(self,
        policy=DEFAULT_POLICY,                  # comma list of color, translation, cutout ('' = identity)
        translation_ratio=TRANSLATION_RATIO,    # max shift, fraction of the image size
        cutout_ratio=CUTOUT_RATIO,              # side of the cut square, fraction of the image size
    ):
        super().__init__()
        self.policy = ",".join(parse_policy(policy))
        self.translation_ratio = float(translation_ratio)
        self.cutout_ratio = float(cutout_ratio)

    @property
    def p(self):
        """Constant 1 (scalar float32): DiffAugment augments every image."""
        return torch.ones([])

    def forward(self, images, debug_percentile=None):
        """images [N, C, H, W] -> augmented [N, C, H, W]; debug_percentile is not supported."""
        if debug_percentile is not None:
            raise ValueError("DiffAugment has no debug_percentile mode; call it with images only")
        return diff_augment(images, self.policy, translation_ratio=self.translation_ratio,
                            cutout_ratio=self.cutout_ratio)

    def extra_repr(self):
        return f"policy={self.policy!r}"
