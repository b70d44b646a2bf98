"""InsGen: InfoNCE against a hand computation, the FIFO queues, heads and momentum copies, options."""

import math

import click
import pytest
import torch

import dnnlib
from stylegan2_ada_kd import insgen
from training.networks import Discriminator


def test_info_nce_equals_hand_computation():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    key = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])
    # Logits / T (T = 0.5), positive first: row 0 [1.2, 2, -2, 0], row 1 [2, 0, 0, -2].
    row0 = -1.2 + math.log(math.exp(1.2) + math.exp(2) + math.exp(-2) + 1)
    row1 = -2 + math.log(math.exp(2) + 1 + 1 + math.exp(-2))
    loss = insgen.info_nce(query, key, queue, temperature=0.5)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    loss.backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()


def test_queue_is_fifo_with_fixed_size():
    size, dim = 5, 2
    queue, ptr = torch.zeros([size, dim]), torch.zeros([], dtype=torch.int64)
    ref_queue, ref_ptr = torch.zeros([size, dim]), 0
    counter = 0
    for num in (3, 4, 1, 7, 5, 2):
        keys = torch.arange(counter, counter + num, dtype=torch.float32)[:, None].repeat(1, dim)
        counter += num
        insgen.enqueue(queue, ptr, keys)
        for row in keys:  # explicit one-by-one reference
            ref_queue[ref_ptr] = row
            ref_ptr = (ref_ptr + 1) % size
        assert torch.equal(queue, ref_queue) and int(ptr) == ref_ptr
        assert queue.shape == (size, dim)
    # After all writes, the queue holds exactly the newest `size` keys.
    assert sorted(queue[:, 0].tolist()) == list(range(counter - size, counter))


@pytest.mark.parametrize("num, xflip, want", [(100, False, 5), (100, True, 10), (160, True, 16), (389, False, 19),
                                               (12, False, 1), (12, True, 2)])
def test_default_queue_size_is_five_percent_doubled_with_mirror(num, xflip, want):
    assert insgen.default_queue_size(num, xflip) == want


@pytest.fixture
def tiny(pure_pytorch_ops):
    """An InsGen plugin set up on a tiny D (8x8, 8 channels), identity augmentation, a fake G."""
    torch.manual_seed(0)
    D = Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=8,
                      epilogue_kwargs=dict(mbstd_group_size=2)).requires_grad_(False)
    G_calls = []

    def run_G(z, c):
        G_calls.append(z.clone())
        return torch.tanh(z[:, :3, None, None].repeat(1, 1, 8, 8))

    ctx = dnnlib.EasyDict(D=D, device=torch.device("cpu"), augment=lambda img: img, run_G=run_G, batch_gpu=4,
                          img_channels=3, resolution=8, c_dim=0, cur_nimg=0)
    plugin = insgen.InsGen(queue_size=6)
    plugin.setup(ctx)
    return dnnlib.EasyDict(plugin=plugin, D=D, ctx=ctx, G_calls=G_calls)


def test_setup_sizes_heads_from_d_and_keeps_momentum_copies_out_of_the_optimizer(tiny):
    plugin = tiny.plugin
    assert [tuple(p.shape) for p in plugin.real_head.parameters()] == [(8, 8), (8,), (128, 8), (128,)]
    trained = {id(p) for p in plugin.d_parameters()}
    assert trained == {id(p) for p in list(plugin.real_head.parameters()) + list(plugin.fake_head.parameters())}
    assert not any(p.requires_grad for p in plugin.momentum_D.parameters())
    for p_m, p in zip(plugin.momentum_D.parameters(), tiny.D.parameters()):
        assert torch.equal(p_m, p) and p_m is not p
    state = plugin.state_dict()
    for name in ("real_queue", "fake_queue", "real_ptr", "fake_ptr", "momentum_D.b4.fc.weight",
                 "momentum_real_head.0.weight", "real_head.0.weight", "fake_head.2.bias"):
        assert name in state, name
    assert torch.allclose(plugin.real_queue.norm(dim=1), torch.ones(6))


def _feats(D, img):
    return D(img, torch.zeros([img.shape[0], 0]), return_features=True)


