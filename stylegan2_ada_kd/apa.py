"""APA, adaptive pseudo augmentation (Jiang et al. 2021, "Deceive D"), as a loss plugin.

In D's real branch each real image is replaced, independently with probability p, by a detached
generated image that keeps the *real* label (softplus(-D)); R1 sees the same mixed batch (the loss
caches it per step). The generated images are those of the most recent Gmain pass, as the
reference code does (`pseudo_source='gmain'`); before any Gmain pass, or with
`pseudo_source='dmain'`, the fakes of the same Dmain pass are used.

p adapts with ADA's rule (METHOD.md 6.2, 6.3):

    lambda_r = E[sign(D(real-branch input))]       over the Dmain and R1 passes since the last adjustment
    every `interval` steps: p <- clamp(p + sign(lambda_r - target) * batch * interval / (kimg * 1000), 0, 1)

the same statistic ADA uses (`Loss/signs/real`, reported in both D passes), summed as exact
integers and averaged over ranks with an all-reduce in `after_step`, so every rank keeps the same p.
p, the pending sign sums, the step counter and the adjustment constants are buffers: exact resume
restores them, and the saved `kimg`, `target` and `interval` win over the constructor's, as the
training loop does for ADA's options (a resumed run otherwise gets `--apa-kimg` 100).

Stacks with `--aug=ada` (the reference's `--with-dataaug`): ADA then adapts its own p from the
same statistic with its own target; with equal targets and kimg both move identically.
Reports `Progress/apa_p` (every step) and `APA/sign_real` (the statistic, at every adjustment).
"""

import click
import torch

from stylegan2_ada_kd.plugin_common import reject_orphan_options
from torch_utils import training_stats
from training.training_setup import ada_adjust

PSEUDO_SOURCES = ("gmain", "dmain")


class APA(torch.nn.Module):
    """Adaptive pseudo augmentation of D's real batch; see the module docstring."""

    plugin_name = "apa"

    def __init__(
        self,
        target=0.6,             # target of E[sign(D(real-branch input))]
        kimg=500,               # kimg for p to move by 1 (100 when resuming from a pickle)
        interval=4,             # training steps between p adjustments
        initial_p=0.0,          # starting probability of replacing a real image
        pseudo_source="gmain",  # fakes used as pseudo reals: latest Gmain pass (reference) or this Dmain pass
    ):
        super().__init__()
        if not 0 <= initial_p <= 1 or kimg <= 0 or interval < 1:
            raise ValueError(f"APA: initial_p={initial_p}, kimg={kimg}, interval={interval}; pass initial_p in "
                             "[0, 1], kimg > 0 and interval >= 1")
        if pseudo_source not in PSEUDO_SOURCES:
            raise ValueError(f"APA: pseudo_source={pseudo_source!r}; use one of {', '.join(PSEUDO_SOURCES)}")
        self.pseudo_source = pseudo_source
        self.register_buffer("p", torch.tensor(float(initial_p), dtype=torch.float64))
        self.register_buffer("target", torch.tensor(float(target), dtype=torch.float64))
        self.register_buffer("kimg", torch.tensor(float(kimg), dtype=torch.float64))
        self.register_buffer("interval", torch.tensor(int(interval), dtype=torch.int64))
        self.register_buffer("num_steps", torch.zeros([], dtype=torch.int64))
        self.register_buffer("sign_stats", torch.zeros([2], dtype=torch.int64))  # [count, sum of signs]
        self._pseudo = None  # detached fakes of the latest Gmain pass [N, C, H, W]; refreshed every step

    # ------------------------------------------------------------------ hooks

    def g_loss(self, gen_img, gen_c, gen_logits, gen_feats, gen_z, gen_raw):
        """Remember G(z) of this Gmain pass (before augmentation) as the next pseudo reals; adds no term."""
        del gen_img, gen_c, gen_logits, gen_feats, gen_z
        if self.pseudo_source == "gmain":
            self._pseudo = gen_raw.detach()

    def augment_real(self, real_img, real_c, gen_img, gen_c):
        """real_img [N, C, H, W] -> the same batch with each image replaced by a fake with probability p."""
        del real_c, gen_c
        pseudo = gen_img
        if self.pseudo_source == "gmain" and self._pseudo is not None and self._pseudo.shape == real_img.shape:
            pseudo = self._pseudo
        return mix_pseudo(real_img, pseudo.detach().to(real_img.dtype), self.p)

    def observe_logits(self, phase, real_logits, gen_logits):
        """Accumulate sign(D(real-branch input)) [N, 1] of the Dmain and R1 passes (as ADA's statistic)."""
        del phase, gen_logits
        signs = real_logits.detach().sign()
        self.sign_stats[0] += signs.numel()
        self.sign_stats[1] += signs.sum().round().to(torch.int64).to(self.sign_stats.device)

    def after_step(self, cur_nimg, batch_size):
        """Count the step; every `interval` steps adjust p from the rank-summed sign statistic."""
        del cur_nimg
        self.num_steps += 1
        if int(self.num_steps) % int(self.interval) == 0:
            stats = self.sign_stats.clone()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(stats)
            count, total = int(stats[0]), int(stats[1])
            if count > 0:
                sign_mean = total / count
                p = ada_adjust(float(self.p), sign_mean, float(self.target), batch_size, int(self.interval),
                             float(self.kimg))
                self.p.fill_(p)  # fill_ keeps float64 (as_tensor would round through float32)
                training_stats.report("APA/sign_real", sign_mean)
            self.sign_stats.zero_()
        training_stats.report("Progress/apa_p", float(self.p))
        self._pseudo = None  # a new step draws new fakes

    def tick_fields(self):
        """{'apa_p': p} for the tick line, next to ADA's `augment`."""
        return {"apa_p": float(self.p)}


