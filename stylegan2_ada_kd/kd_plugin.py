"""KD-DLGAN as a StyleGAN2Loss plugin: distil a frozen CLIP teacher into the discriminator.

`KDLoss` adds weighted KD terms to D's main phase (Dmain/Dboth; never the lazy R1 phase). Each term
compares the teacher's embeddings of the images D sees (after DiffAugment/ADA/APA) with D's
student embeddings: D's epilogue FC output [N, C] through a `ProjectionHead` to the teacher's E.
Terms (stylegan2_ada_kd.kd; METHOD.md 2, 3, 6.7), each reported as `Loss/KD/<term>` (unweighted):

    agkd     aggregated generative KD (4 same/cross-domain distances)      } KD-DLGAN (weight 10 each)
    cgkd     correlated generative KD (image-text correlation), real + fake }
    fitnets, ld, pkd, spkd    the paper's KD baselines; they REPLACE agkd,cgkd in its tables

The teacher runs once per Dmain pass on the real and fake batches together, in inference mode, so
no KD gradient reaches G or the teacher. The optional pairwise-diversity term (pd_weight > 0; off
by default, METHOD.md A7) is the one G-side term: G minimises mean_{i != j} cos between the rows of
the teacher's image-text correlation of its samples, with gradients through the frozen teacher.
The teacher is a plain object held outside the module tree (never saved, broadcast or trained);
the head and the step counter are the plugin's state (snapshots, training states, exact resume).

train.py options (CLI_OPTIONS): --kd, --kd-weight, --kd-weights, --kd-dist, --kd-preprocess,
--kd-interval, --kd-pd-weight, --prompts, --teacher, --teacher-ckpt, --teacher-cache.
"""

import os

import click
import torch

from stylegan2_ada_kd import kd
from stylegan2_ada_kd.heads import ProjectionHead
from stylegan2_ada_kd.plugin_common import parse_term_weights, probe_d_feature_channels, reject_orphan_options
from stylegan2_ada_kd.teacher import (DEFAULT_TEACHER, PREPROCESS_MODES, TeacherError, parse_teacher_spec,
                                      resolve_model_name)
from torch_utils import training_stats

TERMS = ("agkd", "cgkd", "fitnets", "ld", "pkd", "spkd")
DEFAULT_TERMS = ("agkd", "cgkd")
DEFAULT_WEIGHT = 10.0
CLASS_PROMPT = "a photo of a {}"
# The released code's prompts (CIFAR-10 classes), used when the dataset has no class names.
RELEASED_PROMPTS = ("a airplane", "a automobile", "a bird", "a cat", "a deer", "a dog", "a frog", "a horse",
                    "a ship", "a truck")
CLASS_NAME = "stylegan2_ada_kd.kd_plugin.KDLoss"


def default_prompts(class_names):
    """'a photo of a {name}' for each dataset class name; the released ten prompts when there are none."""
    names = [str(name).strip() for name in (class_names or []) if str(name).strip()]
    return [CLASS_PROMPT.format(name) for name in names] if names else list(RELEASED_PROMPTS)


