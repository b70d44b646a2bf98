"""stylegan2_ada_kd.kd_plugin: KDLoss values, gradients, schedule, prompts, train.py options, a training run."""

import json

import click
import pytest
import torch

import dnnlib
from stylegan2_ada_kd import kd, kd_plugin
from stylegan2_ada_kd.diffaugment import DiffAugment
from stylegan2_ada_kd.teacher import build_teacher
from tests.kd.clip_fixtures import TINY_EMBED_DIM, make_tiny_clip_checkpoint
from tests.training.test_loss import ProbeD, batch, collect, tiny_networks
from tests.training.test_training_loop import _assert_same, _final_state, loop_kwargs, make_dataset
from torch_utils import training_stats
from training import augment, snapshot
from training.loss import StyleGAN2Loss
from training.training_loop import training_loop

pytestmark = pytest.mark.usefixtures("pure_pytorch_ops")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip_checkpoint(tmp_path_factory.mktemp("tiny_clip"))


def kd_spec(tiny_clip, **overrides):
    spec, ckpt = tiny_clip
    return dict(class_name=kd_plugin.CLASS_NAME, teacher=spec, teacher_ckpt=ckpt, **overrides)


def make_loss(tiny_clip, G, D, augment_pipe=None, class_names=None, **overrides):
    ctx = dnnlib.EasyDict(batch_gpu=4, num_images=10, resolution=8, img_channels=3, class_names=class_names)
    return StyleGAN2Loss("cpu", G, D, augment_pipe=augment_pipe, r1_gamma=1, plugin_context=ctx,
                         plugins=[kd_spec(tiny_clip, **overrides)] if overrides.get("terms", True) else [])


def test_d_loss_equals_weighted_terms_of_an_independent_teacher_and_head(tiny_clip):
    G, D = tiny_networks()
    weights = {"agkd": 2.0, "cgkd": 3.0, "fitnets": 0.5, "ld": 0.25, "pkd": 4.0, "spkd": 5.0}
    loss = make_loss(tiny_clip, G, D, terms=list(weights), term_weights=weights, dist="l1")
    plugin = loss.plugins["kd"]
    assert plugin.head.in_features == D.b4.fc.out_features == 8 and plugin.head.out_features == TINY_EMBED_DIM
    real_img, _, _, _ = batch(seed=3)
    gen_img, _, _, _ = batch(seed=4)
    gen = torch.Generator().manual_seed(5)
    real_fc, gen_fc = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    collector = training_stats.Collector(regex="Loss/KD/.*")
    value = plugin.d_loss(real_img=real_img, real_feats={"fc": real_fc}, gen_img=gen_img, gen_feats={"fc": gen_fc})
    collector.update()
    # Independent expectation: a second teacher, the head as explicit matrix products, the released prompts.
    teacher = build_teacher(tiny_clip[0], ckpt=tiny_clip[1])
    t_real, t_fake = teacher.encode_images(real_img), teacher.encode_images(gen_img)
    text = teacher.encode_texts(list(kd_plugin.RELEASED_PROMPTS))
    h = plugin.head

    def head(x):
        return (x @ h.fc1.weight.T + h.fc1.bias) @ h.fc2.weight.T + h.fc2.bias

    s_real, s_fake = head(real_fc), head(gen_fc)
    terms = {"agkd": kd.agkd_loss(t_real, s_real, t_fake, s_fake, dist="l1"),
             "cgkd": kd.cgkd_loss(t_real, s_real, text) + kd.cgkd_loss(t_fake, s_fake, text),
             "fitnets": kd.fitnets_loss(t_real, s_real) + kd.fitnets_loss(t_fake, s_fake),
             "ld": kd.ld_loss(t_real, s_real, text) + kd.ld_loss(t_fake, s_fake, text),
             "pkd": kd.pkd_loss(t_real, s_real) + kd.pkd_loss(t_fake, s_fake),
             "spkd": kd.spkd_loss(t_real, s_real) + kd.spkd_loss(t_fake, s_fake)}
    terms = {name: float(v.detach()) for name, v in terms.items()}
    expected = sum(weights[name] * v for name, v in terms.items())
    assert float(value.detach()) == pytest.approx(expected, rel=1e-4)
    for name, v in terms.items():
        assert collector.mean(f"Loss/KD/{name}") == pytest.approx(v, rel=1e-4), name
    assert collector.mean("Loss/KD/total") == pytest.approx(expected, rel=1e-4)


