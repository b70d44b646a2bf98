"""InsGen instance discrimination (Yang et al. 2021, "Data-Efficient Instance Generation from
Instance Discrimination"), as a loss plugin (METHOD.md 6.5).

D's feature map entering the 4x4 epilogue (feats['b4_input'] [N, C, 4, 4]) is mean-pooled to
[N, C] and fed to two MoCo-style heads, each Linear(C, C) -> ReLU -> Linear(C, 128) -> L2 norm:
one for real instances, one for fake instances. Keys come from momentum copies of D and of the
heads (m = 0.999). Each head has a FIFO queue of past keys (the negatives). Loss: InfoNCE with
temperature 0.2, the positive being the key of the same instance:

    real (D, weight 1.0):   query = real head(D(A(x)))          key = momentum D + head on A'(x)
    fake (D, weight 1.0):   query = fake head(D(A(G(z))))       key = momentum D + head on A'(G(z + delta))
    fake (G, weight 0.1):   query = fake head(D(A(G(z))))       key = momentum D + head on A'(G(z))
    delta ~ N(0, 0.15^2 I); A, A' independent draws of the training augmentation (ADA in InsGen)

The queries reuse the features of the adversarial D passes (the loss's `*_feats`), so the extra
work per Dmain pass is two momentum-D passes and one G pass (no grad), and per Gmain pass one
momentum-D pass. Only the D-side terms enqueue their keys (the G-side term uses the fake queue
read-only, as the reference). The queues are filled in `after_step`, with the keys of every
rank gathered in rank order (so every rank keeps the same queues); the momentum copies also move
in `after_step`, once per step (the reference moves D_ema once per step and the momentum heads
at each head call). The heads train with D's optimizer in D phases only; D's pickle is unchanged.
Heads, momentum D, momentum heads, queues and queue pointers are in the state dict (exact resume;
the momentum D makes it as large as D). The default queue size is 5 % of the training images
(at least 1), doubled with --mirror, as the reference.
"""

import copy

import click
import torch

from stylegan2_ada_kd.plugin_common import parse_term_weights, probe_d_feature_channels, reject_orphan_options
from torch_utils import training_stats

PROJ_DIM = 128  # contrastive embedding size
DEFAULT_WEIGHTS = {"real": 1.0, "fake": 1.0, "g": 0.1}  # --insgen-weights terms: real, fake (D), g (G)


def make_head(channels, proj_dim=PROJ_DIM):
    """MLP [N, C] -> [N, proj_dim]: Linear(C, C), ReLU, Linear(C, proj_dim) (normalised by the caller)."""
    return torch.nn.Sequential(torch.nn.Linear(channels, channels), torch.nn.ReLU(),
                               torch.nn.Linear(channels, proj_dim))


def info_nce(query, key, queue, temperature):
    """Mean InfoNCE loss (scalar): cross-entropy of [q.k, q.queue^T] / T with the positive at index 0.

    query [N, D] and key [N, D] L2-normalised (key constant), queue [Q, D] the negatives.
    """
    positive = (query * key).sum(dim=1, keepdim=True)  # [N, 1]
    negative = query @ queue.t()  # [N, Q]
    logits = torch.cat([positive, negative], dim=1) / temperature
    labels = torch.zeros([query.shape[0]], dtype=torch.int64, device=query.device)
    return torch.nn.functional.cross_entropy(logits, labels)


def enqueue(queue, ptr, keys):
    """FIFO: write keys [M, D] into queue [Q, D] from ptr (int64 []) on, wrapping; both updated in place.

    With M > Q only the last Q keys stay, as if written one by one.
    """
    size, num = queue.shape[0], keys.shape[0]
    kept = keys[-size:]
    start = (ptr + (num - kept.shape[0])) % size
    idx = (start + torch.arange(kept.shape[0], device=queue.device)) % size
    queue[idx] = kept.to(queue.dtype)
    ptr.copy_((ptr + num) % size)