class KDLoss(torch.nn.Module):
    """The KD-DLGAN plugin (see the module docstring and training/loss.py's PLUGIN PROTOCOL)."""

    needs_features = True
    plugin_name = "kd"

    def __init__(
        self,
        terms=DEFAULT_TERMS,        # KD terms to add: a subset of TERMS (list, or a comma string)
        weight=DEFAULT_WEIGHT,      # weight of every term without an entry in term_weights
        term_weights=None,          # {term: weight} overrides; None = `weight` for all
        dist="l2",                  # AGKD distance: 'l2' (per-sample norm, released code) or 'l1' (mean abs)
        teacher=DEFAULT_TEACHER,    # 'MODEL[:TAG]' (stylegan2_ada_kd.teacher)
        teacher_ckpt=None,          # local teacher weights file; None = download TAG
        teacher_cache=None,         # download cache dir; None = open_clip's default
        preprocess="clip",          # teacher input: 'clip' (resize + CLIP mean/std) or 'released'
        prompts=None,               # list of K prompt strings; None = default_prompts(dataset class names)
        pd_weight=0.0,              # G-side pairwise-diversity weight; 0 = off (no G-side work at all)
        interval=1,                 # KD on every N-th training step's Dmain (1 = every step, the paper)
        head_hidden=1024,           # hidden width of the projection head
        ld_temperature=kd.LD_TEMPERATURE,  # label-distillation temperature T
        channels_last=False,        # teacher patch embedding on channels_last images
    ):
        super().__init__()
        terms = [t.strip() for t in terms.split(",") if t.strip()] if isinstance(terms, str) else list(terms)
        unknown = [term for term in terms if term not in TERMS]
        if not terms or unknown or len(set(terms)) != len(terms):
            raise ValueError(f"KDLoss: terms {list(terms)!r} must be distinct names from {', '.join(TERMS)}")
        if dist not in kd.DISTANCES:
            raise ValueError(f"KDLoss: unknown dist {dist!r}; use one of {', '.join(kd.DISTANCES)}")
        if int(interval) < 1:
            raise ValueError(f"KDLoss: interval={interval}; pass an integer >= 1")
        self.terms = tuple(terms)
        self.weights = {term: float((term_weights or {}).get(term, weight)) for term in self.terms}
        self.dist = dist
        self.teacher_kwargs = dict(spec=teacher, ckpt=teacher_ckpt, cache_dir=teacher_cache, preprocess=preprocess,
                                   channels_last=bool(channels_last))
        self.prompts = None if prompts is None else [str(p) for p in prompts]
        self.pd_weight = float(pd_weight)
        self.interval = int(interval)
        self.head_hidden = int(head_hidden)
        self.ld_temperature = float(ld_temperature)
        self.register_buffer("num_steps", torch.zeros([], dtype=torch.int64))  # training steps seen (interval)
        self.head = None
        self._teacher = []  # [CLIPTeacher]: a plain list keeps it out of state_dict, .to() and broadcasts
        self._text_embeds = None  # [K, E] fp32 on the device, computed once in setup
        if self.pd_weight > 0:
            self.g_loss = self._pd_g_loss  # defined only when used: the loss skips G-side work otherwise

    # ------------------------------------------------------------------ set-up

    @property
    def teacher(self):
        """The CLIPTeacher (after setup)."""
        if not self._teacher:
            raise RuntimeError("KDLoss: setup(ctx) has not run; the loss calls it when it builds its plugins")
        return self._teacher[0]

    @property
    def text_embeds(self):
        """[K, E] fp32 prompt embeddings (after setup)."""
        return self._text_embeds

    @staticmethod
    def _d_feature_width(ctx):
        """C of D's 'fc' features: the epilogue FC's width, or probed once with a throw-away pass."""
        fc = getattr(getattr(ctx.D, "b4", None), "fc", None)
        if fc is not None and hasattr(fc, "out_features"):
            return int(fc.out_features)
        return probe_d_feature_channels(ctx, "fc")

    def setup(self, ctx):
        """Build the teacher on ctx.device, encode the prompts once, create the head (D's width -> E)."""
        from stylegan2_ada_kd.teacher import build_teacher  # imports open_clip: only when KD is on

        teacher = build_teacher(device=ctx.device, **self.teacher_kwargs)
        self._teacher = [teacher]
        prompts = self.prompts or default_prompts(ctx.get("class_names"))
        self._text_embeds = teacher.encode_texts(prompts)
        self.head = ProjectionHead(self._d_feature_width(ctx), self.head_hidden, teacher.embed_dim)

    # ------------------------------------------------------------------ losses

    def kd_terms(self, t_real, s_real, t_fake, s_fake):
        """{term: unweighted scalar} for teacher t_* and student s_* embeddings [B, E] (fp32)."""
        text = self._text_embeds
        both = {
            "cgkd": lambda t, s: kd.cgkd_loss(t, s, text),
            "fitnets": kd.fitnets_loss,
            "ld": lambda t, s: kd.ld_loss(t, s, text, temperature=self.ld_temperature),
            "pkd": kd.pkd_loss,
            "spkd": kd.spkd_loss,
        }
        out = {}
        for term in self.terms:
            if term == "agkd":
                out[term] = kd.agkd_loss(t_real, s_real, t_fake, s_fake, dist=self.dist)
            else:  # per-batch terms: real batch + fake batch
                out[term] = both[term](t_real, s_real) + both[term](t_fake, s_fake)
        return out

    def d_loss_active(self):
        """True on every `interval`-th training step (the loss skips d_loss and D's features otherwise)."""
        return int(self.num_steps) % self.interval == 0

    def d_loss(self, real_img, real_feats, gen_img, gen_feats, **_):
        """Dmain: images [N, C, H, W] as D saw them, feats {'fc': [N, C4]} -> weighted KD sum (scalar) or None."""
        if not self.d_loss_active():
            return None
        if real_img.shape[0] != gen_img.shape[0]:
            raise ValueError(f"KDLoss: real and fake batches differ ({real_img.shape[0]} vs {gen_img.shape[0]}); "
                             "AGKD pairs them by index")
        num = real_img.shape[0]
        # One teacher call and one head call for both batches and every term.
        t_real, t_fake = self.teacher.encode_images(torch.cat([real_img.detach(), gen_img.detach()])).split(num)
        s_real, s_fake = self.head(torch.cat([real_feats["fc"], gen_feats["fc"]])).split(num)
        total = 0
        for term, value in self.kd_terms(t_real, s_real, t_fake, s_fake).items():
            training_stats.report(f"Loss/KD/{term}", value.detach())
            total = total + self.weights[term] * value
        training_stats.report("Loss/KD/total", total.detach())
        return total

    def _pd_g_loss(self, gen_img, **_):
        """Gmain (pd_weight > 0 only): gen_img [N, C, H, W] as D saw it, graph to G -> pd_weight * L_PD."""
        t_gen = self.teacher.encode_images(gen_img, grad=True)
        pd = kd.pairwise_diversity(t_gen, self._text_embeds)
        training_stats.report("Loss/KD/pd", pd.detach())
        return self.pd_weight * pd

    def after_step(self, cur_nimg, batch_size):
        self.num_steps += 1

    def d_parameters(self):
        """The head's parameters, trained by D's optimizer."""
        return list(self.head.parameters()) if self.head is not None else []


