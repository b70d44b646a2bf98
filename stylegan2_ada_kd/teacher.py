"""The frozen CLIP teacher of KD-DLGAN, built on open_clip.

`build_teacher(spec, ckpt, cache_dir, preprocess, device)` returns a `CLIPTeacher`: a plain object,
not an nn.Module, so a plugin that holds it never saves, broadcasts or trains it. Its parameters
have requires_grad False and it stays in eval mode.

Teacher spec, `MODEL[:TAG]` (the --teacher option):
    MODEL  an open_clip model name (open_clip.list_models(), e.g. ViT-B-32), `hf-hub:ORG/REPO`,
           `local-dir:/folder`, or the path of a model-config JSON file ({"embed_dim", "vision_cfg",
           "text_cfg"}), registered with open_clip.add_model_config under the file's stem (tests use
           this for a tiny CLIP).
    TAG    an open_clip pretrained tag (open_clip.list_pretrained(), e.g. openai), downloaded into
           `cache_dir` (or the HF cache); `random` = random weights (benchmarks only). Ignored when
           `ckpt` is given: a local weights file (state_dict .pt/.bin/.safetensors, or OpenAI's
           TorchScript .pt) for MODEL, for machines without internet.
Weights that cannot be had raise `TeacherError` at construction, one line naming the model and
the fix (--teacher-ckpt), never later.

Images: D-range [N, C, H, W] in [-1, 1], any size, C in {1, 3}. Preprocess modes:
    clip      bilinear antialiased resize to the teacher's input size, [-1, 1] -> [0, 1], CLIP mean/std
    released  nearest resize to the teacher's input size, raw [-1, 1] (the released KD-DLGAN code)
The image encoder runs in inference mode (or with a graph to the image when `grad=True`), under
fp16 autocast on CUDA and in fp32 on the CPU; embeddings come back as fp32 [N, E].
"""

import contextlib
import logging
import os
import zipfile

import click
import torch
import torch.nn.functional as F

DEFAULT_TEACHER = "ViT-B-32:openai"
PREPROCESS_MODES = ("clip", "released")
RANDOM_TAG = "random"
_PREFIXED = ("hf-hub:", "local-dir:")  # open_clip names whose weights come with the model name

logger = logging.getLogger(__name__)


class TeacherError(click.ClickException):
    """The teacher cannot be built; the message is one line naming the model and the fix."""


def parse_teacher_spec(spec):
    """'MODEL[:TAG]' -> (model, tag or None); see the module docstring."""
    spec = str(spec).strip()
    if spec.startswith(_PREFIXED):
        return spec, None
    model, sep, tag = spec.rpartition(":")
    if not sep or "/" in tag or "\\" in tag:  # no tag, or the colon belongs to a path
        model, tag = spec, ""
    if not model:
        raise TeacherError(f"--teacher={spec!r}: empty model name; pass MODEL:TAG, e.g. {DEFAULT_TEACHER}")
    return model, (tag or None)


def resolve_model_name(model):
    """Register a model-config JSON file with open_clip (name = its stem); check plain names exist."""
    import open_clip

    if model.startswith(_PREFIXED):
        return model
    if model.lower().endswith(".json"):
        if not os.path.isfile(model):
            raise TeacherError(f"--teacher: model config {model} does not exist; pass an existing JSON file "
                               "or an open_clip model name")
        open_clip.add_model_config(model)
        return os.path.splitext(os.path.basename(model))[0]
    if model not in open_clip.list_models():
        raise TeacherError(f"--teacher: unknown open_clip model {model!r}; pass one of open_clip.list_models() "
                           "(e.g. ViT-B-32) or a model-config .json file")
    return model