def _gather_ranks(tensor):
    """[M, D] -> [world * M, D] in rank order (no-op without an initialised process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class InsGen(torch.nn.Module):
    """Real and fake instance discrimination on D's pooled 4x4 input; see the module docstring."""

    plugin_name = "insgen"
    needs_features = True

    def __init__(
        self,
        queue_size,             # entries in each key queue (the reference: 5 % of the images, x2 with mirror)
        temperature=0.2,        # InfoNCE temperature
        momentum=0.999,         # momentum of the key D and key heads per step
        real_weight=1.0,        # weight of real instance discrimination in D's loss
        fake_weight=1.0,        # weight of fake instance discrimination in D's loss
        g_weight=0.1,           # weight of fake instance discrimination in G's loss; 0 = off
        z_noise_std=0.15,       # std of the latent perturbation that makes the second fake view
    ):
        super().__init__()
        if int(queue_size) < 1 or temperature <= 0 or not 0 <= momentum <= 1 or z_noise_std < 0:
            raise ValueError(f"InsGen: queue_size={queue_size}, temperature={temperature}, momentum={momentum}, "
                             f"z_noise_std={z_noise_std}; pass queue_size >= 1, temperature > 0, momentum in "
                             "[0, 1], z_noise_std >= 0")
        if min(real_weight, fake_weight, g_weight) < 0:
            raise ValueError(f"InsGen: weights {real_weight}, {fake_weight}, {g_weight}; pass weights >= 0")
        self.queue_size = int(queue_size)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.real_weight, self.fake_weight, self.g_weight = float(real_weight), float(fake_weight), float(g_weight)
        self.z_noise_std = float(z_noise_std)
        self.ctx = None
        self._pending = {"real": [], "fake": []}  # keys [N, 128] of this step, enqueued in after_step
        if self.g_weight > 0:
            self.g_loss = self._g_loss  # defined only when used: the loss skips G-side feature work otherwise

    # ------------------------------------------------------------------ set-up

    def setup(self, ctx):
        """Heads sized from D's 4x4 input channels, momentum copies of D and the heads, random unit queues."""
        self.ctx = ctx
        channels = self._feature_channels(ctx)
        self.real_head, self.fake_head = make_head(channels), make_head(channels)
        self.real_head.requires_grad_(False)  # the loop enables them in D phases (d_parameters)
        self.fake_head.requires_grad_(False)
        self.momentum_real_head = copy.deepcopy(self.real_head)
        self.momentum_fake_head = copy.deepcopy(self.fake_head)
        self.momentum_D = copy.deepcopy(ctx.D).eval().requires_grad_(False)
        for name in ("real", "fake"):
            queue = torch.nn.functional.normalize(torch.randn([self.queue_size, PROJ_DIM]), dim=1)
            self.register_buffer(f"{name}_queue", queue.to(ctx.device))
            self.register_buffer(f"{name}_ptr", torch.zeros([], dtype=torch.int64, device=ctx.device))

    @staticmethod
    def _feature_channels(ctx):
        epilogue = getattr(ctx.D, "b4", None)
        if epilogue is not None and hasattr(epilogue, "in_channels"):
            return int(epilogue.in_channels)
        return probe_d_feature_channels(ctx, "b4_input")

    def d_parameters(self):
        """The two heads (trained by D's optimizer); never the momentum copies."""
        return list(self.real_head.parameters()) + list(self.fake_head.parameters())

    # ------------------------------------------------------------------ embeddings

    @staticmethod
    def _pool(feats):
        return feats["b4_input"].to(torch.float32).mean(dim=[2, 3])  # [N, C]

    def _query(self, head, feats):
        return torch.nn.functional.normalize(head(self._pool(feats)), dim=1)

    @torch.no_grad()
    def _keys(self, head, img, c):
        """Keys [N, 128] of img [N, C, H, W] (before augmentation): momentum D on a fresh augmentation."""
        _, feats = self.momentum_D(self.ctx.augment(img), c, return_features=True)
        return torch.nn.functional.normalize(head(self._pool(feats)), dim=1)

    # ------------------------------------------------------------------ hooks

    def d_loss(self, real_img, real_c, real_logits, real_feats, gen_img, gen_c, gen_logits, gen_feats, gen_z,
               real_raw, gen_raw, gen_ws=None):
        """real_weight * L_real + fake_weight * L_fake (scalar); the keys wait for after_step's enqueue."""
        del real_img, real_logits, gen_img, gen_logits, gen_raw
        total = 0
        if self.real_weight > 0:
            key = self._keys(self.momentum_real_head, real_raw, real_c)
            loss = info_nce(self._query(self.real_head, real_feats), key, self.real_queue, self.temperature)
            training_stats.report("Loss/insgen/real", loss.detach())
            self._pending["real"].append(key)
            total = total + self.real_weight * loss
        if self.fake_weight > 0:
            key = self._keys(self.momentum_fake_head, self._second_fake_view(gen_z, gen_c, gen_ws), gen_c)
            loss = info_nce(self._query(self.fake_head, gen_feats), key, self.fake_queue, self.temperature)
            training_stats.report("Loss/insgen/fake", loss.detach())
            self._pending["fake"].append(key)
            total = total + self.fake_weight * loss
        return total if torch.is_tensor(total) else None

    @torch.no_grad()
    def _second_fake_view(self, gen_z, gen_c, gen_ws):
        """G(z + N(0, z_noise_std^2)) [N, C, H, W]: the same instance as the fake that made gen_ws.

        gen_ws [N, num_ws, w_dim] or None: the loss's latents, style-mixed in some layers. The z
        perturbation moves every layer by mapping(z + d) - mapping(z), so layers taken from the
        mixing latent stay that latent's (plus the same shift) and the pair remains one instance.
        """
        noise = torch.randn_like(gen_z) * self.z_noise_std
        if gen_ws is None:
            return self.ctx.run_G(gen_z + noise, gen_c)
        mapping = self.ctx.G.mapping
        shift = mapping(gen_z + noise, gen_c, skip_w_avg_update=True) - mapping(gen_z, gen_c, skip_w_avg_update=True)
        return self.ctx.G.synthesis(gen_ws + shift)

    def _g_loss(self, gen_img, gen_c, gen_logits, gen_feats, gen_z, gen_raw):
        """g_weight * InfoNCE of G's fakes against a second augmentation of themselves (fake queue, read only).

        Bound as `g_loss` only when g_weight > 0.
        """
        del gen_img, gen_logits, gen_z
        key = self._keys(self.momentum_fake_head, gen_raw.detach(), gen_c)
        loss = info_nce(self._query(self.fake_head, gen_feats), key, self.fake_queue, self.temperature)
        training_stats.report("Loss/insgen/g", loss.detach())
        return self.g_weight * loss

    @torch.no_grad()
    def after_step(self, cur_nimg, batch_size):
        """Momentum step of the key D and key heads, then enqueue this step's keys (all ranks)."""
        del cur_nimg, batch_size
        pairs = [(self.momentum_D, self.ctx.D), (self.momentum_real_head, self.real_head),
                 (self.momentum_fake_head, self.fake_head)]
        for target, source in pairs:
            for p_m, p in zip(target.parameters(), source.parameters()):
                p_m.copy_(p.detach().lerp(p_m, self.momentum))
        for b_m, b in zip(self.momentum_D.buffers(), self.ctx.D.buffers()):
            b_m.copy_(b)
        for name, keys in self._pending.items():
            if keys:
                enqueue(getattr(self, f"{name}_queue"), getattr(self, f"{name}_ptr"), _gather_ranks(torch.cat(keys)))
            keys.clear()


