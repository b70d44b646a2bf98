"""calc_metrics.py on a tiny real Generator pickle: run-dir reporting, data defaults, one-line errors, --gpus=2."""

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

import calc_metrics
import dnnlib
import legacy
from metrics import metric_main
from tests.metrics.test_metrics_pipeline import make_images
from tests.metrics.toy_detectors import ToyDetector, save_detector
from training.networks import Generator

pytestmark = pytest.mark.usefixtures("pure_pytorch_ops")


def tiny_generator(res=8):
    torch.manual_seed(0)
    return Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=res, img_channels=3,
                     mapping_kwargs=dict(num_layers=2),
                     synthesis_kwargs=dict(channel_base=64, channel_max=8, num_fp16_res=0, conv_clamp=None)).eval()


@pytest.fixture
def setup(tmp_path):
    """(run_dir, pickle path, dataset path, detector path) with the pickle inside a run directory."""
    data, _ = make_images(tmp_path / "data", 16)
    run_dir = tmp_path / "00000-data"
    run_dir.mkdir()
    (run_dir / "training_options.json").write_text("{}")
    kwargs = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=data, use_labels=False,
                             max_size=16, xflip=False, resolution=8, random_seed=0)
    G = tiny_generator()
    pkl = str(run_dir / "network-snapshot-000000.pkl")
    legacy.save_network_pkl(dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=kwargs), pkl)
    detector = save_detector(ToyDetector(), tmp_path / "toy.pt")
    return run_dir, pkl, data, detector


def _run(*args):
    return CliRunner().invoke(calc_metrics.calc_metrics, list(args))


def _json_lines(output):
    # CliRunner mixes the progress bars (stderr, '\r'-separated) into the output.
    pieces = [piece.strip() for line in output.splitlines() for piece in line.split("\r")]
    return [json.loads(piece) for piece in pieces if piece.startswith("{")]


def test_results_are_printed_and_appended_to_the_run(setup):
    run_dir, pkl, data, detector = setup
    result = _run("--network", pkl, "--metrics", "fid1k_full,is1k", "--detector-path", detector, "--verbose", "false")
    assert result.exit_code == 0, result.output
    printed = _json_lines(result.output)
    assert [line["metric"] for line in printed] == ["fid1k_full", "is1k"]
    stored = json.loads((run_dir / "metric-fid1k_full.jsonl").read_text())
    assert stored == printed[0] and stored["snapshot_pkl"] == "network-snapshot-000000.pkl"
    assert set(json.loads((run_dir / "metric-is1k.jsonl").read_text())["results"]) == {"is1k_mean", "is1k_std"}
    # The CLI took the data from the pickle and used G_ema: the library call gives the same number.
    direct = metric_main.calc_metric("fid1k_full", G=tiny_generator(), dataset_kwargs=dict(
        class_name="training.dataset.ImageFolderDataset", path=data), detector_path=detector, device="cpu")
    assert stored["results"]["fid1k_full"] == pytest.approx(direct.results.fid1k_full, rel=1e-6)


def test_outside_a_run_dir_results_are_only_printed(setup, tmp_path):
    _, pkl, data, detector = setup
    lone = tmp_path / "lone.pkl"
    lone.write_bytes(open(pkl, "rb").read())
    result = _run("--network", str(lone), "--metrics", "fid1k", "--data", data, "--detector-path", detector)
    assert result.exit_code == 0, result.output
    assert _json_lines(result.output)[0]["results"]["fid1k"] > 0
    assert not [name for name in os.listdir(tmp_path) if name.startswith("metric-")]


def test_two_processes_give_the_one_process_result(setup):
    run_dir, pkl, _, detector = setup
    result = _run("--network", pkl, "--metrics", "fid1k_full", "--gpus", "2", "--device", "cpu",
                  "--detector-path", detector, "--verbose", "false")
    assert result.exit_code == 0, result.output
    two = json.loads((run_dir / "metric-fid1k_full.jsonl").read_text())
    assert two["num_gpus"] == 2
    one = _run("--network", pkl, "--metrics", "fid1k_full", "--detector-path", detector, "--verbose", "false")
    assert _json_lines(one.output)[0]["results"]["fid1k_full"] == pytest.approx(two["results"]["fid1k_full"],
                                                                                   rel=1e-5)


def _one_line_error(result, code, pattern):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("Error:") and pattern in lines[-1], result.output
    assert "Traceback" not in result.output and sum(line.startswith("Error:") for line in lines) == 1


def test_one_line_errors(setup, tmp_path, monkeypatch):
    _, pkl, data, detector = setup
    _one_line_error(_run("--network", str(tmp_path / "missing.pkl")), 1, "no such file")
    _one_line_error(_run("--network", pkl, "--metrics", "fid50q"), 2, "unknown metric 'fid50q'")
    _one_line_error(_run("--network", pkl, "--data", str(tmp_path / "nowhere"), "--detector-path", detector,
                         "--verbose", "false"), 1, "nowhere")
    data16, _ = make_images(tmp_path / "data16", 4, res=16)
    _one_line_error(_run("--network", pkl, "--metric-data", data16, "--detector-path", detector, "--verbose",
                         "false"), 1, "16x16 but the network makes 8x8")
    bare = tmp_path / "bare.pkl"
    G = tiny_generator()
    legacy.save_network_pkl(dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=None), str(bare))
    _one_line_error(_run("--network", str(bare), "--verbose", "false"), 1, "pass --data")
    monkeypatch.setenv("DNNLIB_OFFLINE", "1")
    monkeypatch.delenv("SG2KD_INCEPTION_PATH", raising=False)
    _one_line_error(_run("--network", pkl, "--verbose", "false"), 1, "SG2KD_INCEPTION_PATH")


def test_is_of_an_unconditional_net_needs_no_dataset_but_fid_does(setup):
    """The pickle records a training set that is gone: is1k still runs, fid1k names the missing folder."""
    _, pkl, data, detector = setup
    shutil.rmtree(data)
    result = _run("--network", pkl, "--metrics", "is1k", "--detector-path", detector)
    assert result.exit_code == 0, result.output
    assert _json_lines(result.output)[0]["results"]["is1k_mean"] >= 1
    result = _run("--network", pkl, "--metrics", "fid1k", "--detector-path", detector)
    assert result.exit_code != 0 and data in result.output and "Traceback" not in result.output


def test_vgg16_path_option_feeds_ppl_and_is_required_offline(setup, monkeypatch):
    _, pkl, _, detector = setup
    monkeypatch.setenv("DNNLIB_OFFLINE", "1")
    monkeypatch.delenv("SG2KD_VGG16_PATH", raising=False)
    _one_line_error(_run("--network", pkl, "--metrics", "ppl2_wend_1k", "--verbose", "false"), 1, "SG2KD_VGG16_PATH")
    result = _run("--network", pkl, "--metrics", "ppl2_wend_1k", "--vgg16-path", detector, "--verbose", "false")
    assert result.exit_code == 0, result.output
    assert _json_lines(result.output)[0]["results"]["ppl2_wend_1k"] >= 0
