"""legacy.py on TF-era (G, D, Gs) pickles: conversion to training.networks without TensorFlow.

No real TF pickle is available offline, so each test builds one of our networks, writes it as a
TF-era pickle with the inverse mapping below (written here from the TF networks' variable naming,
independently of training/legacy_tf.py), and checks that loading it gives the same outputs.
"""

import pickle
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import legacy
from training import networks


def _dyadic_(module):
    """Random weights on a 1/1024 grid: the +-1 of the modulation bias round-trips exactly."""
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in list(module.parameters()) + [b for n, b in module.named_buffers() if "resample" not in n]:
            tensor.copy_(torch.round(torch.randn_like(tensor) * 512) / 1024)
    return module


def _np(t):
    return t.detach().numpy().copy()


def _conv_tf(weight, flip=False):
    """Ours [out, in, kh, kw] -> TF [kh, kw, in, out] (mirrored for TF's transposed upsampling convs)."""
    w = weight.detach().permute(2, 3, 1, 0)
    return _np(w.flip([0, 1]) if flip else w)


def _modconv_vars(layer, scope, flip=False):
    out = {f"{scope}/weight": _conv_tf(layer.weight, flip), f"{scope}/bias": _np(layer.bias),
           f"{scope}/mod_weight": _np(layer.affine.weight.T), f"{scope}/mod_bias": _np(layer.affine.bias) - 1}
    if hasattr(layer, "noise_strength"):
        out[f"{scope}/noise_strength"] = _np(layer.noise_strength)
    return out


def _tf_synthesis_vars(synthesis):
    variables, noises = {}, []
    for res in synthesis.block_resolutions:
        block, scope = getattr(synthesis, f"b{res}"), f"{res}x{res}"
        if res == 4:
            variables[f"{scope}/Const/const"] = _np(block.const)[None]
            layers = [("Conv", block.conv1, False)]
        else:
            layers = [("Conv0_up", block.conv0, True), ("Conv1", block.conv1, False)]
        for tf_name, layer, flip in layers:
            variables.update(_modconv_vars(layer, f"{scope}/{tf_name}", flip))
            noises.append(_np(layer.noise_const)[None, None])
        if hasattr(block, "torgb"):
            variables.update(_modconv_vars(block.torgb, f"{scope}/ToRGB"))
        if hasattr(block, "skip"):
            variables[f"{scope}/Skip/weight"] = _conv_tf(block.skip.weight, flip=True)
    # Noise inputs are numbered in layer order over the whole network.
    variables.update({f"noise{i}": noise for i, noise in enumerate(noises)})
    return variables


def _tf_mapping_vars(mapping, dense_scope):
    variables = {}
    if mapping.c_dim:
        variables.update({"LabelEmbed/weight": _np(mapping.embed.weight.T), "LabelEmbed/bias": _np(mapping.embed.bias)})
    for i in range(mapping.num_layers):
        fc = getattr(mapping, f"fc{i}")
        variables.update({f"{dense_scope}{i}/weight": _np(fc.weight.T), f"{dense_scope}{i}/bias": _np(fc.bias)})
    return variables


def _tf_discriminator_vars(D):
    variables = {}
    for name, module in list(D.named_children()):
        if name == "mapping":
            variables.update(_tf_mapping_vars(module, "Mapping"))
            continue
        scope = f"{module.resolution}x{module.resolution}"
        tf_names = dict(fromrgb="FromRGB", conv0="Conv0", conv1="Conv1_down", skip="Skip", conv="Conv", fc="Dense0")
        for child_name, layer in module.named_children():
            if child_name == "mbstd":
                continue
            tf_scope = "Output" if child_name == "out" else f"{scope}/{tf_names[child_name]}"
            weight = layer.weight.T if child_name in ("fc", "out") else None
            variables[f"{tf_scope}/weight"] = _np(weight) if weight is not None else _conv_tf(layer.weight)
            if layer.bias is not None:
                variables[f"{tf_scope}/bias"] = _np(layer.bias)
    return variables


class _Network:
    """Pickles like dnnlib.tflib.network.Network: its state is a dict."""

    def __init__(self, name, static_kwargs, variables, components=None):
        self.state = dict(version=4, name=name, static_kwargs=static_kwargs, components=components or {},
                          build_module_src="# TF source", build_func_name=name,
                          variables=list(variables.items()))

    def __getstate__(self):
        return self.state

    def __setstate__(self, state):
        self.state = state


