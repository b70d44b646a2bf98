"""legacy.py: loading our pickles, clear errors for damaged/foreign files, force_fp16, convert CLI."""

import io
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


def test_tf_era_pickle_without_variables_names_the_missing_one(tmp_path, monkeypatch):
    # A pickle that refers to dnnlib.tflib.network.Network the way TF-era files do, but holds no weights:
    # it is recognised as TF-era and the conversion names the first variable it cannot find.
    # (tests/cli/test_legacy_tf.py converts complete synthetic TF-era pickles.)
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
    with pytest.raises(legacy.NetworkPickleError,
                       match=r"tf\.pkl: TF-era G: variable 'mapping/Dense0/weight' is missing"):
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


def _official_format_bytes(obj, module_src: str) -> bytes:
    """Pickle `obj` as StyleGAN2-ADA-PyTorch writes snapshots: every persistent object becomes
    `_reconstruct_persistent_obj(meta)` whose meta embeds `module_src` (here: our networks.py text plus a marker)."""
    from torch_utils import persistence

    class OfficialPickler(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, type) or not persistence.is_persistent(o):
                return NotImplemented
            meta = dict(type="class", version=6, module_src=module_src, class_name=type(o).__name__,
                        state=dict(o.__dict__))
            return persistence._reconstruct_persistent_obj, (meta,)

    buffer = io.BytesIO()
    OfficialPickler(buffer, protocol=4).dump(obj)
    return buffer.getvalue()


@pytest.mark.parametrize("c_dim,architecture", [(0, "skip"), (2, "resnet")])
def test_official_format_pickle_runs_embedded_networks_source(c_dim, architecture, pure_pytorch_ops):
    import dnnlib
    from training import networks
    marker = f"\nEMBEDDED_MARKER = '{architecture}'\n"
    module_src = open(networks.__file__, encoding="utf-8").read() + marker
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16, architecture=architecture)).eval()
    D = networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, architecture=architecture,
                               channel_base=128, channel_max=16).eval()
    snapshot = dict(G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs=dnnlib.EasyDict(resolution=16))
    data = legacy.load_network_pkl(io.BytesIO(_official_format_bytes(snapshot, module_src)))

    G2, D2 = data["G_ema"], data["D"]
    loaded_module = sys.modules[type(G2).__module__]
    assert type(G2) is not networks.Generator and loaded_module.EMBEDDED_MARKER == architecture
    assert type(G2.synthesis.b8.conv0).__module__ == type(G2).__module__  # submodules come from the same source
    assert data["training_set_kwargs"].resolution == 16
    z = torch.randn(4, 8)
    c = torch.eye(2)[[0, 1, 1, 0]][:, :c_dim]
    assert torch.equal(G2(z, c, noise_mode="const"), G(z, c, noise_mode="const"))
    img = torch.randn(4, 3, 16, 16, requires_grad=True)
    logits = D2(img, c)
    assert torch.equal(logits, D(img, c))
    # The embedded source's ops also differentiate (R1-style gradient w.r.t. the input image).
    (grad,) = torch.autograd.grad(logits.sum(), img)
    (expected,) = torch.autograd.grad(D(img, c).sum(), img)
    torch.testing.assert_close(grad, expected)


def test_convert_cli_refuses_bad_destinations_before_loading(tmp_path):
    src = str(tmp_path / "src.pkl")
    legacy.save_network_pkl(_snapshot(ToyGenerator()), src)
    before = open(src, "rb").read()
    for dest, text in ((src, "is the --source file"), (str(tmp_path), "is a folder"),
                       (str(tmp_path / "no_dir" / "out.pkl"), "does not exist")):
        result = CliRunner().invoke(legacy.convert_network_pickle, ["--source", src, "--dest", dest])
        assert result.exit_code == 2 and text in result.output and "--dest" in result.output, dest
    assert open(src, "rb").read() == before
