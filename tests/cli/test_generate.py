"""generate.py against a toy persistent generator: file names, pixels, labels, projected w."""

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate
import legacy
from dnnlib.cli import parse_int_list
from tests.toy_networks import ToyGenerator


@pytest.fixture
def toy_pkl(tmp_path):
    def make(**kwargs):
        torch.manual_seed(0)
        G = ToyGenerator(**kwargs).eval()
        path = str(tmp_path / "toy.pkl")
        legacy.save_network_pkl(dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=None), path)
        return G, path
    return make


def _run(*args):
    return CliRunner().invoke(generate.generate_images, list(args))


def _expected_pixels(G, seed, label, psi=1.0):
    z = torch.tensor(np.random.RandomState(seed).randn(1, G.z_dim), dtype=torch.float32)
    with torch.no_grad():
        img = G(z, label, truncation_psi=psi)[0]
    # Independent quantisation: x*127.5+128, clip, truncate toward zero.
    return np.clip(img.permute(1, 2, 0).numpy() * 127.5 + 128, 0, 255).astype(np.uint8)


def test_seeds_write_expected_images(toy_pkl, tmp_path):
    G, path = toy_pkl()
    out = tmp_path / "out"
    result = _run("--network", path, "--seeds", "0,3-4", "--trunc", "0.7", "--outdir", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["seed0000.png", "seed0003.png", "seed0004.png"]
    got = np.array(PIL.Image.open(out / "seed0003.png"))
    np.testing.assert_array_equal(got, _expected_pixels(G, 3, torch.zeros(1, 0), psi=0.7))


def test_conditional_network_needs_valid_class(toy_pkl, tmp_path):
    G, path = toy_pkl(c_dim=3)
    out = str(tmp_path / "out")
    assert "--class" in _run("--network", path, "--seeds", "1", "--outdir", out).output
    bad = _run("--network", path, "--seeds", "1", "--class", "3", "--outdir", out)
    assert bad.exit_code == 2 and "outside 0..2" in bad.output
    ok = _run("--network", path, "--seeds", "1", "--class", "2", "--outdir", out)
    assert ok.exit_code == 0, ok.output
    label = torch.tensor([[0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(np.array(PIL.Image.open(tmp_path / "out" / "seed0001.png")),
                                  _expected_pixels(G, 1, label))


def test_projected_w(toy_pkl, tmp_path):
    G, path = toy_pkl()
    ws = np.random.RandomState(5).randn(2, G.synthesis.num_ws, G.w_dim).astype(np.float32)
    np.savez(tmp_path / "w.npz", w=ws)
    result = _run("--network", path, "--projected-w", str(tmp_path / "w.npz"), "--outdir", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(ws[1:2]))[0]
    expected = np.clip(img.permute(1, 2, 0).numpy() * 127.5 + 128, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.array(PIL.Image.open(tmp_path / "o" / "proj01.png")), expected)

    np.savez(tmp_path / "bad.npz", w=ws[:, :2])
    bad = _run("--network", path, "--projected-w", str(tmp_path / "bad.npz"), "--outdir", str(tmp_path / "o"))
    assert bad.exit_code == 2 and "bad.npz" in bad.output


def test_bad_inputs(toy_pkl, tmp_path):
    _, path = toy_pkl()
    assert _run("--network", path, "--outdir", str(tmp_path)).exit_code == 2  # neither seeds nor w
    assert "x1" in _run("--network", path, "--seeds", "x1", "--outdir", str(tmp_path)).output
    missing = _run("--network", str(tmp_path / "none.pkl"), "--seeds", "0", "--outdir", str(tmp_path))
    assert missing.exit_code == 1 and "none.pkl" in missing.output


def test_grayscale_network_writes_l_mode(toy_pkl, tmp_path):
    _, path = toy_pkl(img_channels=1)
    assert _run("--network", path, "--seeds", "0", "--outdir", str(tmp_path / "g")).exit_code == 0
    assert PIL.Image.open(tmp_path / "g" / "seed0000.png").mode == "L"


@pytest.mark.parametrize("text,expected", [("1,2,5", [1, 2, 5]), ("0-3", [0, 1, 2, 3]), ("7, 2-3,", [7, 2, 3])])
def test_parse_int_list(text, expected):
    assert parse_int_list(text) == expected


@pytest.mark.parametrize("text", ["", "a", "5-2", "1-x"])
def test_parse_int_list_errors(text):
    with pytest.raises(ValueError):
        parse_int_list(text)


SHORT_NAMES = ["ffhq256", "ffhq512", "ffhq1024", "celebahq256", "lsundog256"]


@pytest.mark.parametrize("name", SHORT_NAMES)
def test_short_name_resolves_to_official_url(name, monkeypatch, tmp_path):
    from training.train_options import RESUME_URLS
    opened = []

    def fake_open_url(url, *args, **kwargs):
        opened.append(url)
        raise OSError(f"fake download failure for {url}")

    monkeypatch.setattr(legacy.dnnlib.util, "open_url", fake_open_url)
    result = _run("--network", name, "--seeds", "0", "--outdir", str(tmp_path))
    assert opened == [RESUME_URLS[name]]
    assert opened[0].startswith("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/")
    assert result.exit_code == 1 and RESUME_URLS[name] in result.output


def test_short_name_offline_names_url_and_cache_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DNNLIB_OFFLINE", "1")
    url = legacy.pretrained_urls()["ffhq256"]
    result = _run("--network", "ffhq256", "--seeds", "0", "--outdir", str(tmp_path))
    assert result.exit_code == 1
    assert url in result.output and legacy.dnnlib.util.url_cache_path(url) in result.output


def test_local_file_named_like_a_short_name_wins(toy_pkl, tmp_path, monkeypatch):
    G, path = toy_pkl()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ffhq256").write_bytes(open(path, "rb").read())
    result = _run("--network", "ffhq256", "--seeds", "2", "--outdir", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.array(PIL.Image.open(tmp_path / "o" / "seed0002.png")),
                                  _expected_pixels(G, 2, torch.zeros(1, 0)))


def test_bad_device_is_a_one_line_error(toy_pkl, tmp_path):
    _, path = toy_pkl()
    result = _run("--network", path, "--seeds", "0", "--device", "gpu", "--outdir", str(tmp_path / "out"))
    assert result.exit_code == 2 and "'gpu' is not a torch device" in result.output and "--device" in result.output
    assert not (tmp_path / "out").exists()