def _write_tf_pickle(path, monkeypatch, tf_G, tf_D, tf_Gs):
    fake = types.ModuleType("dnnlib.tflib.network")
    _Network.__module__, _Network.__qualname__ = "dnnlib.tflib.network", "Network"
    fake.Network = _Network
    monkeypatch.setitem(sys.modules, "dnnlib.tflib.network", fake)
    try:
        path.write_bytes(pickle.dumps((tf_G, tf_D, tf_Gs)))
    finally:
        monkeypatch.delitem(sys.modules, "dnnlib.tflib.network")
        _Network.__module__, _Network.__qualname__ = __name__, "_Network"
    return str(path)


def _tf_generator(G, static_kwargs, mutate=None):
    mapping = _tf_mapping_vars(G.mapping, "Dense")
    synthesis = _tf_synthesis_vars(G.synthesis)
    top = {"dlatent_avg": _np(G.mapping.w_avg)}
    if mutate:
        mutate(top, mapping, synthesis)
    return _Network("G", static_kwargs, top, components=dict(
        mapping=_Network("G_mapping", {}, mapping), synthesis=_Network("G_synthesis", {}, synthesis)))


CASES = [  # (G architecture, D architecture, c_dim, resolution, pass fmap_base as a static kwarg)
    ("skip", "resnet", 0, 16, True),
    ("resnet", "skip", 3, 16, False),
    ("orig", "orig", 0, 32, True),
]


def _make_nets(g_arch, d_arch, c_dim, res):
    G = networks.Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=res, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16, architecture=g_arch))
    D = networks.Discriminator(c_dim=c_dim, img_resolution=res, img_channels=3, architecture=d_arch, channel_base=128,
                               channel_max=16, mapping_kwargs=dict(num_layers=1, lr_multiplier=0.1),
                               epilogue_kwargs=dict(mbstd_group_size=2))
    return _dyadic_(G).eval(), _dyadic_(D).eval()


def _static(arch, c_dim, res, with_base):
    kwargs = dict(resolution=res, num_channels=3, label_size=c_dim, architecture=arch, fmap_max=16,
                  truncation_psi=0.5, randomize_noise=True)
    if with_base:
        kwargs["fmap_base"] = 64  # channel_base = 2 * fmap_base
    return kwargs


def _tf_pickle_for(tmp_path, monkeypatch, G, D, case, mutate=None):
    g_arch, d_arch, c_dim, res, with_base = case
    g_static = dict(_static(g_arch, c_dim, res, with_base), latent_size=8, dlatent_size=8, mapping_layers=2)
    d_static = dict(_static(d_arch, c_dim, res, with_base), mbstd_group_size=2, mapping_lrmul=0.1)
    tf_G = _tf_generator(G, g_static, mutate)
    tf_D = _Network("D", d_static, _tf_discriminator_vars(D))
    return _write_tf_pickle(tmp_path / "tf.pkl", monkeypatch, tf_G, tf_D, tf_G)


@pytest.mark.parametrize("case", CASES)
def test_tf_pickle_converts_exactly(tmp_path, monkeypatch, case, pure_pytorch_ops):
    G, D = _make_nets(*case[:4])
    path = _tf_pickle_for(tmp_path, monkeypatch, G, D, case)
    data = legacy.load_network_pkl_from(path)
    c_dim, res = case[2], case[3]
    torch.manual_seed(1)
    z = torch.randn(4, 8)
    c = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 2]), 3).float() if c_dim else torch.zeros(4, 0)
    for key in ("G", "G_ema"):
        assert isinstance(data[key], networks.Generator)
        assert torch.equal(data[key](z, c, noise_mode="const"), G(z, c, noise_mode="const"))
        assert torch.equal(data[key](z, c, truncation_psi=0.5, noise_mode="const"),
                           G(z, c, truncation_psi=0.5, noise_mode="const"))
    img = torch.randn(4, 3, res, res)
    assert torch.equal(data["D"](img, c), D(img, c))
    assert data["augment_pipe"] is None and data["training_set_kwargs"] is None
    assert data["G_ema"].init_kwargs["synthesis_kwargs"]["channel_base"] == 128


def test_wrong_shape_and_missing_variables_name_the_variable(tmp_path, monkeypatch, pure_pytorch_ops):
    case = CASES[0]
    G, D = _make_nets(*case[:4])

    def wrong_shape(top, mapping, synthesis):
        synthesis["8x8/Conv1/mod_bias"] = np.zeros(5, np.float32)

    path = _tf_pickle_for(tmp_path, monkeypatch, G, D, case, wrong_shape)
    with pytest.raises(legacy.NetworkPickleError, match=r"tf\.pkl.*'synthesis/8x8/Conv1/mod_bias' has shape \(5,\)"):
        legacy.load_network_pkl_from(path)

    def missing(top, mapping, synthesis):
        del synthesis["noise2"]

    path = _tf_pickle_for(tmp_path, monkeypatch, G, D, case, missing)
    with pytest.raises(legacy.NetworkPickleError, match=r"'synthesis/noise2' is missing"):
        legacy.load_network_pkl_from(path)