def mix_pseudo(real_img, pseudo_img, p):
    """real_img, pseudo_img [N, C, H, W]; each row i is pseudo_img[i] with probability p, else real_img[i].

    One uniform draw per image from torch's RNG on the images' device.
    """
    replace = torch.rand([real_img.shape[0], 1, 1, 1], device=real_img.device) < p.to(real_img.device)
    return torch.where(replace, pseudo_img, real_img)


# ----------------------------------------------------------------------------
# train.py options.

CLI_OPTIONS = [
    click.Option(["--apa"], is_flag=True, default=None, help="Adaptive pseudo augmentation (APA) of D's real batch"),
    click.Option(["--apa-target"], type=click.FloatRange(min=0, max=1), metavar="FLOAT",
                 help="APA target of E[sign(D(real))]  [default: 0.6]"),
    click.Option(["--apa-kimg"], type=click.FloatRange(min=0, min_open=True), metavar="FLOAT",
                 help="APA: kimg for p to move by 1  [default: 500; 100 with --resume]"),
]


def make_plugin_kwargs(opts, context):
    """[APA kwargs] when --apa is given, else []; --apa-target/--apa-kimg without --apa is an error."""
    if not opts.get("apa"):
        reject_orphan_options(opts, ("apa_target", "apa_kimg"), "--apa", "--apa")
        return []
    resuming = bool(context.get("kwargs", {}).get("resume_pkl"))
    kimg = opts.get("apa_kimg") or (100 if resuming else 500)
    target = 0.6 if opts.get("apa_target") is None else float(opts["apa_target"])
    return [dict(class_name="stylegan2_ada_kd.apa.APA", target=target, kimg=float(kimg), interval=4)]


def run_desc(opts):
    """'apa', plus the target and kimg when given."""
    if not opts.get("apa"):
        return ""
    desc = "apa"
    desc += f"-apatarget{opts['apa_target']:g}" if opts.get("apa_target") is not None else ""
    desc += f"-apakimg{opts['apa_kimg']:g}" if opts.get("apa_kimg") is not None else ""
    return desc
