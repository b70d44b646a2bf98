"""StyleGAN2Loss: phases and their stats, R1 by hand, path length, style mixing and the plugin protocol."""

import numpy as np
import pytest
import torch

import dnnlib
from torch_utils import training_stats
from training import networks
from training.loss import StyleGAN2Loss

Z_DIM = 8


pytestmark = pytest.mark.usefixtures("pure_pytorch_ops")


class RecordingPlugin(torch.nn.Module):
    """Test plugin: uses every hook, checks the documented shapes, counts calls in a buffer.

    calls = [setup, augment_real, d_loss, g_loss, after_step, observe_logits]. Its head reads D's 'fc' features and
    is trained by D's optimizer. nan_at_nimg: make the D term NaN at that cur_nimg (non-finite grads).
    """

    needs_features = True
    plugin_name = "recorder"

    def __init__(self, replace_first_real=True, nan_at_nimg=None):
        super().__init__()
        self.replace_first_real = replace_first_real
        self.nan_at_nimg = nan_at_nimg
        self.register_buffer("calls", torch.zeros(6, dtype=torch.int64))
        self.register_buffer("last_nimg", torch.zeros([], dtype=torch.int64))
        self.mixed = []  # the batches augment_real returned (latest first)

    def setup(self, ctx):
        for key in ("device", "G", "D", "augment_pipe", "run_G", "run_D", "augment", "c_dim", "batch_gpu", "rank",
                    "num_gpus", "resuming", "num_images", "resolution"):
            assert key in ctx, key
        self.ctx = ctx
        z = torch.zeros([2, ctx.G.z_dim], device=ctx.device)
        c = torch.zeros([2, ctx.c_dim], device=ctx.device)
        with torch.no_grad():
            img = ctx.run_G(z, c)
            logits, feats = ctx.run_D(img, c, return_features=True)
        assert logits.shape == (2, 1) and feats["fc"].ndim == 2 and feats["b4_input"].shape[2:] == (4, 4)
        self.head = torch.nn.Linear(feats["fc"].shape[1], 3)
        self.calls[0] += 1

    def augment_real(self, real_img, real_c, gen_img, gen_c):
        assert real_img.shape == gen_img.shape and real_img.ndim == 4 and not gen_img.requires_grad
        assert real_c.shape[0] == gen_c.shape[0] == real_img.shape[0]
        self.calls[1] += 1
        mixed = real_img.clone()
        if self.replace_first_real:
            mixed[0] = gen_img[0]
        self.mixed.insert(0, mixed)
        del self.mixed[2:]
        return mixed

    def _check_branch(self, img, logits, feats, c):
        n = img.shape[0]
        assert img.ndim == 4 and logits.shape == (n, 1) and c.shape[0] == n
        assert feats["fc"].shape[0] == n and feats["b4_input"].shape[0] == n

    def d_loss(self, real_img, real_c, real_logits, real_feats, gen_img, gen_c, gen_logits, gen_feats, gen_z,
               real_raw, gen_raw):
        self._check_branch(real_img, real_logits, real_feats, real_c)
        self._check_branch(gen_img, gen_logits, gen_feats, gen_c)
        assert gen_z.shape == (gen_img.shape[0], self.ctx.G.z_dim) and real_img.shape == gen_img.shape
        assert real_raw.shape == gen_raw.shape == real_img.shape and torch.equal(real_raw, self.mixed[0])
        self.calls[2] += 1
        term = 1e-3 * (self.head(real_feats["fc"]).square().mean() + self.head(gen_feats["fc"]).square().mean())
        if self.nan_at_nimg is not None and self.ctx.cur_nimg == self.nan_at_nimg:
            term = term * float("nan")
        training_stats.report("Loss/recorder/d", term)
        return term

    def g_loss(self, gen_img, gen_c, gen_logits, gen_feats, gen_z, **optional):
        self._check_branch(gen_img, gen_logits, gen_feats, gen_c)
        assert gen_img.requires_grad and optional["gen_raw"].requires_grad  # the graph reaches back to G
        self.calls[3] += 1
        return 1e-3 * self.head(gen_feats["fc"]).mean()

    def observe_logits(self, phase, real_logits, gen_logits):
        assert phase in ("Dmain", "Dreg") and not real_logits.requires_grad and real_logits.shape[1] == 1
        assert (gen_logits is None) == (phase == "Dreg")
        self.calls[5] += 1

    def after_step(self, cur_nimg, batch_size):
        assert cur_nimg > int(self.last_nimg) and batch_size > 0
        self.calls[4] += 1
        self.last_nimg.fill_(cur_nimg)


class ProbeD(torch.nn.Module):
    """Wraps a discriminator and records every input and the return_features flag."""

    def __init__(self, D):
        super().__init__()
        self.D = D
        self.c_dim = D.c_dim
        self.seen = []

    def forward(self, img, c, return_features=False):
        self.seen.append((img.detach().clone(), return_features))
        return self.D(img, c, return_features=return_features)