def _d_grads(tiny_clip, with_kd, augment_pipe=None):
    G, D = tiny_networks()
    probe = ProbeD(D)
    loss = make_loss(tiny_clip, G, probe, augment_pipe=augment_pipe, terms=["agkd", "cgkd"] if with_kd else None)
    G.requires_grad_(True)
    D.requires_grad_(True)
    real_img, real_c, gen_z, gen_c = batch()
    torch.manual_seed(7)
    loss.accumulate_gradients("Dmain", real_img, real_c, gen_z, gen_c, gain=1, cur_nimg=0)
    return G, D, loss, probe


def test_kd_gradients_reach_d_and_head_but_never_g_or_teacher(tiny_clip):
    G, D, loss, _ = _d_grads(tiny_clip, with_kd=True)
    _, D_plain, _, _ = _d_grads(tiny_clip, with_kd=False)
    plugin = loss.plugins["kd"]
    assert [id(p) for p in loss.d_parameters()] == [id(p) for p in plugin.head.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in plugin.head.parameters())
    assert all(p.grad is None for p in G.parameters())  # the D phase never trains G
    assert all(p.grad is None and not p.requires_grad for p in plugin.teacher.model.parameters())
    changed = [not torch.allclose(a.grad, b.grad) for a, b in zip(D.parameters(), D_plain.parameters())]
    assert any(changed)  # the KD terms add to D's backbone gradients
    # The teacher is not part of the plugin's state (snapshots) or its module tree (device moves, broadcasts).
    assert set(loss.plugin_states()["kd"]) == {"num_steps", "head.fc1.weight", "head.fc1.bias", "head.fc2.weight",
                                               "head.fc2.bias"}
    assert not any(p is q for p in plugin.parameters() for q in plugin.teacher.model.parameters())


@pytest.mark.parametrize("pipe", ["diffaug", "ada"])
def test_teacher_sees_exactly_the_images_d_sees(tiny_clip, pipe, monkeypatch):
    if pipe == "diffaug":
        augment_pipe = DiffAugment("color,translation,cutout")
    else:
        augment_pipe = augment.AugmentPipe(xflip=1, rotate90=1, xint=1, brightness=1, contrast=1)
        augment_pipe.p.fill_(1.0)
    G, D, loss, probe = _d_grads(tiny_clip, with_kd=True, augment_pipe=augment_pipe)
    teacher = loss.plugins["kd"].teacher
    seen = []
    monkeypatch.setattr(teacher, "encode_images", lambda img, grad=False, _f=teacher.encode_images:
                        seen.append(img.detach().clone()) or _f(img, grad))
    probe.seen.clear()
    real_img, real_c, gen_z, gen_c = batch()
    loss.accumulate_gradients("Dmain", real_img, real_c, gen_z, gen_c, gain=1, cur_nimg=0)
    assert len(seen) == 1  # one teacher call per Dmain pass: reals and fakes together
    d_inputs = torch.cat([probe.seen[1][0], probe.seen[0][0]])  # D ran the fakes first, then the reals
    assert torch.equal(seen[0], d_inputs) and not torch.equal(probe.seen[1][0], real_img)


def test_interval_skips_kd_on_other_steps_and_is_state(tiny_clip):
    G, D = tiny_networks()
    loss = make_loss(tiny_clip, G, D, interval=2)
    plugin = loss.plugins["kd"]
    real_img, _, _, _ = batch()
    fc = {"fc": torch.randn(4, 8)}
    results = []
    for _ in range(4):
        results.append(plugin.d_loss(real_img=real_img, real_feats=fc, gen_img=real_img, gen_feats=fc))
        loss.after_step(4, 4)
    assert [r is not None for r in results] == [True, False, True, False]
    assert int(loss.state_dict()["plugins"]["kd"]["num_steps"]) == 4
    counts = collect(lambda: loss.accumulate_gradients("Dmain", *batch(), gain=1))  # step 4: KD on
    assert counts["Loss/KD/agkd"] == 1 and counts["Loss/KD/cgkd"] == 1


def test_skipped_steps_ask_d_for_no_features_and_give_the_plain_gradients(tiny_clip):
    G, D = tiny_networks()
    probe = ProbeD(D)
    loss = make_loss(tiny_clip, G, probe, interval=2)
    plain = StyleGAN2Loss("cpu", G, D, r1_gamma=1)
    loss.after_step(4, 4)  # step 1 of interval 2: KD off
    assert not loss.plugins["kd"].d_loss_active()
    probe.seen.clear()  # set-up's feature-width probe
    grads = []
    for phase_loss in (loss, plain):
        D.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        phase_loss.accumulate_gradients("Dmain", *batch(), gain=1)
        grads.append([p.grad.clone() for p in D.parameters()])
    assert [flag for _, flag in probe.seen] == [False, False]  # fakes, reals: no feature pass
    for got, want in zip(*grads):
        assert torch.allclose(got, want, atol=1e-6)
    loss.after_step(8, 4)  # step 2: KD on, features requested again
    probe.seen.clear()
    counts = collect(lambda: loss.accumulate_gradients("Dmain", *batch(), gain=1))
    assert [flag for _, flag in probe.seen] == [True, True] and counts["Loss/KD/agkd"] == 1