# ----------------------------------------------------------------------------
# train.py integration.

_POS_FLOAT = dict(type=click.FloatRange(min=0), metavar="FLOAT")
CLI_OPTIONS = [
    click.Option(["--kd"], metavar="LIST", help=f"KD-DLGAN terms, comma list of {', '.join(TERMS)}; "
                 "the paper: agkd,cgkd  [default: off]"),
    click.Option(["--kd-weight"], **_POS_FLOAT, help=f"Weight of each KD term  [default: {DEFAULT_WEIGHT:g}]"),
    click.Option(["--kd-weights"], metavar="LIST", help="Per-term weights, e.g. agkd=10,cgkd=5  "
                 "[default: --kd-weight]"),
    click.Option(["--kd-dist"], type=click.Choice(kd.DISTANCES), help="AGKD distance: l2 = per-sample norm (released "
                 "code), l1 = mean absolute difference  [default: l2]"),
    click.Option(["--kd-preprocess"], type=click.Choice(PREPROCESS_MODES), help="Teacher input: clip = bilinear resize "
                 "+ CLIP mean/std, released = nearest resize of raw [-1,1]  [default: clip]"),
    click.Option(["--kd-interval"], type=click.IntRange(min=1), metavar="INT",
                 help="Compute KD on every N-th D step  [default: 1]"),
    click.Option(["--kd-pd-weight"], **_POS_FLOAT, help="G-side pairwise-diversity weight  [default: 0 = off]"),
    click.Option(["--prompts"], metavar="FILE", help="KD prompts, one per line  [default: 'a photo of a {class}', "
                 "else the released 10 CIFAR-10 prompts]"),
    click.Option(["--teacher"], metavar="MODEL:TAG", help="open_clip model and pretrained tag, or a model-config "
                 f".json  [default: {DEFAULT_TEACHER}]"),
    click.Option(["--teacher-ckpt"], metavar="PATH", help="Local teacher weights file (offline machines)"),
    click.Option(["--teacher-cache"], metavar="DIR", help="Teacher download cache  [default: open_clip's]"),
]
_OPTION_NAMES = [option.name for option in CLI_OPTIONS]


