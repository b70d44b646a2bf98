"""training/snapshot.py: atomic writes, pickle contents, training-state files, pruning, find_latest, transfer."""

import os
import pickle

import pytest
import torch

import legacy
from training import networks, snapshot


pytestmark = pytest.mark.usefixtures("pure_pytorch_ops")


def tiny_G(channel_max=8):
    return networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=64, channel_max=channel_max))


def tiny_D(channel_max=8):
    return networks.Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64,
                                  channel_max=channel_max, epilogue_kwargs=dict(mbstd_group_size=2))


def touch_pair(run_dir, kimg, state=True, network=True):
    """Write small but complete snapshot files for `kimg` through the real writers."""
    if state:
        snapshot.save_training_state(str(run_dir), kimg * 1000, {"cur_nimg": kimg * 1000})
    if network:
        snapshot.save_network_snapshot(str(run_dir), kimg * 1000, {"G_ema": None})


def test_network_snapshot_pickle_loads_and_is_detached_from_training(tmp_path):
    G, D = tiny_G(), tiny_D()
    G_ema = tiny_G().eval()
    data = snapshot.network_snapshot_data(G.train(), D, G_ema, None, {"path": "x", "class_name": "y"},
                                          {"kd": {"head.weight": torch.ones(2, 2, requires_grad=True)}})
    path = snapshot.save_network_snapshot(str(tmp_path), 12345, data)
    assert os.path.basename(path) == "network-snapshot-000012.pkl"
    assert G.training and data["G"] is not G
    with open(path, "rb") as f:
        loaded = legacy.load_network_pkl(f)
    assert not loaded["G"].training and not any(p.requires_grad for p in loaded["D"].parameters())
    assert loaded["training_set_kwargs"].path == "x" and loaded["augment_pipe"] is None
    head = loaded["plugin_states"]["kd"]["head.weight"]
    assert type(head) is torch.Tensor and not head.requires_grad and torch.equal(head, torch.ones(2, 2))
    for name in ("G", "D"):
        for a, b in zip(data[name].state_dict().values(), loaded[name].state_dict().values()):
            assert torch.equal(a, b)


