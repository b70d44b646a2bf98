"""Style mixing: the ws of column seeds replace those of row seeds at the chosen layers.

\b
python style_mixing.py --network=network-snapshot-000100.pkl --rows=85,100,75 --cols=55,821,1789 --outdir=out
python style_mixing.py --network=ffhq256 --rows=0-3 --cols=10-13 --styles=0-3 --trunc=0.7 --outdir=out

Writes `{row}-{col}.png` for every pair, `{seed}-{seed}.png` for every source seed, and `grid.png`
(top row: an empty cell, then the column sources; left column: the row sources).
"""

import os

import click
import numpy as np
import PIL.Image
import torch

from generate import int_list, load_G_ema, make_label, save_image, seed_list, to_uint8_images


def check_styles(col_styles, num_ws: int):
    """Raise click.BadParameter unless every style index is in 0..num_ws-1."""
    bad = [idx for idx in col_styles if not 0 <= idx < num_ws]
    if bad:
        raise click.BadParameter(f"layer {bad[0]} is outside 0..{num_ws - 1} (this network has {num_ws} ws); "
                                 f"pass e.g. --styles=0-{min(6, num_ws - 1)}", param_hint="--styles")


def mix_styles(G, row_seeds, col_seeds, col_styles, label, truncation_psi=1, noise_mode="const"):
    """{(row_seed, col_seed): uint8 [H, W, C]} for every pair, plus (seed, seed) for each source seed.

    ws [num_ws, w_dim] of a mix = the row seed's ws with the layers `col_styles` taken from the column seed.
    """
    device = label.device
    all_seeds = list(dict.fromkeys(row_seeds + col_seeds))
    z = np.stack([np.random.RandomState(seed).randn(G.z_dim) for seed in all_seeds])
    z = torch.from_numpy(z).to(device, torch.float32)
    with torch.no_grad():
        ws = G.mapping(z, label.repeat(len(all_seeds), 1), truncation_psi=truncation_psi)  # [S, num_ws, w_dim]
        w_of = dict(zip(all_seeds, ws))
        images = {}
        source_imgs = to_uint8_images(G.synthesis(ws, noise_mode=noise_mode))
        for seed, img in zip(all_seeds, source_imgs):
            images[(seed, seed)] = img
        for row_seed in row_seeds:
            mixed = w_of[row_seed].unsqueeze(0).repeat(len(col_seeds), 1, 1)  # [cols, num_ws, w_dim]
            for col_idx, col_seed in enumerate(col_seeds):
                mixed[col_idx, col_styles] = w_of[col_seed][col_styles]
            for col_seed, img in zip(col_seeds, to_uint8_images(G.synthesis(mixed, noise_mode=noise_mode))):
                images[(row_seed, col_seed)] = img
    return images


def make_grid(images, row_seeds, col_seeds) -> PIL.Image.Image:
    """Grid of (len(rows)+1) x (len(cols)+1) cells; the top-left cell stays black."""
    height, width, channels = images[(row_seeds[0], row_seeds[0])].shape
    mode = "L" if channels == 1 else "RGB"
    canvas = PIL.Image.new(mode, (width * (len(col_seeds) + 1), height * (len(row_seeds) + 1)), "black")

    def paste(img, row_idx, col_idx):
        cell = PIL.Image.fromarray(img[:, :, 0] if mode == "L" else img, mode)
        canvas.paste(cell, (width * col_idx, height * row_idx))

    for col_idx, col_seed in enumerate(col_seeds):
        paste(images[(col_seed, col_seed)], 0, col_idx + 1)
    for row_idx, row_seed in enumerate(row_seeds):
        paste(images[(row_seed, row_seed)], row_idx + 1, 0)
        for col_idx, col_seed in enumerate(col_seeds):
            paste(images[(row_seed, col_seed)], row_idx + 1, col_idx + 1)
    return canvas


@click.command()
@click.option("--network", "network_pkl", required=True, help="Network pickle: path, URL or short name (ffhq256, ...)")
@click.option("--rows", "row_seeds", callback=seed_list, required=True, help="Row seeds, e.g. 85,100 or 0-3")
@click.option("--cols", "col_seeds", callback=seed_list, required=True, help="Column seeds, e.g. 55,821 or 10-13")
@click.option("--styles", "col_styles", callback=int_list, default="0-6", show_default=True,
              help="Layers (ws) taken from the column seed; the default is cut to the network's ws")
@click.option("--trunc", "truncation_psi", type=float, default=1, show_default=True, help="Truncation psi")
@click.option("--class", "class_idx", type=click.IntRange(min=0), help="Class index (conditional networks)")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--outdir", type=click.Path(file_okay=False), required=True, help="Where to save the images")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu]")
def generate_style_mix(network_pkl, row_seeds, col_seeds, col_styles, truncation_psi, class_idx, noise_mode,
                       outdir, device):
    """Style-mixing grid of row seeds x column seeds (uses G_ema)."""
    G, device = load_G_ema(network_pkl, device)
    num_ws = G.synthesis.num_ws
    if click.get_current_context().get_parameter_source("col_styles") == click.core.ParameterSource.DEFAULT:
        # The default 0-6 assumes >= 7 ws; small networks (resolution < 32) mix what they have.
        col_styles = [idx for idx in col_styles if idx < num_ws]
    check_styles(col_styles, num_ws)
    label = make_label(G, class_idx, device)
    os.makedirs(outdir, exist_ok=True)

    click.echo(f"Mixing {len(row_seeds)} x {len(col_seeds)} images ...")
    images = mix_styles(G, row_seeds, col_seeds, col_styles, label, truncation_psi, noise_mode)
    for (row_seed, col_seed), img in images.items():
        save_image(img, os.path.join(outdir, f"{row_seed}-{col_seed}.png"))
    make_grid(images, row_seeds, col_seeds).save(os.path.join(outdir, "grid.png"))
    click.echo(f"Wrote {len(images)} images and grid.png to {outdir}")


if __name__ == "__main__":
    generate_style_mix()  # pylint: disable=no-value-parameter