def test_unknown_variable_is_reported(tmp_path, monkeypatch, pure_pytorch_ops):
    case = CASES[0]
    G, D = _make_nets(*case[:4])

    def extra(top, mapping, synthesis):
        synthesis["8x8/Extra/weight"] = np.ones([2, 2], np.float32)

    path = _tf_pickle_for(tmp_path, monkeypatch, G, D, case, extra)
    with pytest.warns(legacy.TFConversionWarning, match=r"'synthesis/8x8/Extra/weight' \(2, 2\)") as record:
        data = legacy.load_network_pkl_from(path)
    assert "truncation_psi" not in str(record[0].message)  # known, meaningless kwargs are not reported
    z = torch.randn(2, 8)
    assert torch.equal(data["G_ema"](z, None, noise_mode="const"), G(z, None, noise_mode="const"))
    result = CliRunner().invoke(legacy.convert_network_pickle, ["--source", path, "--dest", str(tmp_path / "o.pkl")])
    assert result.exit_code == 0 and "warning:" in result.output and "8x8/Extra/weight" in result.output


def test_pre_ada_label_concat_is_refused(tmp_path, monkeypatch, pure_pytorch_ops):
    case = CASES[0]
    G, D = _make_nets(*case[:4])

    def label_concat(top, mapping, synthesis):
        mapping["LabelConcat/weight"] = np.ones([3, 8], np.float32)

    path = _tf_pickle_for(tmp_path, monkeypatch, G, D, case, label_concat)
    with pytest.raises(legacy.NetworkPickleError, match="LabelConcat"):
        legacy.load_network_pkl_from(path)


def test_convert_cli_and_force_fp16_on_tf_pickle(tmp_path, monkeypatch, pure_pytorch_ops):
    case = CASES[1]
    G, D = _make_nets(*case[:4])
    path = _tf_pickle_for(tmp_path, monkeypatch, G, D, case)
    dest = str(tmp_path / "converted.pkl")
    result = CliRunner().invoke(legacy.convert_network_pickle, ["--source", path, "--dest", dest,
                                                                "--force-fp16", "true"])
    assert result.exit_code == 0, result.output
    with open(dest, "rb") as f:
        data = pickle.load(f)  # a plain pickle of persistent training.networks classes now
    assert data["G_ema"].init_kwargs["synthesis_kwargs"]["num_fp16_res"] == 4
    assert data["D"].init_kwargs["conv_clamp"] == 256
    z, c = torch.randn(2, 8), torch.eye(3)[:2]
    torch.testing.assert_close(data["G_ema"](z, c, noise_mode="const"), G(z, c, noise_mode="const"))


def test_progressive_lod_torgb_network_converts_as_orig(tmp_path, monkeypatch, pure_pytorch_ops):
    """No 'architecture' kwarg, 'ToRGB_lod{n}' names and G_main's 'lod' (StyleGAN2 configs B-D): 'orig', exact."""
    G, D = _make_nets("orig", "orig", 0, 16)

    def progressive(top, mapping, synthesis):
        for suffix in ("weight", "bias", "mod_weight", "mod_bias"):
            synthesis[f"ToRGB_lod0/{suffix}"] = synthesis.pop(f"16x16/ToRGB/{suffix}")
        synthesis["ToRGB_lod1/weight"] = np.ones([1, 1, 16, 3], np.float32)  # 8x8 output, unused at full res
        top["lod"] = np.float32(0)

    g_static = {k: v for k, v in _static("orig", 0, 16, True).items() if k != "architecture"}
    tf_G = _tf_generator(G, dict(g_static, latent_size=8, dlatent_size=8, mapping_layers=2), progressive)
    d_static = dict(_static("orig", 0, 16, True), mbstd_group_size=2)
    path = _write_tf_pickle(tmp_path / "tf.pkl", monkeypatch, tf_G, _Network("D", d_static, _tf_discriminator_vars(D)),
                            tf_G)
    with pytest.warns(legacy.TFConversionWarning) as record:
        data = legacy.load_network_pkl_from(path)
    messages = " ".join(str(r.message) for r in record)
    assert "ToRGB_lod1/weight" in messages and "'lod'" not in messages
    assert data["G_ema"].init_kwargs["synthesis_kwargs"]["architecture"] == "orig"
    z = torch.randn(2, 8)
    assert torch.equal(data["G_ema"](z, None, noise_mode="const"), G(z, None, noise_mode="const"))
