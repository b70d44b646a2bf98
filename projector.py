"""Project an image into the W space of a generator (optimise one w, broadcast to all layers).

\b
python projector.py --network=network-snapshot-000100.pkl --target=face.png --outdir=out
python projector.py --network=ffhq256 --target=face.png --num-steps=500 --save-video=false --outdir=out

Writes target.png (the cropped, resized target), proj.png (the projection), projected_w.npz
(`w` [1, num_ws, w_dim]; render it with `generate.py --projected-w`) and, with --save-video,
proj.mp4 (target | projection per step, 10 fps; needs `pip install imageio imageio-ffmpeg`).

The distance is the LPIPS-style distance of StyleGAN2-ADA's VGG16 TorchScript model (downloaded
once into the dnnlib cache; offline, pass --vgg16-path or set $SG2KD_VGG16_PATH to a local copy).
"""

import copy
import os

import click
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from generate import load_G_ema, make_label, save_image, to_uint8_images
from metrics import detectors


def load_target(path: str, resolution: int, channels: int) -> np.ndarray:
    """Image file -> uint8 [resolution, resolution, channels]: center crop to a square, Lanczos resize."""
    try:
        with PIL.Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"{path}: cannot read the image ({e})", param_hint="--target")
    width, height = img.size
    side = min(width, height)
    img = img.crop(((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2))
    img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
    return np.array(img, dtype=np.uint8).reshape(resolution, resolution, channels)


def _vgg_input(img: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in 0..255 -> [N, 3, <=256, <=256]: grey repeated to RGB, area-downsampled above 256."""
    if img.shape[1] == 1:
        img = img.repeat(1, 3, 1, 1)
    if img.shape[2] > 256:
        img = F.interpolate(img, size=(256, 256), mode="area")
    return img


def _lr_schedule(t: float, initial_lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """Learning rate at progress t in [0, 1): linear warm-up, cosine ramp-down over the last `rampdown`."""
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * np.cos(ramp * np.pi)
    return initial_lr * ramp * min(1.0, t / rampup)


def _noise_regularization(noise_bufs) -> torch.Tensor:
    """Sum over buffers and scales (halved down to 8x8) of the squared 1-pixel autocorrelations."""
    reg = 0.0
    for buf in noise_bufs:
        noise = buf[None, None, :, :]  # [1, 1, R, R]
        while True:
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=3)).mean() ** 2
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=2)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return reg


def _w_stats(G, num_samples: int, label: torch.Tensor):
    """(w_avg [1, 1, w_dim], w_std scalar) of `num_samples` mapped z (fixed seed 123)."""
    z = torch.from_numpy(np.random.RandomState(123).randn(num_samples, G.z_dim)).to(label.device, torch.float32)
    with torch.no_grad():
        w = G.mapping(z, label.repeat(num_samples, 1))[:, :1, :]  # [N, 1, w_dim]
    w_avg = w.mean(dim=0, keepdim=True)
    w_std = float((w - w_avg).square().sum() / num_samples) ** 0.5
    return w_avg, w_std


def project(
    G,                              # generator (not modified: the projection works on a copy)
    target: torch.Tensor,           # target image [C, H, W], uint8 values 0..255, H = W = G.img_resolution
    vgg16,                          # LPIPS feature network (metrics.detectors.get_detector('vgg16'))
    num_steps=1000,                 # optimisation steps
    w_avg_samples=10000,            # mapped samples for w_avg and w_std
    initial_learning_rate=0.1,      # peak Adam learning rate
    initial_noise_factor=0.05,      # std of the noise added to w at step 0, in units of w_std
    noise_ramp_length=0.75,         # fraction of the steps over which the w noise decays to 0
    regularize_noise_weight=1e5,    # weight of the noise-buffer autocorrelation penalty
    label=None,                     # [1, c_dim] label for conditional G; None = unconditional
    progress=None,                  # callable(step, dist, loss) or None
):
    """Optimise w (and G's noise buffers) so that G.synthesis(w) matches `target`.

    Returns (ws [num_steps, num_ws, w_dim]: the w after each step broadcast to all layers,
    losses [num_steps]: the total loss of each step).
    """
    G = copy.deepcopy(G).eval().requires_grad_(False)
    device = target.device
    label = label if label is not None else torch.zeros([1, G.c_dim], device=device)
    w_avg, w_std = _w_stats(G, w_avg_samples, label)
    noise_bufs = [buf for name, buf in G.synthesis.named_buffers() if "noise_const" in name]

    with torch.no_grad():
        target_features = vgg16(_vgg_input(target.unsqueeze(0).to(torch.float32)), resize_images=False,
                                return_lpips=True)
    w_opt = w_avg.clone().requires_grad_(True)  # [1, 1, w_dim]
    optimizer = torch.optim.Adam([w_opt] + noise_bufs, betas=(0.9, 0.999), lr=initial_learning_rate)
    with torch.no_grad():
        for buf in noise_bufs:
            buf.normal_()
    for buf in noise_bufs:
        buf.requires_grad_(True)

    ws_out, losses = [], []
    for step in range(num_steps):
        t = step / num_steps
        w_noise_scale = w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2
        for group in optimizer.param_groups:
            group["lr"] = _lr_schedule(t, initial_learning_rate)

        ws = (w_opt + torch.randn_like(w_opt) * w_noise_scale).repeat(1, G.synthesis.num_ws, 1)
        synth = (G.synthesis(ws, noise_mode="const") + 1) * (255 / 2)
        synth_features = vgg16(_vgg_input(synth), resize_images=False, return_lpips=True)
        dist = (target_features - synth_features).square().sum()
        loss = dist + _noise_regularization(noise_bufs) * regularize_noise_weight
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        dist, loss = float(dist.detach()), float(loss.detach())
        if progress is not None:
            progress(step, dist, loss)
        ws_out.append(w_opt.detach()[0].repeat(G.synthesis.num_ws, 1))
        losses.append(loss)
        with torch.no_grad():  # keep the noise maps zero-mean, unit-variance
            for buf in noise_bufs:
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()
    return torch.stack(ws_out), losses


def _check_video_support():
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise click.ClickException("--save-video needs imageio and imageio-ffmpeg: pip install imageio "
                                   "imageio-ffmpeg, or pass --save-video=false") from None


def _save_video(path, G, target_uint8, projected_ws):
    import imageio
    with imageio.get_writer(path, mode="I", fps=10, codec="libx264", bitrate="16M") as video:
        for w in projected_ws:
            with torch.no_grad():
                synth = to_uint8_images(G.synthesis(w.unsqueeze(0), noise_mode="const"))[0]
            frame = np.concatenate([target_uint8, synth], axis=1)
            video.append_data(np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame)


@click.command()
@click.option("--network", "network_pkl", required=True, help="Network pickle: path, URL or short name (ffhq256, ...)")
@click.option("--target", "target_fname", type=click.Path(exists=True, dir_okay=False), required=True, metavar="FILE",
              help="Target image file to project (center-cropped and resized to the network's resolution)")
@click.option("--num-steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Optimisation steps")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=303, show_default=True, help="Random seed")
@click.option("--save-video", type=bool, default=True, show_default=True, help="Write proj.mp4 of the optimisation")
@click.option("--class", "class_idx", type=click.IntRange(min=0), help="Class index (conditional networks)")
@click.option("--vgg16-path", default=None, metavar="PATH",
              help=f"VGG16 TorchScript file or URL [default: ${detectors.VGG16_ENV}, else the official URL]")
@click.option("--outdir", type=click.Path(file_okay=False), required=True, help="Where to save the outputs")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu]")
def run_projection(network_pkl, target_fname, num_steps, seed, save_video, class_idx, vgg16_path, outdir, device):
    """Project an image into W space; write target.png, proj.png, projected_w.npz (and proj.mp4)."""
    if save_video:
        _check_video_support()
    np.random.seed(seed)
    torch.manual_seed(seed)
    G, device = load_G_ema(network_pkl, device)
    label = make_label(G, class_idx, device)
    target_uint8 = load_target(target_fname, G.img_resolution, G.img_channels)  # before the (large) VGG16 load
    try:
        vgg16 = detectors.get_detector("vgg16", vgg16_path, device)
    except OSError as e:
        raise click.ClickException(str(e)) from None

    def progress(step, dist, loss):
        if step % 100 == 0 or step == num_steps - 1:
            click.echo(f"step {step + 1:>4d}/{num_steps}: dist {dist:<8.2f} loss {loss:<8.2f}")

    target = torch.tensor(target_uint8.transpose(2, 0, 1), device=device)
    projected_ws, _ = project(G, target, vgg16, num_steps=num_steps, label=label, progress=progress)

    os.makedirs(outdir, exist_ok=True)
    if save_video:
        click.echo(f"Saving optimisation progress video {outdir}/proj.mp4")
        _save_video(os.path.join(outdir, "proj.mp4"), G, target_uint8, projected_ws)
    save_image(target_uint8, os.path.join(outdir, "target.png"))
    with torch.no_grad():
        proj = G.synthesis(projected_ws[-1].unsqueeze(0), noise_mode="const")
    save_image(to_uint8_images(proj)[0], os.path.join(outdir, "proj.png"))
    np.savez(os.path.join(outdir, "projected_w.npz"), w=projected_ws[-1].unsqueeze(0).cpu().numpy())


if __name__ == "__main__":
    run_projection()  # pylint: disable=no-value-parameter
