"""projector.py with a tiny TorchScript VGG16 stand-in and a tiny generator (no download, no video)."""

import sys
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import generate
import legacy
import projector
from metrics import detectors
from training import networks


class TinyLPIPS(torch.nn.Module):
    """Same call convention as StyleGAN2-ADA's vgg16.pt: img [N, 3, H, W] in 0..255 -> features [N, F]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=3, stride=2)

    def forward(self, img, resize_images: bool = True, return_lpips: bool = False, return_features: bool = False):
        features = torch.nn.functional.leaky_relu(self.conv(img / 127.5 - 1), 0.2).flatten(1)
        if return_lpips:
            features = features / features.square().sum(dim=1, keepdim=True).sqrt()
        return features


@pytest.fixture
def vgg_path(tmp_path):
    path = str(tmp_path / "tiny_vgg16.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated; vgg16.pt is TorchScript
        torch.jit.save(torch.jit.script(TinyLPIPS()), path)
    return path


@pytest.fixture
def tiny(tmp_path, pure_pytorch_ops):
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval()
    path = str(tmp_path / "G.pkl")
    legacy.save_network_pkl(dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=None), path)
    # A target the generator can reach: its own image for seed 7, at twice the size (so it is resized).
    with torch.no_grad():
        z = torch.from_numpy(np.random.RandomState(7).randn(1, 8)).float()
        img = generate.to_uint8_images(G(z, torch.zeros(1, 0), noise_mode="const"))[0]
    target = str(tmp_path / "target.png")
    PIL.Image.fromarray(img).resize((32, 32), PIL.Image.NEAREST).save(target)
    return G, path, target


def test_project_lowers_the_loss_and_leaves_G_alone(tiny, vgg_path):
    G, _, target_path = tiny
    before = {name: t.clone() for name, t in G.state_dict().items()}
    target = torch.tensor(projector.load_target(target_path, 16, 3).transpose(2, 0, 1))
    vgg16 = detectors.get_detector("vgg16", vgg_path)
    ws, losses = projector.project(G, target, vgg16, num_steps=40, w_avg_samples=500)
    assert ws.shape == (40, G.synthesis.num_ws, 8)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert all(torch.equal(before[name], t) for name, t in G.state_dict().items())  # worked on a copy


def test_lr_schedule():
    # Warm-up over the first 5 %, flat, cosine ramp-down over the last 25 %.
    assert projector._lr_schedule(0.0, 0.1) == 0
    assert projector._lr_schedule(0.025, 0.1) == pytest.approx(0.05)
    assert projector._lr_schedule(0.5, 0.1) == pytest.approx(0.1)
    assert projector._lr_schedule(0.875, 0.1) == pytest.approx(0.05)


def test_noise_regularization_by_hand():
    # A checkerboard correlates -1 with its 1-pixel shifts: 2 * (-1)^2 at 8x8, the only scale.
    board = torch.tensor([[(-1.0) ** (i + j) for j in range(8)] for i in range(8)])
    assert float(projector._noise_regularization([board])) == pytest.approx(2.0)
    # At 16x16, the 2x2 average of a checkerboard is 0: the coarser scale adds nothing.
    board16 = torch.tensor([[(-1.0) ** (i + j) for j in range(16)] for i in range(16)])
    assert float(projector._noise_regularization([board16])) == pytest.approx(2.0)


def test_cli_outputs_reproduce_through_generate(tiny, vgg_path, tmp_path):
    G, path, target = tiny
    out = tmp_path / "out"
    result = CliRunner().invoke(projector.run_projection, [
        "--network", path, "--target", target, "--num-steps", "20", "--save-video", "false",
        "--vgg16-path", vgg_path, "--outdir", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["proj.png", "projected_w.npz", "target.png"]
    w = np.load(out / "projected_w.npz")["w"]
    assert w.shape == (1, G.synthesis.num_ws, 8)
    assert (w == w[:, :1]).all()  # one w broadcast to every layer
    assert np.array(PIL.Image.open(out / "target.png")).shape == (16, 16, 3)

    result = CliRunner().invoke(generate.generate_images, ["--network", path, "--projected-w",
                                                           str(out / "projected_w.npz"), "--outdir", str(out / "g")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.array(PIL.Image.open(out / "g" / "proj00.png")),
                                  np.array(PIL.Image.open(out / "proj.png")))


def test_target_is_center_cropped_and_converted(tmp_path):
    # 40x20 RGBA: red | green | blue bands of 10, 20, 10 columns; the center square is all green.
    rgba = np.zeros([20, 40, 4], np.uint8)
    rgba[:, :10, 0] = rgba[:, 10:30, 1] = rgba[:, 30:, 2] = 200
    rgba[..., 3] = 77
    PIL.Image.fromarray(rgba, "RGBA").save(tmp_path / "wide.png")
    got = projector.load_target(str(tmp_path / "wide.png"), 8, 3)
    assert got.shape == (8, 8, 3) and (got == [0, 200, 0]).all()
    PIL.Image.fromarray(np.full([10, 10], 90, np.uint8), "L").save(tmp_path / "grey.png")
    assert (projector.load_target(str(tmp_path / "grey.png"), 4, 3) == 90).all()


def test_bad_inputs(tiny, vgg_path, tmp_path, monkeypatch):
    _, path, target = tiny
    out = str(tmp_path / "out")

    def run(*args):
        return CliRunner().invoke(projector.run_projection, ["--network", path, "--outdir", out, *args])

    missing = run("--target", str(tmp_path / "nope.png"), "--save-video", "false")
    assert missing.exit_code == 2 and "nope.png" in missing.output
    (tmp_path / "bad.png").write_bytes(b"not an image")
    corrupt = run("--target", str(tmp_path / "bad.png"), "--save-video", "false", "--vgg16-path", vgg_path)
    assert corrupt.exit_code == 2 and "bad.png: cannot read the image" in corrupt.output
    # The target is checked before VGG16 is loaded: a bad target wins over a missing VGG16 file.
    both = run("--target", str(tmp_path / "bad.png"), "--save-video", "false", "--vgg16-path", str(tmp_path / "v.pt"))
    assert both.exit_code == 2 and "bad.png: cannot read the image" in both.output and "v.pt" not in both.output
    no_vgg = run("--target", target, "--save-video", "false", "--vgg16-path", str(tmp_path / "vgg.pt"))
    assert no_vgg.exit_code == 1 and "vgg.pt" in no_vgg.output
    monkeypatch.setitem(sys.modules, "imageio", None)  # as if imageio were not installed
    no_video = run("--target", target, "--vgg16-path", vgg_path)
    assert no_video.exit_code == 1
    assert "pip install imageio imageio-ffmpeg, or pass --save-video=false" in no_video.output


def test_offline_vgg16_error_names_url_and_cache(monkeypatch):
    monkeypatch.setenv("DNNLIB_OFFLINE", "1")
    monkeypatch.delenv(detectors.VGG16_ENV, raising=False)
    with pytest.raises(OSError) as info:
        detectors.get_detector("vgg16")
    assert detectors.VGG16_URL in str(info.value)
    assert dnnlib.util.url_cache_path(detectors.VGG16_URL) in str(info.value)


def test_vgg16_path_from_environment(vgg_path, monkeypatch):
    monkeypatch.setenv(detectors.VGG16_ENV, vgg_path)
    vgg16 = detectors.get_detector("vgg16")
    img = torch.full([1, 3, 8, 8], 127.5)
    torch.testing.assert_close(vgg16(img, resize_images=False, return_lpips=True),
                               TinyLPIPS()(img, resize_images=False, return_lpips=True))
