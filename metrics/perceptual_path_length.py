"""Perceptual path length (Karras et al. 2019): LPIPS change per unit step along latent interpolations.

For a pair of latents and t ~ U(0, 1) ('full') or t = 0 ('end'), images at t and t + eps are
compared with VGG16 LPIPS features; PPL is the mean of distance / eps^2 after dropping the
lowest and highest 1% of samples. Space 'z' interpolates latents with slerp; 'w' maps them first
and interpolates with lerp. `crop` keeps the central face region (the legacy FFHQ variants).
"""

import numpy as np
import torch

from metrics import metric_utils

LPIPS = dict(resize_images=False, return_lpips=True)


def slerp(a, b, t):
    """Spherical interpolation of the directions of a and b `[N, D]` at t `[N, 1]` (unit-length output)."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    cos = (a * b).sum(dim=-1, keepdim=True)
    angle = t * torch.acos(cos.clamp(-1, 1))
    ortho = b - cos * a
    ortho = ortho / ortho.norm(dim=-1, keepdim=True)
    out = a * torch.cos(angle) + ortho * torch.sin(angle)
    return out / out.norm(dim=-1, keepdim=True)


def _latent_pairs(opts, G, count, space, sampling, epsilon, gen):
    """ws `[2 * count, num_ws, w_dim]`: rows 2i and 2i+1 are the path points at t and t + eps."""
    t = torch.rand([count, 1], generator=gen) * (1 if sampling == "full" else 0)
    z0, z1 = torch.randn([count * 2, G.z_dim], generator=gen).chunk(2)
    c = metric_utils.sample_labels(opts, count, gen)
    t, z0, z1 = t.to(opts.device), z0.to(opts.device), z1.to(opts.device)
    if space == "w":
        w0, w1 = G.mapping(torch.cat([z0, z1]), torch.cat([c, c])).chunk(2)
        t = t.unsqueeze(1)
        w_t0, w_t1 = torch.lerp(w0, w1, t), torch.lerp(w0, w1, t + epsilon)
    else:
        z_t0, z_t1 = slerp(z0, z1, t), slerp(z0, z1, t + epsilon)
        w_t0, w_t1 = G.mapping(torch.cat([z_t0, z_t1]), torch.cat([c, c])).chunk(2)
    return torch.stack([w_t0, w_t1], dim=1).flatten(0, 1)


def _to_lpips_input(img, crop):
    """G output `[2N, C, H, W]` in [-1, 1] -> float RGB in [0, 255], face-cropped, then box-downsampled by
    H // 256 (the factor of the FULL image, as the reference: a cropped 1024 image ends at 128 px)."""
    factor = img.shape[2] // 256
    if crop:
        side = img.shape[2] // 8
        img = img[:, :, side * 3:side * 7, side * 2:side * 6]
    if factor > 1:  # box-downsample large images to the resolution LPIPS was calibrated at
        img = img.reshape(img.shape[0], img.shape[1], img.shape[2] // factor, factor,
                          img.shape[3] // factor, factor).mean(dim=[3, 5])
    img = (img + 1) * (255 / 2)
    return img.repeat([1, 3, 1, 1]) if img.shape[1] == 1 else img


def randomize_noise_buffers(G, gen):
    """Refill every `noise_const` buffer of (private copy) G from `gen`, as the reference does per batch:
    both ends of a path share the noise, yet PPL averages over noise rather than one fixed draw."""
    for name, buf in G.named_buffers():
        if name.endswith(".noise_const"):
            buf.copy_(torch.randn(buf.shape, generator=gen).to(buf.device, buf.dtype))


def path_distances(opts, start, stop, batch_index, space, sampling, epsilon, crop):
    """Scaled LPIPS distances `[stop - start]` of one global batch of path samples."""
    G = opts.generator()
    detector = opts.detector("vgg16")
    gen = metric_utils.batch_generator(opts, batch_index)
    with torch.no_grad():
        ws = _latent_pairs(opts, G, stop - start, space, sampling, epsilon, gen)
        randomize_noise_buffers(G, gen)
        img = G.synthesis(ws, noise_mode="const", force_fp32=True)  # fp16 rounding would swamp eps = 1e-4
        lpips = detector(_to_lpips_input(img, crop), **LPIPS)
    lpips_t0, lpips_t1 = lpips[0::2], lpips[1::2]
    return (lpips_t0 - lpips_t1).square().sum(dim=1).to(torch.float32) / epsilon ** 2


def compute_ppl(opts, num_samples, epsilon=1e-4, space="w", sampling="end", crop=False, batch_size=2):
    """PPL of opts.G over `num_samples` path samples (space 'z' | 'w', sampling 'full' | 'end')."""
    if space not in ("z", "w") or sampling not in ("full", "end"):
        raise metric_utils.MetricError(f"PPL: space={space!r}, sampling={sampling!r}; use 'z'/'w' and 'full'/'end'")
    plan = metric_utils.batch_plan(int(num_samples), batch_size)
    rows = []
    with metric_utils.progress_bar(opts, int(num_samples), "ppl samples") as bar:
        for batch_index in range(opts.rank, len(plan), opts.num_gpus):
            start, stop = plan[batch_index]
            rows.append(path_distances(opts, start, stop, batch_index, space, sampling, epsilon, crop))
            bar.update(min((stop - start) * opts.num_gpus, int(num_samples) - bar.n))
    local = torch.cat(rows) if rows else torch.zeros([0], device=opts.device)
    dist = metric_utils.gather_rows(local, plan, opts).cpu().numpy().astype(np.float64)
    # Drop the 1% tails: a few near-singular spots of G would otherwise dominate the mean.
    lo = np.percentile(dist, 1, method="lower")
    hi = np.percentile(dist, 99, method="higher")
    return float(dist[(dist >= lo) & (dist <= hi)].mean())
