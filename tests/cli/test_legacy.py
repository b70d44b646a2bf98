"""legacy.py: loading our pickles, clear errors for damaged/foreign files, force_fp16, convert CLI."""

import os
import pickle
import sys
import types

import pytest
import torch
from click.testing import CliRunner

import legacy
from tests.toy_networks import ToyGenerator


def _snapshot(G):
    return dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=None)


def _write(path, payload: bytes):
    path.write_bytes(payload)
    return str(path)


def test_round_trip_keeps_outputs(tmp_path):
    torch.manual_seed(0)
    G = ToyGenerator(z_dim=8, w_dim=8, img_resolution=4)
    path = str(tmp_path / "net.pkl")
    legacy.save_network_pkl(_snapshot(G), path)
    assert os.listdir(tmp_path) == ["net.pkl"]  # no temp file left behind
    data = legacy.load_network_pkl_from(path)
    z = torch.randn(2, 8)
    c = torch.zeros(2, 0)
    assert torch.equal(data["G_ema"](z, c), G(z, c))
    assert type(data["G_ema"]).__name__ == "ToyGenerator"


def test_optional_keys_default_to_none(tmp_path):
    path = _write(tmp_path / "min.pkl", pickle.dumps({"G_ema": ToyGenerator()}))
    data = legacy.load_network_pkl_from(path)
    assert data["G"] is None and data["augment_pipe"] is None and data["training_set_kwargs"] is None


def test_truncated_pickle_names_file(tmp_path):
    blob = pickle.dumps(_snapshot(ToyGenerator()))
    path = _write(tmp_path / "cut.pkl", blob[: len(blob) // 2])
    with pytest.raises(legacy.NetworkPickleError, match=r"cut\.pkl.*truncated"):
        legacy.load_network_pkl_from(path)


@pytest.mark.parametrize("payload", [b"\x00\x01garbage", b'{"json": true}', b""])
def test_foreign_bytes_give_clear_error(tmp_path, payload):
    path = _write(tmp_path / "foreign.bin", payload)
    with pytest.raises(legacy.NetworkPickleError, match="foreign.bin"):
        legacy.load_network_pkl_from(path)


def test_pickle_of_other_object_is_rejected(tmp_path):
    path = _write(tmp_path / "list.pkl", pickle.dumps([1, 2, 3]))
    with pytest.raises(legacy.NetworkPickleError, match="not a StyleGAN2-ADA network pickle.*list"):
        legacy.load_network_pkl_from(path)


def test_tf_era_pickle_is_recognised(tmp_path, monkeypatch):
    # Write a pickle that refers to dnnlib.tflib.network.Network the way TF-era files do.
    fake = types.ModuleType("dnnlib.tflib.network")

    class Network:
        pass

    Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"
    fake.Network = Network
    monkeypatch.setitem(sys.modules, "dnnlib.tflib.network", fake)
    nets = []
    for name in ("G", "D", "Gs"):
        net = Network()
        net.__dict__.update(name=name, version=4)
        nets.append(net)
    path = _write(tmp_path / "tf.pkl", pickle.dumps(tuple(nets)))
    monkeypatch.delitem(sys.modules, "dnnlib.tflib.network")
    with pytest.raises(legacy.NetworkPickleError, match="TF-era"):
        legacy.load_network_pkl_from(path)


def test_force_fp16_rebuilds_with_same_weights(tmp_path):
    torch.manual_seed(1)
    G = ToyGenerator(synthesis_kwargs=dict(num_fp16_res=0))
    path = str(tmp_path / "net.pkl")
    legacy.save_network_pkl(_snapshot(G), path)
    data = legacy.load_network_pkl_from(path, force_fp16=True)
    G16 = data["G_ema"]
    assert G16.synthesis.num_fp16_res == 4 and G16.synthesis.conv_clamp == 256
    assert G16.init_kwargs["synthesis_kwargs"]["num_fp16_res"] == 4
    for (name, a), (_, b) in zip(G.named_parameters(), G16.named_parameters()):
        assert torch.equal(a, b), name


def test_save_failure_leaves_nothing(tmp_path):
    path = tmp_path / "bad.pkl"
    with pytest.raises(Exception):
        legacy.save_network_pkl({"G_ema": lambda: None}, str(path))  # lambdas cannot be pickled
    assert os.listdir(tmp_path) == []


def test_convert_cli(tmp_path):
    src = str(tmp_path / "src.pkl")
    legacy.save_network_pkl(_snapshot(ToyGenerator()), src)
    dest = str(tmp_path / "dest.pkl")
    result = CliRunner().invoke(legacy.convert_network_pickle, ["--source", src, "--dest", dest])
    assert result.exit_code == 0, result.output
    assert legacy.load_network_pkl_from(dest)["G_ema"].z_dim == 8

    missing = CliRunner().invoke(legacy.convert_network_pickle, ["--source", str(tmp_path / "nope.pkl"),
                                                                 "--dest", dest])
    assert missing.exit_code == 1 and "nope.pkl" in missing.output
