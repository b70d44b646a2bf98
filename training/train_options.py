"""train.py's logic: presets, validation, options -> training-loop kwargs, run directories, plugins.

Configuration flows one way (docs/DESIGN.md): click options -> `build_training_setup()` -> one EasyDict
of kwargs (components carry a `class_name`) -> training_options.json and `training_loop(**kwargs)`.
Plugin modules are named by string (`PLUGIN_MODULES`), never imported by name. Every user error is a
one-line `click.BadParameter` naming the option and the fix.
"""

import importlib
import json
import os
import re
from typing import NamedTuple

import click
import torch

import dnnlib
from training import snapshot


# Presets (docs/REFERENCE.md 2.2, plus `tiny` and `lowshot`).
class Preset(NamedTuple):
    """The numbers of one --cfg. ref_gpus: GPUs the batch split was tuned for (None = --gpus)."""
    ref_gpus: int | None
    kimg: int           # training length
    batch: int          # total batch over all GPUs
    mbstd: int          # minibatch-std group size
    fmaps: float        # channel_base = fmaps * 32768
    lr: float           # Adam learning rate of G and D
    gamma: float        # R1 weight
    ema: float          # G_ema half-life, kimg
    ramp: float | None  # EMA rampup ratio; None = off
    map: int            # mapping-network layers
    cmax: int = 512     # channel_max


FIXED_PRESETS = {
    "stylegan2": Preset(8, 25000, 32, 4, 1, 0.002, 10, 10, None, 8),
    "paper256": Preset(8, 25000, 64, 8, 0.5, 0.0025, 1, 20, None, 8),
    "paper512": Preset(8, 25000, 64, 8, 1, 0.0025, 0.5, 20, None, 8),
    "paper1024": Preset(8, 25000, 32, 4, 1, 0.002, 2, 10, None, 8),
    "cifar": Preset(2, 100000, 64, 32, 1, 0.0025, 0.01, 500, 0.05, 2),
    # DiffAugment's StyleGAN2 `low_shot` recipe (docs/METHOD.md 4); the batch splits over --gpus.
    "lowshot": Preset(None, 300, 8, 4, 1, 0.002, 10, 10, None, 2),
}
CFG_NAMES = ("auto", "stylegan2", "paper256", "paper512", "paper1024", "cifar", "tiny", "lowshot")
# tiny: 64 channels at 4..16 px, 32 at 32 px. At 32x32 a kimg of G+D steps took ~45-100 s on 2 shared CPU
# cores; per-op overhead, not channels, dominates there (half the channels saved nothing measurable).
TINY_BATCH, TINY_KIMG, TINY_CHANNEL_BASE, TINY_CHANNEL_MAX = 8, 50, 1024, 64

# Defaults a preset gives to options the user left unset (never shown in the run-dir name).
PRESET_OPTION_DEFAULTS = {
    "tiny": {"metrics": "none", "tick": 1, "snap": 10},  # FID on a CPU would take longer than the run
    "lowshot": {"aug": "diffaug", "snap": 10},
}


