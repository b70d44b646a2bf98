"""The training loop evaluates real metrics at snapshots and writes metric-<name>.jsonl (detector via env var)."""

import json

import pytest

import legacy
from metrics import metric_main
from tests.metrics.toy_detectors import ToyDetector, save_detector
from tests.training.test_training_loop import loop_kwargs, make_dataset
from training.training_loop import training_loop

pytestmark = pytest.mark.usefixtures("pure_pytorch_ops")


def test_training_loop_writes_metric_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("SG2KD_INCEPTION_PATH", save_detector(ToyDetector(), tmp_path / "toy.pt"))
    data = make_dataset(tmp_path / "data")
    kwargs = loop_kwargs(tmp_path / "run", data, total_kimg=0.004, metrics=["fid1k_full"], augment_kwargs=None,
                         ada_target=None, data_loader_kwargs=dict(num_workers=0))
    training_loop(**kwargs)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metric-fid1k_full.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["snapshot_pkl"] == "network-snapshot-000000.pkl"
    fid = lines[0]["results"]["fid1k_full"]
    assert fid > 0
    # The same snapshot evaluated outside the loop gives the same number: latents, labels and G's
    # noise are seeded per batch, and the loop's own RNG state does not leak in.
    with open(tmp_path / "run" / "network-snapshot-000000.pkl", "rb") as f:
        G = legacy.load_network_pkl(f)["G_ema"]
    again = metric_main.calc_metric("fid1k_full", G=G, dataset_kwargs=dict(
        class_name="training.dataset.ImageFolderDataset", path=data), device="cpu")
    assert again.results.fid1k_full == pytest.approx(fid, rel=1e-9)
