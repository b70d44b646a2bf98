"""LeCam regularisation (Tseng et al. 2021, "Regularizing GANs under Limited Data"), as a loss plugin.

Anchors: alpha_R = EMA of mean D(real), alpha_F = EMA of mean D(fake) (scalars, not trained). In
every Dmain pass (METHOD.md 6.4, the one-sided form of both released versions):

    R_LC = mean_i relu(D(x_i) - alpha_F)^2 + mean_j relu(alpha_R - D(G(z_j)))^2,   added as weight * R_LC

The EMA is zero-debiased, as the StyleGAN2 (TensorFlow) release: with decay d and t updates,
biased_t = d * biased_{t-1} + (1 - d) * m_t and alpha_t = biased_t / (1 - d^t), so the first anchor
equals the first mean instead of being pulled towards 0. Like that release, the anchors include
the current batch's means (updated first, from detached logits, then used). `zero_debias=False`
gives the plain EMA (alpha_t = biased_t, starting from 0), as the BigGAN release with decay 0.9.

The anchors update in every Dmain pass (every gradient-accumulation round) from the local batch,
also before `start_kimg`; the term is applied from `start_kimg` on (BigGAN's release starts it
after 1000 iterations and lets the anchors track the scores before). With several processes each
keeps its own anchors from its own batch, as the TensorFlow release's per-replica variables do:
the anchors are slow averages of batch means, so averaging them across ranks would change
little and cost an all-reduce per pass; the training state saves every rank's copy for exact
resume. Reports `Loss/lecam/penalty` (R_LC before the weight), `Loss/lecam/anchor_real` and
`Loss/lecam/anchor_fake`.
"""

import click
import torch

from stylegan2_ada_kd.plugin_common import reject_orphan_options
from torch_utils import training_stats


class LeCam(torch.nn.Module):
    """LeCam regulariser with EMA anchors; see the module docstring."""

    plugin_name = "lecam"

    def __init__(
        self,
        weight=3e-7,        # lambda: weight of R_LC in D's loss
        decay=0.99,         # EMA decay of the anchors per Dmain pass
        start_kimg=0.0,     # apply the term once cur_nimg >= start_kimg * 1000 (anchors update before)
        zero_debias=True,   # debias the EMA as the TensorFlow release (False = plain EMA from 0)
    ):
        super().__init__()
        if weight < 0 or not 0 <= decay < 1 or start_kimg < 0:
            raise ValueError(f"LeCam: weight={weight}, decay={decay}, start_kimg={start_kimg}; pass weight >= 0, "
                             "0 <= decay < 1 and start_kimg >= 0")
        self.weight = float(weight)
        self.decay = float(decay)
        self.start_kimg = float(start_kimg)
        self.zero_debias = bool(zero_debias)
        self.ctx = None
        self.register_buffer("biased", torch.zeros([2], dtype=torch.float64))  # [real, fake] EMA before debiasing
        self.register_buffer("num_updates", torch.zeros([], dtype=torch.int64))

    def setup(self, ctx):
        self.ctx = ctx

    def anchors(self):
        """(alpha_R, alpha_F) as float64 tensors []; zeros before the first update."""
        values = self.biased
        if self.zero_debias:  # tensor ops only: no host sync per pass on CUDA
            correction = 1 - torch.full_like(values, self.decay).pow(self.num_updates.to(values.dtype))
            values = torch.where(self.num_updates > 0, values / correction.clamp(min=1e-300), values)
        return values[0], values[1]

    def update_anchors(self, real_logits, gen_logits):
        """EMA step from the batch means of real_logits [N, 1] and gen_logits [M, 1] (detached)."""
        means = torch.stack([real_logits.detach().mean(), gen_logits.detach().mean()]).to(self.biased)
        self.biased.copy_(self.biased * self.decay + means * (1 - self.decay))
        self.num_updates += 1

    def d_loss(self, real_img, real_c, real_logits, real_feats, gen_img, gen_c, gen_logits, gen_feats, gen_z):
        """weight * R_LC (scalar), or None before start_kimg; updates the anchors first."""
        del real_img, real_c, real_feats, gen_img, gen_c, gen_feats, gen_z
        self.update_anchors(real_logits, gen_logits)
        anchor_real, anchor_fake = self.anchors()
        training_stats.report("Loss/lecam/anchor_real", anchor_real)
        training_stats.report("Loss/lecam/anchor_fake", anchor_fake)
        penalty = lecam_penalty(real_logits, gen_logits, anchor_real, anchor_fake)
        training_stats.report("Loss/lecam/penalty", penalty.detach())
        cur_nimg = self.ctx.cur_nimg if self.ctx is not None else 0
        if cur_nimg < self.start_kimg * 1000:
            return None
        return penalty * self.weight


def lecam_penalty(real_logits, gen_logits, anchor_real, anchor_fake):
    """R_LC = mean relu(real_logits - anchor_fake)^2 + mean relu(anchor_real - gen_logits)^2 (scalar).

    real_logits [N, 1], gen_logits [M, 1] (with their graph); anchors: float or tensor [] (constants).
    """
    anchor_real = torch.as_tensor(anchor_real).to(real_logits.dtype).to(real_logits.device)
    anchor_fake = torch.as_tensor(anchor_fake).to(real_logits.dtype).to(real_logits.device)
    real_term = torch.relu(real_logits - anchor_fake).square().mean()
    fake_term = torch.relu(anchor_real - gen_logits).square().mean()
    return real_term + fake_term


# ----------------------------------------------------------------------------
# train.py options.

CLI_OPTIONS = [
    click.Option(["--lecam"], type=click.FloatRange(min=0, min_open=True), metavar="WEIGHT",
                 help="LeCam regulariser with this weight, e.g. 3e-7  [default: off]"),
    click.Option(["--lecam-decay"], type=click.FloatRange(min=0, max=1, max_open=True), metavar="FLOAT",
                 help="LeCam anchor EMA decay  [default: 0.99]"),
    click.Option(["--lecam-start-kimg"], type=click.FloatRange(min=0), metavar="KIMG",
                 help="Apply LeCam from this kimg on  [default: 0]"),
]


def make_plugin_kwargs(opts, context):
    """[LeCam kwargs] when --lecam is given, else []; --lecam-decay/--lecam-start-kimg alone is an error."""
    del context
    if opts.get("lecam") is None:
        reject_orphan_options(opts, ("lecam_decay", "lecam_start_kimg"), "--lecam", "--lecam=WEIGHT")
        return []
    decay = 0.99 if opts.get("lecam_decay") is None else float(opts["lecam_decay"])
    start = 0.0 if opts.get("lecam_start_kimg") is None else float(opts["lecam_start_kimg"])
    return [dict(class_name="stylegan2_ada_kd.lecam.LeCam", weight=float(opts["lecam"]), decay=decay,
                 start_kimg=start)]


def run_desc(opts):
    """'lecam3e-07' for --lecam=3e-7 ('' without --lecam)."""
    return f"lecam{opts['lecam']:g}" if opts.get("lecam") is not None else ""