def resolve_preset(cfg: str, resolution: int, gpus: int) -> Preset:
    """The numbers of --cfg at this resolution and GPU count (auto and tiny derive them)."""
    if cfg in FIXED_PRESETS:
        spec = FIXED_PRESETS[cfg]
        return spec._replace(ref_gpus=spec.ref_gpus or gpus)
    if cfg == "auto":
        # Bound memory per GPU: 4096/res images each (1..32), at most 64 in total, at least 1 per GPU.
        batch = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
        return Preset(ref_gpus=gpus, kimg=25000, batch=batch, mbstd=min(batch // gpus, 4),
                      fmaps=1 if resolution >= 512 else 0.5, lr=0.002 if resolution >= 1024 else 0.0025,
                      gamma=0.0002 * resolution**2 / batch, ema=batch * 10 / 32, ramp=0.05, map=2)
    if cfg == "tiny":
        # auto's formulas for gamma and EMA, on a network small enough for CPU demos and tests.
        return Preset(ref_gpus=gpus, kimg=TINY_KIMG, batch=TINY_BATCH, mbstd=min(TINY_BATCH // gpus, 4) or 1,
                      fmaps=TINY_CHANNEL_BASE / 32768, lr=0.0025, gamma=0.0002 * resolution**2 / TINY_BATCH,
                      ema=TINY_BATCH * 10 / 32, ramp=0.05, map=2, cmax=TINY_CHANNEL_MAX)
    raise _bad("--cfg", f"unknown preset {cfg!r}; use one of {', '.join(CFG_NAMES)}")


# Fixed tables: ADA pipes, transfer-learning sources, DiffAugment ops.

_PIPE_PARTS = {"blit": "xflip rotate90 xint", "geom": "scale rotate aniso xfrac",
               "color": "brightness contrast lumaflip hue saturation", "filter": "imgfilter", "noise": "noise",
               "cutout": "cutout"}  # part -> AugmentPipe probability multipliers set to 1
_PIPE_UNIONS = {"bg": "blit geom", "bgc": "blit geom color", "bgcf": "blit geom color filter",
                "bgcfn": "blit geom color filter noise", "bgcfnc": "blit geom color filter noise cutout"}
AUGPIPE_SPECS = {name: {key: 1 for part in parts.split() for key in _PIPE_PARTS[part].split()}
                 for name, parts in {**{part: part for part in _PIPE_PARTS}, **_PIPE_UNIONS}.items()}

_SOURCE_NETS = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/"
RESUME_URLS = {  # the official StyleGAN2-ADA transfer-learning sources (URLs as published)
    "ffhq256": _SOURCE_NETS + "ffhq-res256-mirror-paper256-noaug.pkl",
    "ffhq512": _SOURCE_NETS + "ffhq-res512-mirror-stylegan2-noaug.pkl",
    "ffhq1024": _SOURCE_NETS + "ffhq-res1024-mirror-stylegan2-noaug.pkl",
    "celebahq256": _SOURCE_NETS + "celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl",
    "lsundog256": _SOURCE_NETS + "lsundog-res256-paper256-kimg100000-noaug.pkl",
}


def pretrained_url(name: str) -> str | None:
    """The official URL for a short name of RESUME_URLS, or None: for any other name, and where a
    local file of that name exists (a file the user named wins over the short name everywhere)."""
    return RESUME_URLS[name] if name in RESUME_URLS and not os.path.exists(name) else None


# Must match stylegan2_ada_kd.diffaugment.POLICIES (checked by a test; not imported, see DESIGN.md).
DIFFAUG_OPS = ("color", "translation", "cutout")
DIFFAUG_DEFAULT_POLICY = "color,translation,cutout"
DIFFAUG_CLASS = "stylegan2_ada_kd.diffaugment.DiffAugment"
AUG_MODES = ("ada", "noaug", "fixed", "diffaug")


def _bad(option: str, message: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint=f"'{option}'")


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_diffaug_policy(policy: str) -> str:
    """'cutout, color' -> 'color,cutout' (DiffAugment's fixed order); raises naming --diffaug-policy."""
    names = [name.strip() for name in str(policy).split(",") if name.strip()]
    unknown = [name for name in names if name not in DIFFAUG_OPS]
    if unknown or not names or len(set(names)) != len(names):
        problem = f"unknown {', '.join(unknown)}" if unknown else "empty or repeated names"
        raise _bad("--diffaug-policy", f"{policy!r}: {problem}; use a comma list of {', '.join(DIFFAUG_OPS)}")
    return ",".join(name for name in DIFFAUG_OPS if name in names)


KNOWN_METRICS = ("fid50k_full", "kid50k_full", "pr50k3_full", "is50k", "ppl2_wend", "fid50k", "kid50k",
                 "pr50k3", "ppl_zfull", "ppl_wfull", "ppl_zend", "ppl_wend")
# e.g. fid10k, kid5k_full, pr10k3, ppl2_wend_10k
_METRIC_PATTERN = re.compile(r"^(?:(?:fid|kid|is)\d+k|pr\d+k3)(?:_full)?$|^ppl2?_[zw](?:full|end)(?:_\d+k)?$")


def _metric_registry():
    """metrics.metric_main if it exists and has `is_valid_metric`, else None (fallback list below)."""
    try:
        module = importlib.import_module("metrics.metric_main")
    except ModuleNotFoundError as exc:
        if exc.name in ("metrics", "metrics.metric_main"):
            return None
        raise
    return module if hasattr(module, "is_valid_metric") else None


def is_valid_metric(name: str) -> bool:
    """True for a metric the registry knows; without a registry, REFERENCE 2.6 names and <base><N>k[_full]."""
    registry = _metric_registry()
    if registry is not None:
        return bool(registry.is_valid_metric(name))
    return name in KNOWN_METRICS or bool(_METRIC_PATTERN.match(name))


def parse_metrics(text: str) -> list:
    """'fid50k_full,kid50k_full' -> list; 'none' or '' -> []; raises naming --metrics."""
    names = [] if text.strip().lower() == "none" else [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if not is_valid_metric(name):
            registry = _metric_registry()
            valid = registry.list_valid_metrics() if hasattr(registry, "list_valid_metrics") else KNOWN_METRICS
            raise _bad("--metrics", f"unknown metric {name!r}; use a comma list of {', '.join(valid)}, or none")
    return names


# Processes and devices.
def resolve_num_gpus(gpus: int | None, environ=None):
    """(num_gpus, launcher): 'torchrun' when RANK and WORLD_SIZE are set, else 'spawn' (N > 1) or 'single'."""
    environ = os.environ if environ is None else environ
    if environ.get("RANK") and environ.get("WORLD_SIZE"):
        world_size = int(environ["WORLD_SIZE"])
        if gpus is not None and gpus != world_size:
            raise _bad("--gpus", f"{gpus} but torchrun started WORLD_SIZE={world_size} processes; "
                                 f"drop --gpus or pass --gpus={world_size}")
        return world_size, "torchrun"
    gpus = 1 if gpus is None else gpus
    return gpus, ("spawn" if gpus > 1 else "single")


def check_device(device: str, num_gpus: int, launcher: str) -> None:
    """Reject devices torch cannot use, and more local processes than visible CUDA devices."""
    if device == "auto":
        wants_cuda = torch.cuda.is_available()
    else:
        try:
            wants_cuda = torch.device(device).type == "cuda"
        except (RuntimeError, ValueError):
            raise _bad("--device", f"{device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
        if wants_cuda and not torch.cuda.is_available():
            raise _bad("--device", f"{device} but CUDA is not available here; pass --device=cpu or auto")
        if wants_cuda and ":" in device and num_gpus > 1:
            raise _bad("--device", f"{device} names one GPU but --gpus={num_gpus}; pass --device=cuda or auto")
    if wants_cuda and launcher == "spawn" and num_gpus > torch.cuda.device_count():
        raise _bad("--gpus", f"{num_gpus} but only {torch.cuda.device_count()} CUDA devices are visible; "
                             f"lower --gpus, or pass --device=cpu for {num_gpus} CPU processes")


# Plugin options: modules named by string, each optional.
PLUGIN_MODULES = ["stylegan2_ada_kd.kd_plugin", "stylegan2_ada_kd.apa", "stylegan2_ada_kd.lecam", "stylegan2_ada_kd.insgen"]


def load_plugin_modules(names=None) -> list:
    """Import the plugin modules that exist; a missing module is skipped, a broken one raises."""
    modules = []
    for name in PLUGIN_MODULES if names is None else names:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            # Skip only when the plugin itself (or its package) is absent, not when it fails inside.
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise
    return modules


def plugin_cli_options(modules) -> list:
    """All `CLI_OPTIONS` (click.Option objects) the plugin modules define."""
    return [option for module in modules for option in getattr(module, "CLI_OPTIONS", [])]


def make_plugin_kwargs(modules, opts: dict, context: dnnlib.EasyDict) -> list:
    """Concatenate each module's `make_plugin_kwargs(opts, context)`; each item needs a class_name."""
    plugins = []
    for module in modules:
        make = getattr(module, "make_plugin_kwargs", None)
        for item in (make(dict(opts), context) or []) if make is not None else []:
            if not isinstance(item, dict) or not isinstance(item.get("class_name"), str):
                raise click.ClickException(f"plugin {module.__name__}: make_plugin_kwargs returned {item!r}; "
                                           "each entry must be a dict with a 'class_name' string")
            plugins.append(dnnlib.EasyDict(item))
    return plugins


def plugin_run_desc(modules, opts: dict) -> str:
    """'-<a>-<b>' from the modules' optional `run_desc(opts)`, in registry order ('' for none)."""
    parts = [getattr(m, "run_desc", lambda _opts: "")(dict(opts)) for m in modules]
    return "".join(f"-{part.strip('-')}" for part in parts if part and part.strip("-"))


def describe_dataset(path: str, option: str = "--data") -> dnnlib.EasyDict:
    """Open a dataset once: name, resolution, size, labels and class names; raises naming `option`."""
    try:
        dataset = dnnlib.util.construct_class_by_name(class_name="training.dataset.ImageFolderDataset",
                                                      path=path, use_labels=True, max_size=None, xflip=False)
        info = dnnlib.EasyDict(name=dataset.name, path=path, resolution=dataset.resolution,
                               num_channels=dataset.num_channels, num_images=len(dataset),
                               has_labels=dataset.has_labels, label_dim=dataset.label_dim,
                               class_names=dataset.class_names)
        dataset.close()
    except (OSError, ValueError) as exc:  # DatasetError is a ValueError with a one-line message.
        raise _bad(option, str(exc).replace("--data", option)) from None
    return info




def _run_is_for_dataset(run_path: str, dir_name: str, dataset_name: str) -> bool:
    """Does this run dir train on `dataset_name`? Its training_options.json says; else its name does."""
    try:
        with open(os.path.join(run_path, "training_options.json"), encoding="utf-8") as f:
            data_path = json.load(f)["training_set_kwargs"]["path"]
        return os.path.splitext(os.path.basename(os.path.normpath(data_path)))[0] == dataset_name
    except (OSError, ValueError, KeyError, TypeError):
        desc = dir_name.split("-", 1)[1] if "-" in dir_name else ""
        return desc == dataset_name or desc.startswith(dataset_name + "-")


def find_latest_resume(outdir: str, dataset_name: str) -> str | None:
    """Newest complete snapshot of `dataset_name` in outdir's runs: the highest-numbered run of that
    dataset holding one, then `snapshot.find_latest` within it (a training state beats a pickle)."""
    for _, dir_name in sorted(_numbered_dirs(outdir), reverse=True):
        run_path = os.path.join(outdir, dir_name)
        if _run_is_for_dataset(run_path, dir_name, dataset_name):
            path = snapshot.find_latest(run_path)
            if path is not None:
                return path
    return None


def resolve_resume(resume: str, outdir: str, dataset_name: str):
    """(resume_pkl or None, run-dir suffix) for --resume (short names through `pretrained_url`)."""
    if resume == "noresume":
        return None, ""
    url = pretrained_url(resume)
    if url is not None:
        return url, f"-resume{resume}"
    if resume == "latest":
        path = find_latest_resume(outdir, dataset_name)
        if path is None:
            raise _bad("--resume", f"latest: no complete training-state-*.pt or network-snapshot-*.pkl for "
                                   f"dataset '{dataset_name}' in the runs under {outdir}; drop --resume or pass a file")
        return os.path.abspath(path), "-resumelatest"
    if dnnlib.util.is_url(resume, allow_file_urls=True):
        return resume, "-resumecustom"
    if os.path.isfile(resume):
        if not snapshot.looks_complete(resume):
            raise _bad("--resume", f"{resume}: not a complete training-state-*.pt or network pickle (truncated, "
                                   "or written by other software); pass a file written by train.py")
        return os.path.abspath(resume), "-resumecustom"
    raise _bad("--resume", f"{resume}: no such file; pass a path, a URL, latest, noresume or one of "
                           f"{', '.join(RESUME_URLS)}")


# Options -> kwargs tree. OPTION_DEFAULTS: every option the builder reads and its value when not given;
# None marks options whose default depends on the preset or that enter the run-dir name only when set.
OPTION_DEFAULTS = {
    **dict.fromkeys("outdir gpus snap image_snap metrics desc tick keep_last grid data subset gamma kimg batch "
                    "batch_gpu cbase cmax glr dlr map_depth mbstd_group aug p target augpipe diffaug_policy resume "
                    "freezed metric_data".split()),
    **dict.fromkeys("cond mirror allow_partial fp32 nhwc nobench allow_tf32".split(), False),
    "seed": 0, "device": "auto", "cfg": "auto", "workers": 3}


def _apply_preset_defaults(opts: dnnlib.EasyDict) -> set:
    """Fill unset options from the preset's own defaults; return the names the user set explicitly."""
    explicit = {name for name, value in opts.items() if value is not None}
    for name, value in PRESET_OPTION_DEFAULTS.get(opts.cfg, {}).items():
        if opts.get(name) is None:
            opts[name] = value
    return explicit


def _dataset_kwargs(opts, info) -> dnnlib.EasyDict:
    """training_set_kwargs from --data, --cond, --subset, --mirror and --seed."""
    if opts.cond and not info.has_labels:
        raise _bad("--cond", f"needs class labels but {info.path} has none in dataset.json; "
                             "make a labelled dataset with dataset_tool.py or drop --cond")
    if opts.subset is not None and not 1 <= opts.subset <= info.num_images:
        raise _bad("--subset", f"{opts.subset} is outside 1..{info.num_images} (the dataset's size)")
    return dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=info.path,
                           use_labels=bool(opts.cond), max_size=opts.subset or info.num_images,
                           xflip=bool(opts.mirror), resolution=info.resolution, random_seed=opts.seed)


def _metric_dataset_kwargs(opts, info) -> dnnlib.EasyDict | None:
    """Reference set for --metrics from --metric-data (same resolution, labels as trained, no x-flip); None = --data."""
    if opts.metric_data is None:
        return None
    ref = describe_dataset(opts.metric_data, option="--metric-data")
    if ref.resolution != info.resolution:
        raise _bad("--metric-data", f"{opts.metric_data} is {ref.resolution}x{ref.resolution} but --data is "
                                    f"{info.resolution}x{info.resolution}; build it at the training resolution")
    if opts.cond and not ref.has_labels:
        raise _bad("--metric-data", f"{opts.metric_data} has no labels but --cond is on; use a labelled reference set")
    return dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=ref.path, use_labels=bool(opts.cond),
                           max_size=None, xflip=False, resolution=ref.resolution, random_seed=opts.seed)


def _network_kwargs(opts, spec: Preset):
    """G_kwargs and D_kwargs: channels, mapping depth, mixed precision, Freeze-D, minibatch-std."""
    channel_base = opts.cbase or int(spec.fmaps * 32768)
    channel_max = opts.cmax or spec.cmax
    # fp16 in the top 4 resolutions, clamped to +-256 against overflow; the networks run fp16 on CUDA only.
    fp16_res, clamp = (0, None) if opts.fp32 else (4, 256)
    synthesis = dnnlib.EasyDict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=fp16_res,
                                conv_clamp=clamp)
    G_kwargs = dnnlib.EasyDict(class_name="training.networks.Generator", z_dim=512, w_dim=512,
                               mapping_kwargs=dnnlib.EasyDict(num_layers=opts.map_depth or spec.map),
                               synthesis_kwargs=synthesis)
    D_kwargs = dnnlib.EasyDict(class_name="training.networks.Discriminator", channel_base=channel_base,
                               channel_max=channel_max, num_fp16_res=fp16_res, conv_clamp=clamp,
                               block_kwargs=dnnlib.EasyDict(freeze_layers=opts.freezed or 0),
                               mapping_kwargs=dnnlib.EasyDict(),
                               epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=opts.mbstd_group or spec.mbstd))
    if opts.nhwc:
        G_kwargs.synthesis_kwargs.fp16_channels_last = D_kwargs.block_kwargs.fp16_channels_last = True
    if opts.cfg == "cifar":
        D_kwargs.architecture = "orig"
    return G_kwargs, D_kwargs