def tiny_networks(c_dim=0, res=8, seed=0):
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=Z_DIM, c_dim=c_dim, w_dim=Z_DIM, img_resolution=res, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=8))
    D = networks.Discriminator(c_dim=c_dim, img_resolution=res, img_channels=3, channel_base=64, channel_max=8,
                               epilogue_kwargs=dict(mbstd_group_size=2))
    return G, D


def batch(n=4, res=8, c_dim=0, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand([n, 3, res, res], generator=gen) * 2 - 1, torch.zeros([n, c_dim]),
            torch.randn([n, Z_DIM], generator=gen), torch.zeros([n, c_dim]))


def run_phase(loss, phase, gain=1, seed=1):
    real_img, real_c, gen_z, gen_c = batch(seed=seed)
    loss.accumulate_gradients(phase, real_img, real_c, gen_z, gen_c, gain=gain, cur_nimg=0)


def collect(fn):
    collector = training_stats.Collector(regex=".*")
    fn()
    collector.update()
    return {name: collector.num(name) for name in collector.names()}


@pytest.mark.parametrize("phase, expected", [
    ("Gmain", {"Loss/scores/fake", "Loss/signs/fake", "Loss/G/loss"}),
    ("Greg", {"Loss/pl_penalty", "Loss/G/reg"}),
    ("Dmain", {"Loss/scores/fake", "Loss/signs/fake", "Loss/scores/real", "Loss/signs/real", "Loss/D/loss"}),
    ("Dreg", {"Loss/scores/real", "Loss/signs/real", "Loss/r1_penalty", "Loss/D/reg"}),
    ("Dboth", {"Loss/scores/fake", "Loss/signs/fake", "Loss/scores/real", "Loss/signs/real", "Loss/D/loss",
               "Loss/r1_penalty", "Loss/D/reg"}),
])
def test_phases_report_reference_stats_and_fill_gradients(phase, expected):
    G, D = tiny_networks()
    loss = StyleGAN2Loss("cpu", G, D, r1_gamma=1, pl_weight=2, style_mixing_prob=0.9)
    module = G if phase.startswith("G") else D
    module.requires_grad_(True)
    counts = collect(lambda: run_phase(loss, phase))
    assert set(counts) == expected
    assert all(counts[name] == (2 if phase == "Greg" else 4) for name in expected)  # Greg: batch // pl_batch_shrink
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_r1_equals_hand_computation():
    """r1_penalty = ||d sum(D(x)) / dx||^2 per sample; D's gradient is that of gain * gamma/2 * mean(r1)."""

    class SmoothD(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 8 * 8, 1)
            self.c_dim = 0

        def forward(self, img, c):
            return self.fc(torch.tanh(self.conv(img)).flatten(1))

    torch.manual_seed(0)
    D = SmoothD().requires_grad_(True)
    G, _ = tiny_networks()
    gamma, gain = 3.0, 16
    loss = StyleGAN2Loss("cpu", G, D, r1_gamma=gamma)
    real_img = torch.randn([4, 3, 8, 8])
    collector = training_stats.Collector(regex="Loss/r1_penalty")
    loss.accumulate_gradients("Dreg", real_img, torch.zeros([4, 0]), torch.randn([4, Z_DIM]), torch.zeros([4, 0]),
                              gain=gain)
    collector.update()
    got_grads = [p.grad.clone() for p in D.parameters()]

    x = real_img.clone().requires_grad_(True)
    input_grad = torch.autograd.grad(D(x, None).sum(), x, create_graph=True)[0]
    penalty = input_grad.square().sum([1, 2, 3])
    assert collector.mean("Loss/r1_penalty") == pytest.approx(float(penalty.detach().mean()), rel=1e-5)
    want_grads = torch.autograd.grad(penalty.mean() * (gamma / 2) * gain, list(D.parameters()), allow_unused=True)
    for got, want, param in zip(got_grads, want_grads, D.parameters()):
        torch.testing.assert_close(got, torch.zeros_like(param) if want is None else want, rtol=1e-4, atol=1e-6)


def test_path_length_mean_follows_its_ema():
    G, D = tiny_networks()
    loss = StyleGAN2Loss("cpu", G, D, pl_weight=2, pl_decay=0.25)
    G.requires_grad_(True)
    run_phase(loss, "Greg")
    first = float(loss.pl_mean)
    assert first > 0
    collector = training_stats.Collector(regex="Loss/pl_penalty")
    run_phase(loss, "Greg", seed=2)
    collector.update()
    assert float(loss.pl_mean) != first
    assert loss.state_dict()["pl_mean"] == pytest.approx(float(loss.pl_mean))
    assert collector.num("Loss/pl_penalty") == 2