def test_interrupted_write_keeps_previous_snapshot(tmp_path, monkeypatch):
    snapshot.save_network_snapshot(str(tmp_path), 0, {"G_ema": "old"})
    path = tmp_path / "network-snapshot-000000.pkl"
    before = path.read_bytes()

    def dump_half_then_fail(obj, f):
        f.write(b"\x80\x05partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(snapshot.pickle, "dump", dump_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        snapshot.save_network_snapshot(str(tmp_path), 0, {"G_ema": "new"})
    with pytest.raises(KeyboardInterrupt):
        snapshot.save_network_snapshot(str(tmp_path), 4000, {"G_ema": "new"})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["network-snapshot-000000.pkl"]  # no temp, no partial final file

    monkeypatch.setattr(snapshot.torch, "save", lambda obj, f: (f.write(b"PK\x03\x04"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        snapshot.save_training_state(str(tmp_path), 8000, {"cur_nimg": 8000})
    assert sorted(os.listdir(tmp_path)) == ["network-snapshot-000000.pkl"]


def test_training_state_roundtrip_and_clear_errors(tmp_path):
    state = {"cur_nimg": 4000, "G": {"w": torch.arange(3.0)}, "kwargs": snapshot.plain({"a": (1, 2), "f": print})}
    path = snapshot.save_training_state(str(tmp_path), 4000, state)
    loaded = snapshot.load_training_state(path)
    assert loaded["cur_nimg"] == 4000 and torch.equal(loaded["G"]["w"], torch.arange(3.0))
    assert loaded["kwargs"]["a"] == [1, 2] and "print" in loaded["kwargs"]["f"]
    foreign = tmp_path / "training-state-000009.pt"
    torch.save({"something": 1}, foreign)
    with pytest.raises(ValueError, match="not a stylegan2-ada-kd training state"):
        snapshot.load_training_state(str(foreign))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable training state"):
        snapshot.load_training_state(str(garbage))
    with pytest.raises(FileNotFoundError, match="no such training state"):
        snapshot.load_training_state(str(tmp_path / "missing.pt"))


def test_keep_last_prunes_older_pairs_but_never_the_new_one(tmp_path):
    for kimg in (0, 4, 8, 12):
        touch_pair(tmp_path, kimg)
    (tmp_path / "fakes000004.png").write_bytes(b"png")
    deleted = snapshot.prune_snapshots(str(tmp_path), 2, protect=[str(tmp_path / "training-state-000012.pt")])
    assert sorted(os.path.basename(p) for p in deleted) == [
        "network-snapshot-000000.pkl", "network-snapshot-000004.pkl", "training-state-000000.pt", "training-state-000004.pt"]
    assert sorted(os.listdir(tmp_path)) == ["fakes000004.png", "network-snapshot-000008.pkl",
                                            "network-snapshot-000012.pkl", "training-state-000008.pt",
                                            "training-state-000012.pt"]
    assert snapshot.prune_snapshots(str(tmp_path), None) == []
    protected = snapshot.prune_snapshots(str(tmp_path), 1, protect=["network-snapshot-000008.pkl"])
    assert [os.path.basename(p) for p in protected] == ["training-state-000008.pt"]
    with pytest.raises(ValueError, match="keep_last"):
        snapshot.prune_snapshots(str(tmp_path), 0)


def test_find_latest_ignores_temp_and_incomplete_files(tmp_path):
    outdir = tmp_path / "out"
    old_run, new_run, empty_run = outdir / "00000-a", outdir / "00001-b", outdir / "00002-c"
    for run in (old_run, new_run, empty_run):
        run.mkdir(parents=True)
    touch_pair(old_run, 40)
    touch_pair(new_run, 4)
    touch_pair(new_run, 8, state=False)  # crash between the two writes: only the pickle exists
    (new_run / ".tmp-training-state-000012.pt.abc").write_bytes(b"PK\x03\x04partial")
    (new_run / "training-state-000016.pt").write_bytes(b"PK\x03\x04 truncated")  # not a whole zip
    (empty_run / "log.txt").write_text("started")
    assert snapshot.find_latest(str(outdir)) == str(new_run / "network-snapshot-000008.pkl")
    touch_pair(new_run, 8, network=False)
    assert snapshot.find_latest(str(new_run)) == str(new_run / "training-state-000008.pt")  # state preferred
    assert snapshot.find_latest(str(old_run)) == str(old_run / "training-state-000040.pt")
    assert snapshot.find_latest(str(empty_run)) is None
    with pytest.raises(FileNotFoundError, match="not a directory"):
        snapshot.find_latest(str(tmp_path / "nope"))


def test_transfer_reports_and_rejects_shape_mismatch_unless_partial():
    source = {"G": tiny_G(channel_max=16), "D": tiny_D(), "G_ema": tiny_G(channel_max=16)}
    G, D, G_ema = tiny_G(), tiny_D(), tiny_G()
    lines = []
    with pytest.raises(ValueError, match="allow_partial"):
        snapshot.transfer_from_pickle(source, {"G": G, "D": D, "G_ema": G_ema}, allow_partial=False, log=lines.append)
    assert any(line.startswith("Resume G: copied") and "shape mismatch" in line for line in lines)
    problems = snapshot.transfer_from_pickle(source, {"G": G, "D": D, "G_ema": G_ema}, allow_partial=True,
                                             log=lines.append)
    assert len(problems) == 2  # G and G_ema
    assert all(torch.equal(a, b) for a, b in zip(D.state_dict().values(), source["D"].state_dict().values()))
    with pytest.raises(ValueError, match="G_ema: not in the pickle"):
        snapshot.transfer_from_pickle({"G": G, "D": D}, {"G_ema": tiny_G()}, allow_partial=False, log=lines.append)


def test_network_pickle_is_plain_for_official_loader(tmp_path):
    """The official loader only unpickles a dict; the extra plugin_states entry holds plain tensors."""
    states = {"lecam": {"ema_real": torch.ones([])}}
    data = snapshot.network_snapshot_data(tiny_G(), tiny_D(), tiny_G(), None, None, states)
    path = snapshot.save_network_snapshot(str(tmp_path), 0, data)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert set(raw) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs", "plugin_states"}
    assert type(raw["plugin_states"]) is dict and type(raw["plugin_states"]["lecam"]) is dict


def test_run_with_keep_last_keeps_only_the_newest_pair(tmp_path):
    """A real run over 2 kimg (32 steps of 32 images) with a snapshot per kimg and keep_last=1."""
    from tests.training.test_training_loop import loop_kwargs, make_dataset
    from training.training_loop import training_loop

    data = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "out" / "00003-data"
    kwargs = loop_kwargs(run_dir, data, batch_size=32, batch_gpu=32, total_kimg=2, kimg_per_tick=1,
                         image_snapshot_ticks=None, keep_last=1, augment_kwargs=None, ada_target=None,
                         loss_kwargs=dict(class_name="training.loss.StyleGAN2Loss", r1_gamma=1))
    training_loop(**kwargs)
    assert sorted(name for name in os.listdir(run_dir) if "snapshot" in name or "state" in name) == [
        "network-snapshot-000002.pkl", "training-state-000002.pt"]
    assert snapshot.find_latest(str(tmp_path / "out")) == str(run_dir / "training-state-000002.pt")
    assert snapshot.load_training_state(str(run_dir / "training-state-000002.pt"))["cur_nimg"] == 2016


def test_unreadable_state_error_is_one_line(tmp_path):
    path = tmp_path / "training-state-000001.pt"
    path.write_bytes(b"garbage that torch.load rejects")
    with pytest.raises(ValueError) as info:
        snapshot.load_training_state(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