def _loss_kwargs(opts, spec: Preset) -> dnnlib.EasyDict:
    """StyleGAN2Loss kwargs; plugins are appended later."""
    gamma = spec.gamma if opts.gamma is None else opts.gamma
    loss = dnnlib.EasyDict(class_name="training.loss.StyleGAN2Loss", r1_gamma=gamma, style_mixing_prob=0.9,
                           pl_weight=2, pl_batch_shrink=2, pl_decay=0.01, plugins=[])
    if opts.cfg == "cifar":
        loss.style_mixing_prob, loss.pl_weight = 0, 0  # as the reference's cifar preset
    return loss


def _batch_sizes(opts, spec: Preset, num_gpus: int):
    """(batch_size, batch_gpu), checked against --gpus and the minibatch-std group."""
    source = "--batch" if opts.batch is not None else f"--cfg={opts.cfg}'s batch"
    batch = opts.batch or spec.batch
    if batch % num_gpus:
        raise _bad("--batch", f"{source} {batch} is not divisible by --gpus={num_gpus}; "
                              f"pass --batch as a multiple of {num_gpus}")
    # Presets split their batch over the GPUs they were tuned for (the loop accumulates the rest).
    batch_gpu = opts.batch_gpu or (batch // num_gpus if opts.batch is not None else batch // spec.ref_gpus)
    if batch_gpu < 1 or batch % (batch_gpu * num_gpus):
        raise _bad("--batch-gpu", f"batch {batch} is not a multiple of batch per GPU {batch_gpu} x --gpus={num_gpus}; "
                                  "pass --batch-gpu dividing batch/gpus")
    mbstd = opts.mbstd_group or spec.mbstd
    if batch_gpu % min(mbstd, batch_gpu):
        raise _bad("--mbstd-group", f"{mbstd} does not divide the batch per GPU ({batch_gpu}); "
                                    "pass --mbstd-group dividing it or change --batch-gpu")
    return batch, batch_gpu


def _augment_options(opts, explicit: set) -> dnnlib.EasyDict:
    """augment_kwargs, augment_p, ada_target from --aug, --p, --target, --augpipe, --diffaug-policy."""
    aug = opts.aug or "ada"
    implied = "" if "aug" in explicit or aug == "ada" else f" (--cfg={opts.cfg} implies --aug={aug})"
    if opts.p is not None and aug != "fixed":
        raise _bad("--p", f"only applies to --aug=fixed, not --aug={aug}{implied}; drop --p or pass --aug=fixed")
    if aug == "fixed" and opts.p is None:
        raise _bad("--p", "--aug=fixed needs --p (the fixed augmentation probability in [0, 1])")
    if opts.target is not None and aug != "ada":
        raise _bad("--target", f"only applies to --aug=ada, not --aug={aug}{implied}; drop --target")
    if opts.augpipe is not None and aug in ("noaug", "diffaug"):
        raise _bad("--augpipe", f"does not apply to --aug={aug}{implied}; drop --augpipe")
    if opts.diffaug_policy is not None and aug != "diffaug":
        raise _bad("--diffaug-policy", f"only applies to --aug=diffaug, not --aug={aug}; pass --aug=diffaug")
    out = dnnlib.EasyDict(augment_kwargs=None, augment_p=float(opts.p or 0), ada_target=None)
    if aug == "diffaug":
        out.augment_kwargs = dnnlib.EasyDict(class_name=DIFFAUG_CLASS,
                                             policy=parse_diffaug_policy(opts.diffaug_policy or DIFFAUG_DEFAULT_POLICY))
    elif aug in ("ada", "fixed"):
        out.augment_kwargs = dnnlib.EasyDict(class_name="training.augment.AugmentPipe",
                                             **AUGPIPE_SPECS[opts.augpipe or "bgc"])
    if aug == "ada":
        out.ada_target = 0.6 if opts.target is None else float(opts.target)
    return out


def run_desc(opts, explicit: set, info, gpus: int, resume_desc: str, plugin_desc: str) -> str:
    """The run-dir name after NNNNN- (REFERENCE 2.4 order, then our options, plugins, --desc)."""
    o = opts
    desc = info.name + ("-cond" if o.cond else "") + (f"-subset{o.subset}" if o.subset else "")
    desc += ("-mirror" if o.mirror else "") + f"-{o.cfg}" + (str(gpus) if o.cfg == "auto" else "")
    for name, label in (("gamma", "gamma"), ("kimg", "kimg"), ("batch", "batch"), ("aug", ""),
                        ("p", "p"), ("target", "target"), ("augpipe", "")):
        desc += f"-{label}{_fmt(o[name])}" if name in explicit else ""
    if "diffaug_policy" in explicit:
        desc += "-" + parse_diffaug_policy(o.diffaug_policy).replace(",", "-")
    desc += resume_desc + (f"-freezed{o.freezed}" if "freezed" in explicit else "")
    for name, label in (("cbase", "cbase"), ("cmax", "cmax"), ("glr", "glr"), ("dlr", "dlr"),
                        ("map_depth", "map"), ("mbstd_group", "mbstd")):
        desc += f"-{label}{_fmt(o[name])}" if name in explicit else ""
    return desc + plugin_desc + (f"-{o.desc}" if o.desc else "")


def build_training_setup(opts: dict, plugin_modules=None) -> dnnlib.EasyDict:
    """Validate click's options and build EasyDict(kwargs, desc, dataset, launcher); creates nothing.

    `opts` maps option names (underscored, as click passes them) to values; missing or None entries
    take OPTION_DEFAULTS. Plugin options ride along untouched. `kwargs.run_dir` stays None:
    `next_run_dir()` names it and `create_run_dir()` makes it.
    """
    opts = dnnlib.EasyDict(OPTION_DEFAULTS, **{k: v for k, v in opts.items() if v is not None})
    for option in plugin_cli_options(plugin_modules or []):
        opts.setdefault(option.name, None)  # callers other than click may leave plugin options out
    explicit = _apply_preset_defaults(opts)
    num_gpus, launcher = resolve_num_gpus(opts.gpus)
    check_device(opts.device, num_gpus, launcher)
    info = describe_dataset(opts.data)
    spec = resolve_preset(opts.cfg, info.resolution, num_gpus)
    c = dnnlib.EasyDict(run_dir=None, training_set_kwargs=_dataset_kwargs(opts, info))
    prefetch = {"prefetch_factor": 2} if opts.workers else {}  # DataLoader rejects it without workers
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=opts.workers, **prefetch)
    c.G_kwargs, c.D_kwargs = _network_kwargs(opts, spec)
    c.G_opt_kwargs = dnnlib.EasyDict(class_name="torch.optim.Adam", lr=opts.glr or spec.lr, betas=[0.0, 0.99], eps=1e-8)
    c.D_opt_kwargs = dnnlib.EasyDict(class_name="torch.optim.Adam", lr=opts.dlr or spec.lr, betas=[0.0, 0.99], eps=1e-8)
    c.loss_kwargs = _loss_kwargs(opts, spec)
    c.update(_augment_options(opts, explicit))
    resume_pkl, resume_desc = resolve_resume(opts.resume or "noresume", opts.outdir, info.name)
    # Resuming from anything: ADA reacts 5x faster and G_ema starts without rampup (as the reference).
    c.ada_kimg, c.ada_interval = (500 if resume_pkl is None else 100), 4
    c.metrics, c.random_seed, c.num_gpus = parse_metrics(opts.metrics or "fid50k_full"), opts.seed, num_gpus
    c.metric_dataset_kwargs = _metric_dataset_kwargs(opts, info)
    c.batch_size, c.batch_gpu = _batch_sizes(opts, spec, num_gpus)
    c.ema_kimg, c.ema_rampup = spec.ema, (spec.ramp if resume_pkl is None else None)
    c.G_reg_interval, c.D_reg_interval = 4, 16
    c.total_kimg, c.kimg_per_tick = opts.kimg or spec.kimg, opts.tick or 4
    c.network_snapshot_ticks = opts.snap or 50
    c.image_snapshot_ticks = opts.image_snap or c.network_snapshot_ticks
    c.keep_last, c.resume_pkl, c.allow_partial = opts.keep_last, resume_pkl, bool(opts.allow_partial)
    c.cudnn_benchmark, c.allow_tf32 = not opts.nobench, bool(opts.allow_tf32)
    c.device, c.grid_size = opts.device, opts.grid
    info.update(num_gpus=num_gpus, num_train_images=c.training_set_kwargs.max_size, kwargs=c)  # plugin context
    c.loss_kwargs.plugins = make_plugin_kwargs(plugin_modules or [], opts, info)
    del info.kwargs  # the context was for the plugins; the caller gets the tree as `kwargs`
    desc = run_desc(opts, explicit, info, num_gpus, resume_desc, plugin_run_desc(plugin_modules or [], opts))
    return dnnlib.EasyDict(kwargs=c, desc=desc, dataset=info, launcher=launcher)