# ----------------------------------------------------------------------------
# train.py options.

CLI_OPTIONS = [
    click.Option(["--insgen"], is_flag=True, default=None,
                 help="InsGen instance discrimination (real + fake contrastive heads on D)"),
    click.Option(["--insgen-queue"], type=click.IntRange(min=1), metavar="INT",
                 help="InsGen queue size (real and fake)  [default: 5% of the images, x2 with --mirror]"),
    click.Option(["--insgen-no-g"], is_flag=True, default=None,
                 help="InsGen: no fake instance discrimination term for G (same as g=0 in --insgen-weights)"),
    click.Option(["--insgen-weights"], metavar="LIST", help="InsGen loss weights, e.g. real=1,fake=1,g=0.1; "
                 "unnamed terms keep their default  [default: real=1,fake=1,g=0.1]"),
]


def default_queue_size(num_images, xflip):
    """The reference's default: int(5 % of the images), doubled with x-flips; at least 1."""
    return max(int(0.05 * int(num_images)), 1) * (2 if xflip else 1)


def make_plugin_kwargs(opts, context):
    """[InsGen kwargs] when --insgen is given, else []; its other options alone are an error."""
    if not opts.get("insgen"):
        reject_orphan_options(opts, ("insgen_queue", "insgen_no_g", "insgen_weights"), "--insgen", "--insgen")
        return []
    queue = opts.get("insgen_queue")
    if queue is None:
        data = context.get("kwargs", {}).get("training_set_kwargs", {})
        num = context.get("num_train_images") or data.get("max_size") or context.get("num_images")
        queue = default_queue_size(num, bool(data.get("xflip")))
    weights = {**DEFAULT_WEIGHTS, **parse_term_weights(opts.get("insgen_weights") or "", tuple(DEFAULT_WEIGHTS),
                                                       "--insgen-weights", "InsGen's terms")}
    if opts.get("insgen_no_g"):
        weights["g"] = 0.0
    return [dict(class_name="stylegan2_ada_kd.insgen.InsGen", queue_size=int(queue), real_weight=weights["real"],
                 fake_weight=weights["fake"], g_weight=weights["g"])]


def run_desc(opts):
    """'insgen', plus '-queueN' and '-nog' when given."""
    if not opts.get("insgen"):
        return ""
    desc = "insgen" + (f"-queue{opts['insgen_queue']}" if opts.get("insgen_queue") else "")
    return desc + ("-nog" if opts.get("insgen_no_g") else "")
