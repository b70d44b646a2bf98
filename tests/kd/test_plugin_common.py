"""stylegan2_ada_kd.plugin_common: the shared option check of every plugin and the D-feature probe."""

import click
import pytest
import torch

import dnnlib
from stylegan2_ada_kd import apa, insgen, kd_plugin, lecam
from stylegan2_ada_kd.plugin_common import parse_term_weights, probe_d_feature_channels, reject_orphan_options
from training.networks import Discriminator

ORPHANS = [  # (module, an option given without its switch, the flag, the hint the message names)
    (apa, dict(apa_target=0.5), "--apa-target", "add --apa or"),
    (apa, dict(apa_kimg=10.0), "--apa-kimg", "add --apa or"),
    (lecam, dict(lecam_decay=0.9), "--lecam-decay", "add --lecam=WEIGHT or"),
    (lecam, dict(lecam_start_kimg=0.0), "--lecam-start-kimg", "add --lecam=WEIGHT or"),
    (insgen, dict(insgen_queue=64), "--insgen-queue", "add --insgen or"),
    (insgen, dict(insgen_no_g=True), "--insgen-no-g", "add --insgen or"),
    (insgen, dict(insgen_weights="g=1"), "--insgen-weights", "add --insgen or"),
    (kd_plugin, dict(kd_interval=2), "--kd-interval", "add --kd=agkd,cgkd"),
]


@pytest.mark.parametrize("module, opts, flag, hint", ORPHANS)
def test_every_plugin_rejects_its_options_without_its_switch(module, opts, flag, hint):
    with pytest.raises(click.BadParameter) as info:
        module.make_plugin_kwargs(dict(opts), dnnlib.EasyDict(kwargs={}))
    message = info.value.format_message()
    assert info.value.param_hint == f"'{flag}'" and "only applies with" in message and hint in message
    assert f"drop {flag}" in message and "\n" not in message


def test_orphan_check_ignores_unset_options_and_false_flags():
    reject_orphan_options(dict(a=None, b=False, c=0), ["a", "b"], "--x", "--x")  # no error
    with pytest.raises(click.BadParameter, match="drop --c"):
        reject_orphan_options(dict(a=None, b=False, c=0), ["a", "b", "c"], "--x", "--x")  # 0 is a value


@pytest.mark.parametrize("name, expected", [("fc", "fc_width"), ("b4_input", "b4_channels")])
def test_probe_reports_the_feature_width_and_leaves_the_rng_alone(name, expected, pure_pytorch_ops):
    torch.manual_seed(0)
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=8,
                      epilogue_kwargs=dict(mbstd_group_size=2))
    widths = dict(fc_width=D.b4.fc.out_features, b4_channels=D.b4.in_channels)
    ctx = dnnlib.EasyDict(D=D, device=torch.device("cpu"), batch_gpu=4, img_channels=3, resolution=16, c_dim=0)
    state = torch.random.get_rng_state()
    assert probe_d_feature_channels(ctx, name) == widths[expected]
    assert torch.equal(torch.random.get_rng_state(), state)


def test_term_weights_parse_names_once_and_reject_bad_items_in_one_line():
    assert parse_term_weights(" B=2.5, a=0 ", ("a", "b"), "--w", "x") == {"b": 2.5, "a": 0.0}
    assert parse_term_weights("", ("a",), "--w", "x") == {}
    for bad in ("c=1", "a", "a=1,a=2", "a=-1", "a=nan", "a=inf", "a=x"):
        with pytest.raises(click.BadParameter) as info:
            parse_term_weights(bad, ("a", "b"), "--w", "terms given to --t")
        message = info.value.format_message()
        assert info.value.param_hint == "'--w'" and "terms given to --t (a, b)" in message and "\n" not in message