def test_prompts_default_to_class_names_else_the_released_ten(tiny_clip):
    G, D = tiny_networks()
    teacher = build_teacher(tiny_clip[0], ckpt=tiny_clip[1])
    named = make_loss(tiny_clip, G, D, class_names=["cat", "dog"]).plugins["kd"]
    assert torch.allclose(named.text_embeds, teacher.encode_texts(["a photo of a cat", "a photo of a dog"]))
    plain = make_loss(tiny_clip, G, D).plugins["kd"]
    assert plain.text_embeds.shape == (10, TINY_EMBED_DIM)
    assert torch.allclose(plain.text_embeds, teacher.encode_texts(["a airplane", "a automobile", "a bird", "a cat",
                                                                   "a deer", "a dog", "a frog", "a horse", "a ship",
                                                                   "a truck"]))
    given = make_loss(tiny_clip, G, D, class_names=["cat"], prompts=["x", "y", "z"]).plugins["kd"]
    assert torch.allclose(given.text_embeds, teacher.encode_texts(["x", "y", "z"]))


def test_pairwise_diversity_is_g_side_only_when_weighted(tiny_clip):
    G, D = tiny_networks()
    probe = ProbeD(D)
    off = make_loss(tiny_clip, G, probe)
    assert not hasattr(off.plugins["kd"], "g_loss")
    probe.seen.clear()  # set-up probed D's feature width (ProbeD hides D.b4)
    G.requires_grad_(True)
    torch.manual_seed(1)
    off.accumulate_gradients("Gmain", *batch(), gain=1)
    assert not any(flag for _, flag in probe.seen)  # no features asked for in G phases
    grads_off = [p.grad.clone() for p in G.parameters()]
    G.zero_grad(set_to_none=True)
    on = make_loss(tiny_clip, G, D, pd_weight=1.0)
    torch.manual_seed(1)
    counts = collect(lambda: on.accumulate_gradients("Gmain", *batch(), gain=1))
    assert counts["Loss/KD/pd"] == 1 and "Loss/KD/agkd" not in counts
    assert any(not torch.allclose(a, p.grad) for a, p in zip(grads_off, G.parameters()))  # PD reaches G
    assert all(p.grad is None for p in on.plugins["kd"].teacher.model.parameters())


# ----------------------------------------------------------------------------
# train.py integration.


def options(**given):
    opts = {option.name: None for option in kd_plugin.CLI_OPTIONS}
    opts.update(given)
    return opts


def test_plugin_kwargs_from_options(tiny_clip, tmp_path):
    assert kd_plugin.make_plugin_kwargs(options(), dnnlib.EasyDict()) == []
    assert kd_plugin.run_desc(options()) == ""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n\n  a photo of a dog  \n")
    spec, ckpt = tiny_clip
    (kwargs,) = kd_plugin.make_plugin_kwargs(options(kd="cgkd, agkd", kd_weights="cgkd=5", teacher=spec,
                                                     teacher_ckpt=ckpt, prompts=str(prompts), kd_interval=3),
                                             dnnlib.EasyDict())
    assert kwargs == dict(class_name="stylegan2_ada_kd.kd_plugin.KDLoss", terms=["agkd", "cgkd"], weight=10.0,
                          term_weights={"cgkd": 5.0}, dist="l2", teacher=spec, teacher_ckpt=ckpt, teacher_cache=None,
                          preprocess="clip", prompts=["a photo of a cat", "a photo of a dog"], pd_weight=0.0,
                          interval=3)
    json.dumps(kwargs)  # written to training_options.json
    assert kd_plugin.run_desc(options(kd="cgkd,agkd")) == "kd-agkd-cgkd"
    assert kd_plugin.make_plugin_kwargs(options(kd="agkd"), None)[0]["teacher"] == "ViT-B-32:openai"