def test_d_loss_trains_heads_and_d_enqueues_after_the_step_and_g_loss_reads_only(tiny):
    plugin, D = tiny.plugin, tiny.D
    for p in list(D.parameters()) + plugin.d_parameters():
        p.requires_grad_(True)
    real, gen = torch.rand([4, 3, 8, 8]) * 2 - 1, torch.rand([4, 3, 8, 8]) * 2 - 1
    real_logits, real_feats = _feats(D, real)
    gen_logits, gen_feats = _feats(D, gen)
    gen_z = torch.randn([4, 8])
    queues = plugin.real_queue.clone(), plugin.fake_queue.clone()
    loss = plugin.d_loss(real_img=real, real_c=None, real_logits=real_logits, real_feats=real_feats, gen_img=gen,
                         gen_c=torch.zeros([4, 0]), gen_logits=gen_logits, gen_feats=gen_feats, gen_z=gen_z,
                         real_raw=real, gen_raw=gen)
    # The second fake view comes from z + N(0, 0.15^2): the perturbation is small but not zero.
    delta = tiny.G_calls[-1] - gen_z
    assert 0 < delta.std().item() < 0.5
    loss.backward()
    assert all(p.grad is not None for p in plugin.d_parameters()) and D.b8.conv0.weight.grad is not None
    assert all(p.grad is None for p in plugin.momentum_D.parameters())
    assert torch.equal(plugin.real_queue, queues[0]) and torch.equal(plugin.fake_queue, queues[1])
    g_term = plugin.g_loss(gen_img=gen, gen_c=torch.zeros([4, 0]), gen_logits=gen_logits, gen_feats=gen_feats,
                           gen_z=gen_z, gen_raw=gen)
    assert g_term.item() > 0 and len(plugin._pending["fake"]) == 1  # the G term enqueues nothing
    old_momentum = [p.clone() for p in plugin.momentum_D.parameters()]
    with torch.no_grad():
        for p in D.parameters():
            p.add_(1.0)
    plugin.after_step(cur_nimg=4, batch_size=4)
    for p_m, old, p in zip(plugin.momentum_D.parameters(), old_momentum, D.parameters()):
        assert torch.allclose(p_m, 0.999 * old + 0.001 * p, atol=1e-6)
    assert int(plugin.real_ptr) == 4 and int(plugin.fake_ptr) == 4
    assert not torch.equal(plugin.real_queue[:4], queues[0][:4]) and torch.equal(plugin.real_queue[4:], queues[0][4:])
    assert torch.allclose(plugin.fake_queue.norm(dim=1), torch.ones(6))


def test_options():
    context = dnnlib.EasyDict(num_images=200, num_train_images=100,
                              kwargs=dnnlib.EasyDict(training_set_kwargs=dnnlib.EasyDict(max_size=100, xflip=True)))
    assert insgen.make_plugin_kwargs({}, context) == []
    assert insgen.make_plugin_kwargs({"insgen": True}, context) == [
        dict(class_name="stylegan2_ada_kd.insgen.InsGen", queue_size=10, real_weight=1.0, fake_weight=1.0,
             g_weight=0.1)]
    given = insgen.make_plugin_kwargs({"insgen": True, "insgen_queue": 64, "insgen_no_g": True}, context)[0]
    assert (given["queue_size"], given["g_weight"]) == (64, 0.0)
    given = insgen.make_plugin_kwargs({"insgen": True, "insgen_weights": "fake=0.5,g=2"}, context)[0]
    assert (given["real_weight"], given["fake_weight"], given["g_weight"]) == (1.0, 0.5, 2.0)
    given = insgen.make_plugin_kwargs({"insgen": True, "insgen_weights": "g=2", "insgen_no_g": True}, context)[0]
    assert given["g_weight"] == 0.0  # --insgen-no-g wins
    with pytest.raises(click.BadParameter, match="real, fake, g") as info:
        insgen.make_plugin_kwargs({"insgen": True, "insgen_weights": "kd=1"}, context)
    assert info.value.param_hint == "'--insgen-weights'"
    assert not hasattr(insgen.InsGen(queue_size=4, g_weight=0.0), "g_loss")  # no G-side work at all
    with pytest.raises(click.BadParameter, match="--insgen-queue"):
        insgen.make_plugin_kwargs({"insgen_queue": 64}, context)
    assert insgen.run_desc({"insgen": True}) == "insgen" and insgen.run_desc({}) == ""
    assert insgen.run_desc({"insgen": True, "insgen_no_g": True}) == "insgen-nog"


def test_second_fake_view_is_the_same_instance_under_style_mixing(pure_pytorch_ops):
    """The key view of a style-mixed fake is that fake (z noise 0), and G(z + d) when nothing is mixed."""
    from training.networks import Generator

    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=64, channel_max=8))
    plugin = insgen.InsGen(queue_size=4)
    plugin.ctx = dnnlib.EasyDict(G=G, run_G=None)
    z, z_mix, c = torch.randn([3, 8]), torch.randn([3, 8]), torch.zeros([3, 0])
    with torch.no_grad():
        ws = G.mapping(z, c)
        mixed = torch.cat([ws[:, :2], G.mapping(z_mix, c)[:, 2:]], dim=1)
        plugin.z_noise_std = 0.0
        torch.manual_seed(1)
        view = plugin._second_fake_view(z, c, mixed)
        torch.manual_seed(1)
        torch.randn_like(z)  # the plugin's z-noise draw, so both syntheses draw the same noise inputs
        assert torch.allclose(view, G.synthesis(mixed), atol=1e-6)  # the query fake itself, not G(z)
        plugin.z_noise_std = 0.15
        torch.manual_seed(2)
        view = plugin._second_fake_view(z, c, ws)
        torch.manual_seed(2)
        shifted = z + torch.randn_like(z) * 0.15
        assert torch.allclose(view, G.synthesis(G.mapping(shifted, c)), atol=1e-5)
