"""LeCam: the penalty against a hand computation, the zero-debiased EMA anchors, the start, options."""

import click
import pytest
import torch

import dnnlib
from stylegan2_ada_kd import lecam


def test_penalty_equals_hand_computation_and_its_gradient():
    real = torch.tensor([[1.0], [3.0], [-2.0]], requires_grad=True)
    fake = torch.tensor([[-2.0], [0.5]], requires_grad=True)
    # anchors alpha_R = 2, alpha_F = -0.75:
    # real: relu(1.75)^2 = 3.0625, relu(3.75)^2 = 14.0625, relu(-1.25)^2 = 0 -> mean 17.125 / 3
    # fake: relu(2 + 2)^2 = 16, relu(2 - 0.5)^2 = 2.25 -> mean 9.125
    value = lecam.lecam_penalty(real, fake, anchor_real=2.0, anchor_fake=-0.75)
    assert value.item() == pytest.approx(17.125 / 3 + 9.125, rel=1e-6)
    value.backward()
    assert real.grad.flatten().tolist() == pytest.approx([2 * 1.75 / 3, 2 * 3.75 / 3, 0.0])
    assert fake.grad.flatten().tolist() == pytest.approx([-2 * 4 / 2, -2 * 1.5 / 2])


def _d_loss(plugin, real, fake):
    return plugin.d_loss(real_img=None, real_c=None, real_logits=real, real_feats=None, gen_img=None, gen_c=None,
                         gen_logits=fake, gen_feats=None, gen_z=None)


def test_d_loss_updates_the_anchors_first_then_weights_the_penalty():
    plugin = lecam.LeCam(weight=0.5, decay=0.5)
    real = torch.tensor([[1.0], [3.0]])
    fake = torch.tensor([[-2.0], [0.5]])
    # One zero-debiased step from 0: biased = 0.5 * mean, debiased = mean -> alpha_R = 2, alpha_F = -0.75.
    term = _d_loss(plugin, real, fake)
    assert term.item() == pytest.approx(0.5 * ((3.0625 + 14.0625) / 2 + (16 + 2.25) / 2), rel=1e-6)
    assert [float(a) for a in plugin.anchors()] == pytest.approx([2.0, -0.75])


@pytest.mark.parametrize("zero_debias", [True, False])
def test_anchors_follow_the_ema_of_the_batch_means(zero_debias):
    decay = 0.9
    plugin = lecam.LeCam(weight=1.0, decay=decay, zero_debias=zero_debias)
    torch.manual_seed(0)
    biased_real = biased_fake = 0.0
    for t in range(1, 8):
        real, fake = torch.randn([4, 1]) + 1, torch.randn([6, 1]) - 1
        _d_loss(plugin, real, fake)
        biased_real = decay * biased_real + (1 - decay) * real.mean().item()
        biased_fake = decay * biased_fake + (1 - decay) * fake.mean().item()
        scale = 1 / (1 - decay**t) if zero_debias else 1.0
        assert [float(a) for a in plugin.anchors()] == pytest.approx([biased_real * scale, biased_fake * scale])
    assert int(plugin.num_updates) == 7 and set(plugin.state_dict()) == {"biased", "num_updates"}


def test_term_starts_at_start_kimg_while_anchors_already_track():
    plugin = lecam.LeCam(weight=1.0, decay=0.99, start_kimg=0.01)
    plugin.setup(dnnlib.EasyDict(cur_nimg=0))
    logits = torch.tensor([[5.0], [-5.0]])
    assert _d_loss(plugin, logits, -logits) is None and int(plugin.num_updates) == 1
    plugin.ctx.cur_nimg = 10
    assert _d_loss(plugin, logits, -logits).item() > 0


def test_options():
    assert lecam.make_plugin_kwargs({}, None) == []
    assert lecam.make_plugin_kwargs({"lecam": 3e-7}, None) == [
        dict(class_name="stylegan2_ada_kd.lecam.LeCam", weight=3e-7, decay=0.99, start_kimg=0.0)]
    given = lecam.make_plugin_kwargs({"lecam": 0.3, "lecam_decay": 0.9, "lecam_start_kimg": 50}, None)[0]
    assert (given["decay"], given["start_kimg"]) == (0.9, 50.0)
    with pytest.raises(click.BadParameter, match="--lecam-decay"):
        lecam.make_plugin_kwargs({"lecam_decay": 0.9}, None)
    assert lecam.run_desc({"lecam": 3e-7}) == "lecam3e-07" and lecam.run_desc({}) == ""
    with pytest.raises(ValueError, match="decay"):
        lecam.LeCam(decay=1.0)