def _bad(option, message):
    return click.BadParameter(message, param_hint=f"'{option}'")


def parse_terms(text):
    """'cgkd, agkd' -> ('agkd', 'cgkd') in TERMS order; raises naming --kd."""
    names = [name.strip().lower() for name in str(text).split(",") if name.strip()]
    unknown = [name for name in names if name not in TERMS]
    if unknown or not names or len(set(names)) != len(names):
        problem = f"unknown {', '.join(unknown)}" if unknown else "empty or repeated names"
        raise _bad("--kd", f"{text!r}: {problem}; use a comma list of {', '.join(TERMS)}")
    return tuple(term for term in TERMS if term in names)


def read_prompts(path):
    """Non-empty lines of a prompts file; raises naming --prompts."""
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise _bad("--prompts", f"{path}: {exc.strerror or exc}; pass a text file with one prompt per line") from None
    if not prompts:
        raise _bad("--prompts", f"{path} has no prompts; write one prompt per line")
    return prompts


def make_plugin_kwargs(opts, context):
    """[KDLoss kwargs] when --kd is given, else [] (other KD options without --kd are an error)."""
    if not opts.get("kd"):
        reject_orphan_options(opts, [name for name in _OPTION_NAMES if name != "kd"], "--kd",
                              "--kd=agkd,cgkd (or another term list)")
        return []
    terms = parse_terms(opts["kd"])
    spec = opts.get("teacher") or DEFAULT_TEACHER
    ckpt, cache = opts.get("teacher_ckpt"), opts.get("teacher_cache")
    try:  # an unknown model, a missing config file or no weights fail here, before any run directory exists
        model, tag = parse_teacher_spec(spec)
        name = resolve_model_name(model)
    except TeacherError as exc:
        raise _bad("--teacher", exc.message) from None
    if tag is None and ckpt is None and name == model and not model.lower().endswith(".json"):
        raise _bad("--teacher", f"{spec!r} names no weights; pass {model}:TAG (see open_clip.list_pretrained()), "
                                f"--teacher-ckpt=PATH, or {model}:random")
    if model.lower().endswith(".json"):  # a model-config file: absolute, so every process finds it
        spec = os.path.abspath(model) + (f":{tag}" if tag else "")
    if ckpt is not None and not os.path.isfile(ckpt):
        raise _bad("--teacher-ckpt", f"{ckpt} does not exist; pass a local weights file for the teacher model")
    weight = DEFAULT_WEIGHT if opts.get("kd_weight") is None else float(opts["kd_weight"])
    return [dict(class_name=CLASS_NAME, terms=list(terms), weight=weight,
                 term_weights=parse_term_weights(opts.get("kd_weights") or "", terms, "--kd-weights",
                                                 "terms given to --kd"),
                 dist=opts.get("kd_dist") or "l2", teacher=spec,
                 teacher_ckpt=None if ckpt is None else os.path.abspath(ckpt),
                 teacher_cache=None if cache is None else os.path.abspath(cache),
                 preprocess=opts.get("kd_preprocess") or "clip",
                 prompts=None if opts.get("prompts") is None else read_prompts(opts["prompts"]),
                 pd_weight=float(opts.get("kd_pd_weight") or 0), interval=int(opts.get("kd_interval") or 1))]


def run_desc(opts):
    """'kd-agkd-cgkd' for --kd=agkd,cgkd; '' without --kd."""
    return "kd-" + "-".join(parse_terms(opts["kd"])) if opts.get("kd") else ""
