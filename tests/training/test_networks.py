"""training/networks.py: shapes, conditioning, truncation, noise, w_avg, features, pickling, R1, fp16 on CPU.

Tiny networks (few channels, batch 2-4) keep the whole file fast; numerical parity with the
official networks is tested in test_networks_parity.py.
"""

import copy
import io
import pickle

import numpy as np
import pytest
import torch

from torch_utils import persistence
from torch_utils.ops import conv2d_gradfix
from training import networks

ARCHS = ["orig", "skip", "resnet"]
TINY = dict(channel_base=128, channel_max=8)  # 8 channels up to 16x16, fewer above


def make_G(res=16, c_dim=0, arch="skip", seed=0, mapping_kwargs=None, **synthesis_kwargs):
    torch.manual_seed(seed)
    synthesis_kwargs = dict(TINY, architecture=arch, **synthesis_kwargs)
    return networks.Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=res, img_channels=3,
                              mapping_kwargs=dict(num_layers=2, **(mapping_kwargs or {})),
                              synthesis_kwargs=synthesis_kwargs)


def make_D(res=16, c_dim=0, arch="resnet", seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = dict(TINY, **kwargs)
    kwargs.setdefault("epilogue_kwargs", dict(mbstd_group_size=2))
    return networks.Discriminator(c_dim=c_dim, img_resolution=res, img_channels=3, architecture=arch, **kwargs)


def set_noise_strength(G, value):
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith("noise_strength"):
                param.fill_(value)


def inputs(G, n=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([n, G.z_dim], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(n) % max(G.c_dim, 1), max(G.c_dim, 1)).float()[:, :G.c_dim]
    return z, c


# ----------------------------------------------------------------------------
# Shapes.


@pytest.mark.parametrize("g_arch", ARCHS)
@pytest.mark.parametrize("d_arch", ARCHS)
def test_shapes_every_architecture_pair(g_arch, d_arch):
    G = make_G(res=16, c_dim=2, arch=g_arch)
    D = make_D(res=16, c_dim=2, arch=d_arch)
    z, c = inputs(G)
    img = G(z, c)
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32
    logits = D(img, c)
    assert logits.shape == (2, 1) and logits.dtype == torch.float32
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()


def test_num_ws_per_architecture():
    # 4x4: conv1; each later block: conv0 + conv1; plus the last block's ToRGB.
    for res, expected in [(4, 2), (8, 4), (16, 6), (1024, 18)]:
        for arch in ARCHS:
            assert make_G(res=res, arch=arch, channel_base=1024, channel_max=2).num_ws == expected


@pytest.mark.parametrize("res", [4, 8, 32, 128, 1024])
def test_generator_resolutions(res):
    G = make_G(res=res, channel_base=2048, channel_max=4)  # >= 2 channels even at 1024
    z, c = inputs(G)
    with torch.no_grad():
        img = G(z, c, noise_mode="const")
    assert img.shape == (2, 3, res, res)
    assert [name for name, _ in G.synthesis.named_children()] == [f"b{2**i}" for i in range(2, int(np.log2(res)) + 1)]


@pytest.mark.parametrize("res", [8, 64, 1024])
def test_discriminator_resolutions(res):
    D = make_D(res=res, channel_base=2048, channel_max=4)
    with torch.no_grad():
        logits = D(torch.randn([2, 3, res, res]), None)
    assert logits.shape == (2, 1)


def test_invalid_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="power of two"):
        make_G(res=24)
    with pytest.raises(ValueError, match="0 channels"):
        make_G(res=256, channel_base=128)
    with pytest.raises(ValueError, match="img_resolution >= 8"):
        make_D(res=4)
    with pytest.raises(ValueError, match="architecture"):
        make_G(arch="bogus")
    G = make_G(res=8)
    with pytest.raises(ValueError, match="noise_mode"):
        G(*inputs(G), noise_mode="fixed")
    D = make_D(res=8)
    with pytest.raises(ValueError, match="multiple of the group size"):
        D(torch.randn([3, 3, 8, 8]), None)


# ----------------------------------------------------------------------------
# Mapping: conditioning, truncation, w_avg.


def test_label_changes_generator_and_discriminator_outputs():
    G = make_G(res=8, c_dim=3).eval()
    D = make_D(res=8, c_dim=3).eval()
    z, _ = inputs(G)
    c0 = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    c1 = torch.tensor([[0, 1.0, 0], [0, 1.0, 0]])
    with torch.no_grad():
        assert not torch.allclose(G(z, c0, noise_mode="const"), G(z, c1, noise_mode="const"))
        img = torch.randn([2, 3, 8, 8])
        assert not torch.allclose(D(img, c0), D(img, c1))


@pytest.mark.parametrize("cutoff", [None, 3])
def test_truncation_moves_ws_toward_w_avg(cutoff):
    G = make_G(res=16).eval()
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn([G.w_dim]))
    z, c = inputs(G)
    psi = 0.7
    with torch.no_grad():
        ws = G.mapping(z, c)
        ws_psi = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
    w_avg = G.mapping.w_avg
    n = G.num_ws if cutoff is None else cutoff
    torch.testing.assert_close(ws_psi[:, :n], w_avg + psi * (ws[:, :n] - w_avg), rtol=0, atol=1e-6)
    assert torch.equal(ws_psi[:, n:], ws[:, n:])
    assert ws.shape == (2, G.num_ws, G.w_dim)
    assert torch.equal(ws[:, 0], ws[:, -1])  # one w broadcast to every layer