@pytest.mark.parametrize("given, option, text", [
    (dict(teacher_ckpt="x.pt"), "--teacher-ckpt", "only applies with --kd"),
    (dict(kd="agkd,mixup"), "--kd", "unknown mixup"),
    (dict(kd="agkd,agkd"), "--kd", "repeated"),
    (dict(kd="agkd", kd_weights="cgkd=1"), "--kd-weights", "TERM=WEIGHT"),
    (dict(kd="agkd", kd_weights="agkd=-1"), "--kd-weights", "TERM=WEIGHT"),
    (dict(kd="agkd", teacher_ckpt="/no/such/vitb32.pt"), "--teacher-ckpt", "/no/such/vitb32.pt does not exist"),
    (dict(kd="agkd", prompts="/no/such/prompts.txt"), "--prompts", "/no/such/prompts.txt"),
    (dict(kd="agkd", teacher="/no/such/tiny.json"), "--teacher", "does not exist"),
    (dict(kd="agkd", kd_weights="agkd=nan"), "--kd-weights", "TERM=WEIGHT"),
    (dict(kd="agkd", kd_weights="agkd=inf"), "--kd-weights", "TERM=WEIGHT"),
    (dict(kd="agkd", teacher="ViT-B-32"), "--teacher", "names no weights"),
    (dict(kd="agkd", teacher="NoSuchModel:openai"), "--teacher", "unknown open_clip model"),
])
def test_option_errors_name_the_option(given, option, text):
    with pytest.raises(click.BadParameter) as info:
        kd_plugin.make_plugin_kwargs(options(**given), dnnlib.EasyDict())
    assert info.value.param_hint == f"'{option}'" and text in info.value.message
    assert "\n" not in info.value.message


def test_empty_prompts_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(click.BadParameter, match="has no prompts"):
        kd_plugin.make_plugin_kwargs(options(kd="agkd", prompts=str(empty)), dnnlib.EasyDict())


def test_two_tick_run_logs_kd_stats_and_resumes_exactly(tiny_clip, tmp_path):
    """6 steps straight (2 ticks) == 3 steps, stop, resume from the training state, 3 more steps."""
    data = make_dataset(tmp_path / "data")
    plugins = [kd_spec(tiny_clip, terms=["agkd", "cgkd"], interval=2)]

    def kwargs(name, **overrides):
        return loop_kwargs(tmp_path / name, data, loss_kwargs=dict(class_name="training.loss.StyleGAN2Loss",
                                                                    r1_gamma=1, pl_weight=2, plugins=plugins),
                           **overrides)

    training_loop(**kwargs("straight", total_kimg=0.024, kimg_per_tick=0.012))
    stats = [json.loads(line) for line in (tmp_path / "straight" / "stats.jsonl").read_text().splitlines()]
    assert len(stats) >= 2 and all(stats[-1][f"Loss/KD/{t}"]["num"] > 0 for t in ("agkd", "cgkd", "total"))
    training_loop(**kwargs("first", total_kimg=0.012, kimg_per_tick=0.012))
    state_path = snapshot.find_latest(str(tmp_path / "first"))
    training_loop(**kwargs("resumed", total_kimg=0.024, kimg_per_tick=0.012, resume_pkl=state_path, ada_kimg=100,
                           ema_rampup=None))
    want, got = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert got["cur_nimg"] == want["cur_nimg"] == 24
    for key in ("G", "D", "G_ema", "optimizers"):
        _assert_same(want[key], got[key], key)
    _assert_same(want["ranks"][0]["loss"], got["ranks"][0]["loss"], "loss")
    assert int(got["ranks"][0]["loss"]["plugins"]["kd"]["num_steps"]) == 6


def test_train_cli_dry_run_carries_the_kd_plugin(tiny_clip, tmp_path):
    from click.testing import CliRunner

    import train
    from tests.cli.test_train_cli import options_json

    spec, ckpt = tiny_clip
    data = make_dataset(tmp_path / "cats", res=16)
    command = train.make_command(["stylegan2_ada_kd.kd_plugin"])
    result = CliRunner().invoke(command, ["--outdir", str(tmp_path / "runs"), "--data", data, "--cfg", "tiny", "-n",
                                          "--kd", "agkd,cgkd", "--teacher", spec, "--teacher-ckpt", ckpt])
    assert result.exit_code == 0, result.output
    tree = options_json(result.output)
    assert tree["run_dir"].endswith("-cats-tiny-kd-agkd-cgkd")
    (plugin,) = tree["loss_kwargs"]["plugins"]
    assert plugin["class_name"] == kd_plugin.CLASS_NAME and plugin["teacher_ckpt"] == ckpt
    missing = CliRunner().invoke(command, ["--outdir", str(tmp_path / "runs"), "--data", data, "-n", "--kd", "agkd",
                                           "--teacher-ckpt", str(tmp_path / "vitb32.pt")])
    assert missing.exit_code != 0 and "--teacher-ckpt" in missing.output
    assert "vitb32.pt does not exist" in missing.output