# Run directories and the options file.
def _numbered_dirs(outdir: str):
    """(number, name) of each subdirectory of outdir whose name starts with digits."""
    found = [(re.match(r"[0-9]+", name), name) for name in (os.listdir(outdir) if os.path.isdir(outdir) else [])]
    return [(int(m.group()), name) for m, name in found if m and os.path.isdir(os.path.join(outdir, name))]


def next_run_dir(outdir: str, desc: str) -> str:
    """<outdir>/<NNNNN>-<desc>, NNNNN = 1 + the largest numeric prefix present (00000 in a new outdir)."""
    run_id = max((run_id for run_id, _ in _numbered_dirs(outdir)), default=-1) + 1
    return os.path.join(outdir, f"{run_id:05d}-{desc}")


def create_run_dir(run_dir: str) -> None:
    """Make the run dir; refuse one that already exists (two launches raced for the same number)."""
    try:
        os.makedirs(run_dir, exist_ok=False)
    except FileExistsError:
        raise click.ClickException(f"{run_dir} already exists (another run took this number?); launch again") from None


def write_training_options(kwargs: dict, run_dir: str) -> str:
    """Write the kwargs tree to <run_dir>/training_options.json and return the path."""
    path = os.path.join(run_dir, "training_options.json")
    with open(path, "wt", encoding="utf-8") as f:
        json.dump(kwargs, f, indent=2)
    return path


def load_training_options(path: str) -> dnnlib.EasyDict:
    """Read training_options.json back as the same EasyDict tree."""
    with open(path, encoding="utf-8") as f:
        return json.load(f, object_hook=dnnlib.EasyDict)