def test_w_avg_update_follows_ema_in_training_mode_only():
    G = make_G(res=8)
    beta = G.mapping.w_avg_beta
    z, c = inputs(G, n=4)
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn([G.w_dim]))
    before = G.mapping.w_avg.clone()
    G.mapping.eval()
    w = G.mapping(z, c)[:, 0]
    assert torch.equal(G.mapping.w_avg, before)  # eval mode leaves it alone
    G.mapping.train()
    G.mapping(z, c, skip_w_avg_update=True)
    assert torch.equal(G.mapping.w_avg, before)
    G.mapping(z, c)
    torch.testing.assert_close(G.mapping.w_avg, beta * before + (1 - beta) * w.detach().mean(dim=0), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------
# Noise.


def test_noise_modes():
    G = make_G(res=16).eval()
    set_noise_strength(G, 0.5)
    z, c = inputs(G)
    with torch.no_grad():
        ws = G.mapping(z, c)
        const_a = G.synthesis(ws, noise_mode="const")
        const_b = G.synthesis(ws, noise_mode="const")
        random_a = G.synthesis(ws, noise_mode="random")
        random_b = G.synthesis(ws, noise_mode="random")
        none = G.synthesis(ws, noise_mode="none")
        for name, buf in G.named_buffers():
            if name.endswith("noise_const"):
                buf.zero_()
        zero_noise = G.synthesis(ws, noise_mode="const")
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(random_a, random_b)
    assert not torch.allclose(const_a, none)
    torch.testing.assert_close(none, zero_noise, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------
# Discriminator features.


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("c_dim", [0, 3])
def test_return_features_shapes_and_unchanged_logits(arch, c_dim):
    D = make_D(res=16, c_dim=c_dim, arch=arch).eval()
    img = torch.randn([4, 3, 16, 16])
    c = torch.nn.functional.one_hot(torch.arange(4) % 3, 3).float()[:, :c_dim]
    with torch.no_grad():
        logits = D(img, c)
        logits_f, feats = D(img, c, return_features=True)
    assert torch.equal(logits, logits_f)
    c4 = D.b4.in_channels
    assert feats["b4_input"].shape == (4, c4, 4, 4)
    assert feats["fc"].shape == (4, c4)
    with torch.no_grad():
        out = D.b4.out(feats["fc"])
        if c_dim:
            cmap = D.mapping(None, c)
            expected = (out * cmap).sum(dim=1, keepdim=True) / np.sqrt(D.b4.cmap_dim)
        else:
            expected = out
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)


def test_features_carry_gradients():
    D = make_D(res=8)
    img = torch.randn([2, 3, 8, 8], requires_grad=True)
    _, feats = D(img, None, return_features=True)
    grad, = torch.autograd.grad(feats["fc"].sum() + feats["b4_input"].mean(), img)
    assert grad.abs().sum() > 0


# ----------------------------------------------------------------------------
# Pickling and copying.


def _pickle_round_trip(obj):
    buf = io.BytesIO()
    pickle.dump(obj, buf)
    return pickle.loads(buf.getvalue())


def test_pickle_round_trip_keeps_outputs():
    G = make_G(res=8, c_dim=2).eval()
    D = make_D(res=8, c_dim=2).eval()
    G2, D2 = _pickle_round_trip(G), _pickle_round_trip(D)
    for net in (G2, D2):
        assert persistence.is_persistent(net)
        # Rebuilt from the source embedded in the pickle, not from the imported module.
        assert type(net).__module__ != networks.__name__
    assert type(G2).__name__ == "Generator" and type(D2).__name__ == "Discriminator"
    z, c = inputs(G)
    with torch.no_grad():
        img = G(z, c, noise_mode="const")
        assert torch.equal(G2(z, c, noise_mode="const"), img)
        assert torch.equal(D2(img, c), D(img, c))
    assert G2.init_kwargs == G.init_kwargs


def test_deepcopy_is_independent_and_identical():
    G = make_G(res=8).eval()
    D = make_D(res=8).eval()
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    assert type(G2) is type(G) and type(D2) is type(D)
    z, c = inputs(G)
    with torch.no_grad():
        img = G(z, c, noise_mode="const")
        assert torch.equal(G2(z, c, noise_mode="const"), img)
        assert torch.equal(D2(img, c), D(img, c))
        G2.synthesis.b4.const.add_(1)
    assert not torch.equal(G2.synthesis.b4.const, G.synthesis.b4.const)


# ----------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize("arch", ARCHS)
def test_r1_double_backward_through_discriminator(arch):
    D = make_D(res=16, c_dim=2, arch=arch)
    img = torch.randn([4, 3, 16, 16], requires_grad=True)
    c = torch.nn.functional.one_hot(torch.arange(4) % 2, 2).float()
    logits = D(img, c)
    with conv2d_gradfix.no_weight_gradients():
        r1_grads, = torch.autograd.grad(logits.sum(), img, create_graph=True, only_inputs=True)
    (r1_grads.square().sum() * 5 + logits.mean() * 0).backward()
    grads = {name: p.grad for name, p in D.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
        [name for name, g in grads.items() if g is None or not torch.isfinite(g).all()]
    assert grads["b4.fc.weight"].abs().sum() > 0


def test_path_length_style_double_backward_through_generator():
    G = make_G(res=16, arch="skip").train()
    z, c = inputs(G)
    ws = G.mapping(z, c)
    img = G.synthesis(ws)
    noise = torch.randn_like(img)
    with conv2d_gradfix.no_weight_gradients():
        pl_grads, = torch.autograd.grad((img * noise).sum(), ws, create_graph=True, only_inputs=True)
    pl_grads.square().sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in G.parameters())
    assert G.synthesis.b16.conv1.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------
# Mixed precision on the CPU and Freeze-D.


def _dtypes_seen(module, run):
    seen = set()

    def hook(_mod, _inputs, outputs):
        for t in outputs if isinstance(outputs, tuple) else (outputs,):
            if isinstance(t, torch.Tensor):
                seen.add(t.dtype)

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    return result, seen


@pytest.mark.parametrize("channels_last", [False, True])
def test_fp16_resolutions_run_in_float32_on_cpu_and_match(channels_last):
    G16 = make_G(res=16, num_fp16_res=2, conv_clamp=256, fp16_channels_last=channels_last).eval()
    G32 = make_G(res=16, conv_clamp=256).eval()
    G32.load_state_dict(G16.state_dict())
    D16 = make_D(res=16, num_fp16_res=2, conv_clamp=256, block_kwargs=dict(fp16_channels_last=channels_last)).eval()
    D32 = make_D(res=16, conv_clamp=256).eval()
    D32.load_state_dict(D16.state_dict())
    assert G16.synthesis.b16.use_fp16 and D16.b16.use_fp16  # marked for fp16 ...
    z, c = inputs(G16)
    with torch.no_grad():
        img16, seen_g = _dtypes_seen(G16, lambda: G16(z, c, noise_mode="const"))
        logits16, seen_d = _dtypes_seen(D16, lambda: D16(img16, c))
        img32, logits32 = G32(z, c, noise_mode="const"), D32(img16, c)
    assert seen_g == {torch.float32} and seen_d == {torch.float32}  # ... but float32 on the CPU
    if channels_last:
        # channels_last weights make the CPU convolution sum in another order: equal up to rounding.
        torch.testing.assert_close(img16, img32, rtol=0, atol=1e-5)
        torch.testing.assert_close(logits16, logits32, rtol=0, atol=1e-5)
    else:
        assert torch.equal(img16, img32) and torch.equal(logits16, logits32)


def test_freeze_layers_turns_weights_into_buffers_keeping_names():
    D = make_D(res=16)  # b16: fromrgb, conv0, conv1, skip (layers 0-3); b8: conv0, conv1, skip (4-6)
    frozen = make_D(res=16, block_kwargs=dict(freeze_layers=4))
    assert sorted(D.state_dict()) == sorted(frozen.state_dict())  # same names; buffers just list after params
    trainable = {name for name, _ in frozen.named_parameters()}
    assert not any(name.startswith("b16.") for name in trainable)
    assert "b8.conv0.weight" in trainable and "b4.fc.weight" in trainable
    assert frozen.b16.conv0.weight.requires_grad is False


# ----------------------------------------------------------------------------
# Demodulation: the factored coefficients (default) against the reference's modulated-weight norm.


def test_demodulation_coefficients_match_explicit_norms():
    torch.manual_seed(0)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 4, dtype=torch.float64)
    expected = torch.empty(3, 5, dtype=torch.float64)
    for n in range(3):
        for o in range(5):
            expected[n, o] = 1 / np.sqrt(float(((weight[o] * styles[n].reshape(4, 1, 1)) ** 2).sum()) + 1e-8)
    torch.testing.assert_close(networks.demodulation_coefficients(weight, styles), expected, rtol=1e-12, atol=0)


