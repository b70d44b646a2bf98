"""APA: the pseudo-augmentation draw, ADA's adjustment rule for p, the pseudo-image source, options."""

import click
import pytest
import torch

import dnnlib
from stylegan2_ada_kd import apa


def _images(n, value):
    return torch.full([n, 1, 1, 1], float(value))


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_mix_pseudo_replaces_each_real_with_probability_p(p):
    torch.manual_seed(0)
    n = 4000
    real, pseudo = _images(n, 1), _images(n, -1)
    mixed = apa.mix_pseudo(real, pseudo, torch.tensor(p, dtype=torch.float64))
    assert set(mixed.flatten().tolist()) <= {1.0, -1.0}  # whole images are swapped, never blended
    fraction = (mixed == -1).float().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(fraction - p) <= 4 * sigma + 1e-12


def test_augment_real_uses_the_latest_gmain_fakes_else_this_dmain_pass():
    torch.manual_seed(0)
    plugin = apa.APA(initial_p=1.0)
    real, dmain_fakes, gmain_fakes = _images(4, 1), _images(4, 2), _images(4, 3)
    assert torch.equal(plugin.augment_real(real_img=real, real_c=None, gen_img=dmain_fakes, gen_c=None), dmain_fakes)
    assert plugin.g_loss(None, None, None, None, None, gen_raw=gmain_fakes.requires_grad_()) is None
    mixed = plugin.augment_real(real_img=real, real_c=None, gen_img=dmain_fakes, gen_c=None)
    assert torch.equal(mixed, gmain_fakes) and not mixed.requires_grad
    plugin.after_step(cur_nimg=4, batch_size=4)  # a new step: the cached fakes are dropped
    assert torch.equal(plugin.augment_real(real_img=real, real_c=None, gen_img=dmain_fakes, gen_c=None), dmain_fakes)
    dmain = apa.APA(initial_p=1.0, pseudo_source="dmain")
    dmain.g_loss(None, None, None, None, None, gen_raw=gmain_fakes)
    assert torch.equal(dmain.augment_real(real_img=real, real_c=None, gen_img=dmain_fakes, gen_c=None), dmain_fakes)


def _run_interval(plugin, logits, steps, batch_size=8):
    for _ in range(steps):
        plugin.observe_logits(phase="Dmain", real_logits=logits, gen_logits=-logits)
        plugin.after_step(cur_nimg=0, batch_size=batch_size)


@pytest.mark.parametrize("signs, expected_direction", [
    ([1] * 9 + [-1], +1), ([1, 1, 1, -1], -1), ([1, -1, -1, -1], -1), ([1, 1, 1, 1, -1], 0)])
def test_p_moves_by_adas_step_towards_the_target(signs, expected_direction):
    plugin = apa.APA(target=0.6, kimg=1, interval=4, initial_p=0.5)
    logits = torch.tensor(signs, dtype=torch.float32).mul(2.5).reshape(-1, 1)
    _run_interval(plugin, logits, steps=3)
    assert float(plugin.p) == 0.5  # no adjustment before `interval` steps
    _run_interval(plugin, logits, steps=1)
    # E[sign] = 0.8, 0.5, -0.5 or exactly 0.6 against 0.6; step = batch * interval / (kimg * 1000) = 8 * 4 / 1000.
    assert float(plugin.p) == pytest.approx(0.5 + expected_direction * 0.032, abs=1e-12)
    assert plugin.sign_stats.tolist() == [0, 0]  # the statistic restarts after each adjustment


def test_p_is_clamped_and_r1_passes_count():
    plugin = apa.APA(target=0.6, kimg=0.001, interval=1, initial_p=0.5)
    _run_interval(plugin, torch.ones([4, 1]), steps=1)
    assert float(plugin.p) == 1.0
    _run_interval(plugin, -torch.ones([4, 1]), steps=1)
    assert float(plugin.p) == 0.0
    plugin.observe_logits(phase="Dreg", real_logits=torch.tensor([[1.0], [-1.0], [0.0]]), gen_logits=None)
    assert plugin.sign_stats.tolist() == [3, 0]  # R1 passes feed the statistic, as ADA's Loss/signs/real


def test_state_dict_holds_p_statistics_and_the_saved_schedule_wins():
    plugin = apa.APA(target=0.6, kimg=500, interval=4, initial_p=0.25)
    _run_interval(plugin, torch.ones([2, 1]), steps=2)
    state = plugin.state_dict()
    assert set(state) == {"p", "target", "kimg", "interval", "num_steps", "sign_stats"}
    resumed = apa.APA(kimg=100)  # what --resume gives by default
    resumed.load_state_dict(state)
    assert float(resumed.kimg) == 500 and int(resumed.num_steps) == 2 and resumed.sign_stats.tolist() == [4, 4]


def _context(resume_pkl=None):
    return dnnlib.EasyDict(num_images=10, kwargs=dnnlib.EasyDict(resume_pkl=resume_pkl))


def test_options():
    assert apa.make_plugin_kwargs({}, _context()) == []
    assert apa.make_plugin_kwargs({"apa": True}, _context()) == [
        dict(class_name="stylegan2_ada_kd.apa.APA", target=0.6, kimg=500.0, interval=4)]
    assert apa.make_plugin_kwargs({"apa": True}, _context("x.pkl"))[0]["kimg"] == 100
    given = apa.make_plugin_kwargs({"apa": True, "apa_target": 0.5, "apa_kimg": 50}, _context("x.pkl"))[0]
    assert (given["target"], given["kimg"]) == (0.5, 50)
    with pytest.raises(click.BadParameter, match="--apa"):
        apa.make_plugin_kwargs({"apa_target": 0.5}, _context())
    assert apa.run_desc({"apa": True}) == "apa" and apa.run_desc({}) == ""
    with pytest.raises(ValueError, match="pseudo_source"):
        apa.APA(pseudo_source="previous")
