"""Generate images with a trained network pickle.

\b
python generate.py --network=network-snapshot-000100.pkl --seeds=0-7 --outdir=out
python generate.py --network=G.pkl --projected-w=projected_w.npz --outdir=out
python generate.py --network=ffhq256 --seeds=0-3 --trunc=0.7 --outdir=out
"""

import os

import click
import numpy as np
import PIL.Image
import torch

import legacy
from dnnlib.cli import parse_int_list, parse_seed_list


def click_list(parse):
    """A click callback applying `parse` (text -> list) to the option's value; ValueError -> BadParameter."""
    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return callback


seed_list, int_list = click_list(parse_seed_list), click_list(parse_int_list)


def load_G_ema(network_pkl: str, device=None):
    """(G_ema on the device, torch.device) from a pickle path, URL or short name; one-line ClickException."""
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise click.BadParameter(f"{device!r} is not a torch device; use cpu, cuda or cuda:N",
                                 param_hint="'--device'") from None
    click.echo(f'Loading networks from "{network_pkl}"...')
    try:
        return legacy.load_network_pkl_from(network_pkl)["G_ema"].to(device), device
    except (OSError, legacy.NetworkPickleError) as e:
        raise click.ClickException(str(e)) from None


def to_uint8_images(img: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] float in [-1, 1] -> [N, H, W, C] uint8, rounding as StyleGAN2-ADA's tools do."""
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()


def save_image(array_hwc: np.ndarray, path: str) -> None:
    """Write one [H, W, C] uint8 image (C = 1 or 3) as PNG."""
    mode = "L" if array_hwc.shape[2] == 1 else "RGB"
    PIL.Image.fromarray(array_hwc[:, :, 0] if mode == "L" else array_hwc, mode).save(path)


def make_label(G, class_idx, device) -> torch.Tensor:
    """One-hot [1, c_dim] label for conditional G; an empty [1, 0] label otherwise."""
    label = torch.zeros([1, G.c_dim], device=device)
    if G.c_dim == 0:
        if class_idx is not None:
            click.echo("warning: --class is ignored for an unconditional network", err=True)
        return label
    if class_idx is None:
        raise click.UsageError(f"this network is conditional ({G.c_dim} classes): pass --class=0..{G.c_dim - 1}")
    if not 0 <= class_idx < G.c_dim:
        raise click.BadParameter(f"{class_idx} is outside 0..{G.c_dim - 1}", param_hint="--class")
    label[:, class_idx] = 1
    return label


def load_projected_ws(path: str, G, device) -> torch.Tensor:
    """Read `w` [N, num_ws, w_dim] from an npz written by projector.py."""
    try:
        ws = np.load(path)["w"]
    except (OSError, KeyError, ValueError) as e:
        raise click.BadParameter(f"{path}: cannot read array 'w' ({e})", param_hint="--projected-w")
    expected = (G.synthesis.num_ws, G.w_dim)
    if ws.ndim != 3 or tuple(ws.shape[1:]) != expected:
        raise click.BadParameter(f"{path}: w has shape {ws.shape}, this network needs [N, {expected[0]}, "
                                 f"{expected[1]}]", param_hint="--projected-w")
    return torch.tensor(ws, device=device)


@click.command()
@click.option("--network", "network_pkl", required=True,
              help="Network pickle: path, URL or pretrained short name (ffhq256, ffhq512, ffhq1024, celebahq256, "
                   "lsundog256)")
@click.option("--seeds", callback=seed_list, help="List of seeds, e.g. 1,2,5 or 0-35")
@click.option("--trunc", "truncation_psi", type=float, default=1, show_default=True, help="Truncation psi")
@click.option("--class", "class_idx", type=click.IntRange(min=0), help="Class index (conditional networks)")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--projected-w", type=click.Path(exists=True, dir_okay=False), help="npz of projected w; seeds ignored")
@click.option("--outdir", type=click.Path(file_okay=False), required=True, help="Where to save the images")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu]")
def generate_images(network_pkl, seeds, truncation_psi, class_idx, noise_mode, projected_w, outdir, device):
    """Generate images with a trained network (uses G_ema)."""
    G, device = load_G_ema(network_pkl, device)
    os.makedirs(outdir, exist_ok=True)

    if projected_w is not None:
        if seeds is not None:
            click.echo("warning: --seeds is ignored when --projected-w is given", err=True)
        ws = load_projected_ws(projected_w, G, device)
        for idx, w in enumerate(ws):
            with torch.no_grad():
                img = G.synthesis(w.unsqueeze(0), noise_mode=noise_mode)
            save_image(to_uint8_images(img)[0], os.path.join(outdir, f"proj{idx:02d}.png"))
        return

    if seeds is None:
        raise click.UsageError("pass --seeds (e.g. --seeds=0-7) or --projected-w")
    label = make_label(G, class_idx, device)
    for seed_idx, seed in enumerate(seeds):
        click.echo(f"Generating image for seed {seed} ({seed_idx + 1}/{len(seeds)}) ...")
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(device, torch.float32)
        with torch.no_grad():
            img = G(z, label, truncation_psi=truncation_psi, noise_mode=noise_mode)
        save_image(to_uint8_images(img)[0], os.path.join(outdir, f"seed{seed:04d}.png"))


if __name__ == "__main__":
    generate_images()  # pylint: disable=no-value-parameter