def _modconv_outputs_and_grads(monkeypatch, reference, **kwargs):
    """modulated_conv2d output, first-order gradients and one second-order gradient (as path-length reg)."""
    if reference:
        monkeypatch.setenv("SG2KD_DISABLE_CUSTOM_OPS", "1")
    else:
        monkeypatch.delenv("SG2KD_DISABLE_CUSTOM_OPS", raising=False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64, generator=gen).requires_grad_()
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64, generator=gen).requires_grad_()
    styles = torch.randn(3, 4, dtype=torch.float64, generator=gen).requires_grad_()
    y = networks.modulated_conv2d(x, weight, styles, padding=1, **kwargs)
    probe = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    grads = torch.autograd.grad((y * probe).sum(), [x, weight, styles], create_graph=True)
    second = torch.autograd.grad(grads[2].square().sum(), [weight, styles])
    return [y.detach()] + [g.detach() for g in grads] + list(second)


@pytest.mark.parametrize("fused_modconv", [False, True])
@pytest.mark.parametrize("up", [1, 2])
def test_factored_demodulation_equals_reference_values_and_gradients(monkeypatch, fused_modconv, up):
    kwargs = dict(fused_modconv=fused_modconv, up=up, flip_weight=(up == 1))
    fast = _modconv_outputs_and_grads(monkeypatch, reference=False, **kwargs)
    ref = _modconv_outputs_and_grads(monkeypatch, reference=True, **kwargs)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_reference_switch_selects_the_demodulation(monkeypatch):
    calls = []
    original = networks.demodulation_coefficients
    monkeypatch.setattr(networks, "demodulation_coefficients", lambda *a: calls.append(1) or original(*a))
    x, weight, styles = torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(2, 4)
    monkeypatch.delenv("SG2KD_DISABLE_CUSTOM_OPS", raising=False)
    networks.modulated_conv2d(x, weight, styles, padding=1, fused_modconv=False)
    assert len(calls) == 1
    monkeypatch.setenv("SG2KD_DISABLE_CUSTOM_OPS", "1")
    networks.modulated_conv2d(x, weight, styles, padding=1, fused_modconv=False)
    assert len(calls) == 1  # the reference's formulation, no factored call
    networks.modulated_conv2d(x, weight, styles, padding=1, demodulate=False, fused_modconv=False)
    monkeypatch.delenv("SG2KD_DISABLE_CUSTOM_OPS")
    networks.modulated_conv2d(x, weight, styles, padding=1, demodulate=False, fused_modconv=False)
    assert len(calls) == 1  # no demodulation, no coefficients
