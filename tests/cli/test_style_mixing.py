"""style_mixing.py on a tiny StyleGAN2 generator: mixed pixels, file names, grid layout, errors."""

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import legacy
import style_mixing
from training import networks


@pytest.fixture
def tiny_pkl(tmp_path, pure_pytorch_ops):
    def make(c_dim=0, img_channels=3):
        torch.manual_seed(0)
        G = networks.Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=16, img_channels=img_channels,
                               mapping_kwargs=dict(num_layers=2),
                               synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval()
        path = str(tmp_path / "G.pkl")
        legacy.save_network_pkl(dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=None), path)
        return G, path
    return make


def _run(*args):
    return CliRunner().invoke(style_mixing.generate_style_mix, list(args))


def _expected(G, row_seed, col_seed, styles, psi=1.0, label=None):
    """The mix by hand, one image at a time: row ws with the `styles` layers swapped for the column's."""
    label = torch.zeros(1, 0) if label is None else label

    def ws_of(seed):
        z = torch.tensor(np.random.RandomState(seed).randn(1, G.z_dim), dtype=torch.float32)
        return G.mapping(z, label, truncation_psi=psi)

    with torch.no_grad():
        ws = ws_of(row_seed).clone()
        col_ws = ws_of(col_seed)
        for layer in styles:
            ws[0, layer] = col_ws[0, layer]
        img = G.synthesis(ws, noise_mode="const")[0]
    return np.clip(img.permute(1, 2, 0).numpy() * 127.5 + 128, 0, 255).astype(np.uint8)


def _close(got, expected):
    # Batched and single-image synthesis may round differently: allow one grey level.
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_writes_mixes_sources_and_grid(tiny_pkl, tmp_path):
    G, path = tiny_pkl()
    out = tmp_path / "out"
    result = _run("--network", path, "--rows", "1,2", "--cols", "5-7", "--styles", "0-2", "--trunc", "0.8",
                  "--outdir", str(out))
    assert result.exit_code == 0, result.output
    pairs = [f"{r}-{c}.png" for r in (1, 2) for c in (5, 6, 7)]
    sources = [f"{s}-{s}.png" for s in (1, 2, 5, 6, 7)]
    assert sorted(p.name for p in out.iterdir()) == sorted(pairs + sources + ["grid.png"])
    _close(np.array(PIL.Image.open(out / "2-6.png")), _expected(G, 2, 6, [0, 1, 2], psi=0.8))
    _close(np.array(PIL.Image.open(out / "5-5.png")), _expected(G, 5, 5, [], psi=0.8))
    # Mixing changes the image: the layers taken from the column seed matter.
    assert not np.array_equal(np.array(PIL.Image.open(out / "2-6.png")), np.array(PIL.Image.open(out / "2-2.png")))

    grid = np.array(PIL.Image.open(out / "grid.png"))
    assert grid.shape == (16 * 3, 16 * 4, 3)
    assert (grid[:16, :16] == 0).all()  # empty top-left cell

    def cell(row, col):
        return grid[16 * row:16 * (row + 1), 16 * col:16 * (col + 1)]

    np.testing.assert_array_equal(cell(0, 2), np.array(PIL.Image.open(out / "6-6.png")))  # column sources on top
    np.testing.assert_array_equal(cell(2, 0), np.array(PIL.Image.open(out / "2-2.png")))  # row sources on the left
    np.testing.assert_array_equal(cell(1, 3), np.array(PIL.Image.open(out / "1-7.png")))


def test_conditional_network_uses_class(tiny_pkl, tmp_path):
    G, path = tiny_pkl(c_dim=3)
    out = tmp_path / "out"
    assert "--class" in _run("--network", path, "--rows", "1", "--cols", "2", "--outdir", str(out)).output
    result = _run("--network", path, "--rows", "1", "--cols", "2", "--class", "1", "--outdir", str(out))
    assert result.exit_code == 0, result.output
    label = torch.tensor([[0.0, 1.0, 0.0]])
    # The default --styles=0-6 is cut to the 6 ws of a 16x16 network.
    _close(np.array(PIL.Image.open(out / "1-2.png")), _expected(G, 1, 2, range(6), label=label))


def test_grayscale_grid(tiny_pkl, tmp_path):
    _, path = tiny_pkl(img_channels=1)
    assert _run("--network", path, "--rows", "1", "--cols", "2", "--outdir", str(tmp_path / "g")).exit_code == 0
    grid = PIL.Image.open(tmp_path / "g" / "grid.png")
    assert grid.mode == "L" and grid.size == (32, 32)


def test_bad_inputs(tiny_pkl, tmp_path):
    G, path = tiny_pkl()
    out = str(tmp_path / "out")
    num_ws = G.synthesis.num_ws  # 6 at resolution 16
    bad = _run("--network", path, "--rows", "1", "--cols", "2", "--styles", f"0-{num_ws}", "--outdir", out)
    assert bad.exit_code == 2 and f"layer {num_ws} is outside 0..{num_ws - 1}" in bad.output
    empty = _run("--network", path, "--rows", ",", "--cols", "2", "--outdir", out)
    assert empty.exit_code == 2 and "names no integers" in empty.output
    missing = _run("--network", str(tmp_path / "none.pkl"), "--rows", "1", "--cols", "2", "--outdir", out)
    assert missing.exit_code == 1 and "none.pkl" in missing.output
    assert len(missing.output.strip().splitlines()) == 2  # "Loading ..." and the one-line error