def test_style_mixing_keeps_w_avg_of_the_mixing_pass_out():
    G, D = tiny_networks()
    loss = StyleGAN2Loss("cpu", G, D, style_mixing_prob=1.0)
    z = torch.randn([4, Z_DIM])
    img, ws = loss.run_G(z, torch.zeros([4, 0]))
    assert img.shape == (4, 3, 8, 8) and ws.shape == (4, G.num_ws, Z_DIM)
    first = G.mapping(z, torch.zeros([4, 0]), skip_w_avg_update=True)
    assert torch.equal(ws[:, 0], first[:, 0]) and not torch.equal(ws[:, -1], first[:, -1])


def test_plain_path_does_not_ask_d_for_features():
    G, D = tiny_networks()
    probe = ProbeD(D)
    loss = StyleGAN2Loss("cpu", G, probe, r1_gamma=1)
    for phase in ("Gmain", "Dmain", "Dreg"):
        run_phase(loss, phase)
    assert probe.seen and not any(flag for _, flag in probe.seen)


def test_plugin_hooks_and_shared_mixed_batch():
    """Every hook runs with the documented shapes; R1 sees the batch augment_real made in Dmain."""
    G, D = tiny_networks()
    probe = ProbeD(D)
    loss = StyleGAN2Loss("cpu", G, probe, r1_gamma=1, plugins=[dict(class_name=f"{__name__}.RecordingPlugin")],
                         plugin_context=dnnlib.EasyDict(batch_gpu=4, num_images=10, resolution=8))
    plugin = loss.plugins["recorder"]
    assert [id(p) for p in loss.d_parameters()] == [id(p) for p in plugin.head.parameters()]
    real_img, real_c, gen_z, gen_c = batch()
    G.requires_grad_(True)
    loss.accumulate_gradients("Gmain", real_img, real_c, gen_z, gen_c, gain=1, cur_nimg=0)
    D.requires_grad_(True)
    probe.seen.clear()
    loss.accumulate_gradients("Dmain", real_img, real_c, gen_z, gen_c, gain=1, cur_nimg=0)
    assert all(flag for _, flag in probe.seen)  # the plugin asked for features
    assert plugin.head.weight.grad is not None and plugin.head.weight.grad.abs().sum() > 0
    dmain_reals = probe.seen[-1][0]
    loss.accumulate_gradients("Dreg", real_img, real_c, gen_z, gen_c, gain=16, cur_nimg=0)
    assert torch.equal(probe.seen[-1][0], dmain_reals)  # no augment stage: D saw the same mixed batch
    assert torch.equal(dmain_reals, plugin.mixed[0]) and not torch.equal(dmain_reals, real_img)
    loss.after_step(4, 4)
    assert plugin.calls.tolist() == [1, 1, 1, 1, 1, 2]
    state = loss.state_dict()
    assert set(state["plugins"]) == {"recorder"} and "head.weight" in state["plugins"]["recorder"]
    assert set(loss.plugin_states()["recorder"]) == {"calls", "last_nimg", "head.weight", "head.bias"}
    with pytest.raises(ValueError, match="plugins"):
        StyleGAN2Loss("cpu", G, D).load_state_dict(state)


def test_joint_d_backward_equals_separate_passes():
    """A d_loss plugin switches Dmain to one backward pass; a zero term must not change D's gradients."""

    class ZeroTerm(torch.nn.Module):
        def d_loss(self, real_logits, gen_logits, **_):
            return (real_logits.sum() + gen_logits.sum()) * 0

    grads = []
    for plugins in ([], [ZeroTerm()]):
        G, D = tiny_networks()
        loss = StyleGAN2Loss("cpu", G, D, r1_gamma=1, plugins=plugins)
        D.requires_grad_(True)
        torch.manual_seed(5)
        run_phase(loss, "Dboth")
        grads.append([p.grad.clone() for p in D.parameters()])
    for separate, joint in zip(*grads):
        torch.testing.assert_close(separate, joint, rtol=1e-5, atol=1e-7)


def test_bad_plugin_spec_and_phase_are_clear_errors():
    G, D = tiny_networks()
    with pytest.raises(TypeError, match="class_name"):
        StyleGAN2Loss("cpu", G, D, plugins=["lecam"])
    with pytest.raises(ValueError, match="unknown phase"):
        run_phase(StyleGAN2Loss("cpu", G, D), "Dfoo")


def test_augment_stage_sees_every_d_input():
    """The augment stage runs on reals, fakes and the R1 path (counted by a wrapper)."""

    class CountingAugment(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, img):
            self.calls += 1
            return img.flip(3)

    G, D = tiny_networks()
    pipe = CountingAugment()
    loss = StyleGAN2Loss("cpu", G, D, augment_pipe=pipe, r1_gamma=1)
    D.requires_grad_(True)
    run_phase(loss, "Dmain")
    run_phase(loss, "Dreg")
    G.requires_grad_(True)
    run_phase(loss, "Gmain")
    assert pipe.calls == 4
    assert np.isfinite(float(next(D.parameters()).grad.abs().sum()))