def _is_torchscript(path):
    """True for a TorchScript archive (OpenAI's original CLIP .pt files), which needs weights_only=False."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


@contextlib.contextmanager
def _quiet_logging():
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def load_clip_model(model, tag=None, ckpt=None, cache_dir=None):
    """An open_clip CLIP model on the CPU, fp32, eval, frozen; raises TeacherError (one line) on failure."""
    import open_clip

    name = resolve_model_name(model)
    label = f"{name}:{tag}" if tag else name
    weights_only = True
    if ckpt is not None:
        if not os.path.isfile(ckpt):
            raise TeacherError(f"--teacher-ckpt: {ckpt} does not exist; pass a local weights file for {name}")
        pretrained, weights_only = os.path.abspath(ckpt), not _is_torchscript(ckpt)
    elif tag == RANDOM_TAG or model.startswith(_PREFIXED):
        pretrained = None
    elif tag is None:
        raise TeacherError(f"--teacher={name}: no weights named; pass {name}:TAG (see open_clip.list_pretrained()), "
                           f"--teacher-ckpt=PATH, or {name}:{RANDOM_TAG}")
    else:
        pretrained = tag
    try:
        # Building initialises random weights first: keep the training RNG streams untouched. open_clip
        # logs its own errors and warnings through the root logger; the one-line error below replaces them.
        with torch.random.fork_rng(devices=[]), _quiet_logging():
            if not weights_only:  # OpenAI's TorchScript archive: open_clip rebuilds the model from its weights
                clip = open_clip.load_openai_model(pretrained, precision="fp32", device="cpu")
            else:
                clip = open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir, device="cpu",
                                              weights_only=True, require_pretrained=pretrained is not None)
    except Exception as exc:  # noqa: BLE001 -- any download/parse failure becomes the one-line start-up error
        reason = " ".join(str(exc).split())
        reason = reason[:120] + "..." if len(reason) > 120 else reason
        source = f"file {ckpt}" if ckpt is not None else f"tag {tag!r}"
        raise TeacherError(f"teacher {label}: cannot load its weights from {source} ({type(exc).__name__}: {reason}); "
                           f"download them where there is internet and pass --teacher-ckpt=PATH "
                           "(README: KD-DLGAN, offline teacher)") from None
    if pretrained is None and not model.startswith(_PREFIXED):
        logger.warning("KD teacher %s has random weights (tag %r): use only for benchmarks and tests", name, tag)
    clip.eval().requires_grad_(False)
    return clip, name


class CLIPTeacher:
    """Frozen CLIP image/text encoders with KD-DLGAN's preprocessing (not an nn.Module on purpose)."""

    def __init__(
        self,
        model,                  # open_clip CLIP model (eval, frozen)
        model_name,             # name for the tokenizer (open_clip.get_tokenizer)
        preprocess="clip",      # 'clip' or 'released'; see the module docstring
        device="cpu",           # torch.device the encoders run on
        channels_last=False,    # run the patch embedding on channels_last images (CPU speed; same numbers)
    ):
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"CLIPTeacher: unknown preprocess {preprocess!r}; "
                             f"use one of {', '.join(PREPROCESS_MODES)}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.model_name = model_name
        self.preprocess = preprocess
        self.channels_last = bool(channels_last)
        size = getattr(model.visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        import open_clip

        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).reshape(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).reshape(1, 3, 1, 1)
        self.embed_dim = int(model.visual.output_dim)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()  # fp16 is very slow on CPUs; bf16 would change the numbers

    def prepare(self, img):
        """img [N, C, H, W] in [-1, 1] -> the encoder's input [N, 3, S, S] (differentiable)."""
        if img.ndim != 4 or img.shape[1] not in (1, 3):
            raise ValueError(f"CLIPTeacher: expected images [N, 1 or 3, H, W], got {list(img.shape)}")
        x = img.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.preprocess == "released":
            same = tuple(x.shape[2:]) == self.image_size
            return x if same else F.interpolate(x, size=self.image_size, mode="nearest")
        if tuple(x.shape[2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return ((x + 1) / 2 - self.mean) / self.std

    def encode_images(self, img, grad=False):
        """img [N, C, H, W] in [-1, 1] -> raw image embeddings [N, E] fp32.

        grad=False: inference mode, result detached. grad=True: graph back to `img` (the weights
        stay frozen), for generator-side terms.
        """
        mode = contextlib.nullcontext() if grad else torch.inference_mode()
        with mode:
            x = self.prepare(img.to(self.device))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                feats = self.model.encode_image(x)
            feats = feats.float()
        # A clone outside inference mode is a normal tensor that autograd may save for backward.
        return feats if grad else feats.clone()

    def encode_texts(self, prompts):
        """prompts: list of K strings -> raw text embeddings [K, E] fp32 (constant)."""
        import open_clip

        if not prompts:
            raise ValueError("CLIPTeacher.encode_texts: no prompts; pass at least one")
        tokenizer = open_clip.get_tokenizer(self.model_name)
        with torch.inference_mode():
            tokens = tokenizer(list(prompts)).to(self.device)
            with self._autocast():
                feats = self.model.encode_text(tokens)
            feats = feats.float()
        return feats.clone()


def build_teacher(
    spec=DEFAULT_TEACHER,       # 'MODEL[:TAG]', see the module docstring
    ckpt=None,                  # local weights file for MODEL; None = download TAG
    cache_dir=None,             # download cache for TAG; None = open_clip's default
    preprocess="clip",          # 'clip' or 'released'
    device="cpu",               # torch.device to run on
    channels_last=False,        # see CLIPTeacher
):
    """A ready `CLIPTeacher`; raises TeacherError (one line) when the model or its weights cannot be had."""
    model, tag = parse_teacher_spec(spec)
    clip, name = load_clip_model(model, tag=tag, ckpt=ckpt, cache_dir=cache_dir)
    return CLIPTeacher(clip, name, preprocess=preprocess, device=device, channels_last=channels_last)
