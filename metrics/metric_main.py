"""Metric registry, the shared `calc_metric` entry point (training loop and calc_metrics.py), and result logging.

Names (REFERENCE.md 2.6; N = thousands of images, any positive integer):

    fid<N>k_full   FID: N fakes vs ALL reals (dataset max_size and x-flips off). fid50k_full is the ADA paper's.
    kid<N>k_full   KID: N fakes vs up to 1M reals (x-flips off); 100 subsets of min(1000, n) images.
    pr<N>k3_full   precision/recall, k = 3, VGG16 features: N fakes vs up to 200k reals (x-flips off).
                   Results `<name>_precision`, `<name>_recall`.
    is<N>k         Inception score of N fakes, 10 splits. Results `<name>_mean`, `<name>_std`.
    fid<N>k, kid<N>k, pr<N>k3
                   the legacy protocol: N fakes vs the first N items of the dataset AS TRAINED
                   (its max_size subset and its x-flips, if it was trained with --mirror).
    ppl_{z,w}{full,end}   PPL in Z (slerp) or W (lerp), t ~ U(0,1) ('full') or t = 0 ('end'),
                   face-cropped, 50k samples, eps 1e-4, batch 2. ppl2_* = the same uncropped
                   (ppl2_wend is the ADA paper's). Add _<N>k for another sample count: ppl2_wend_10k.

So `*_full` = every real image, no x-flips, against N fakes; no suffix = StyleGAN/StyleGAN2-era
numbers (N reals as the model was trained). The reference set is the training set unless
`metric_data` (calc_metrics.py / train.py --metric-data) names another dataset; it must have G's
resolution. PAPER_PROTOCOLS lists the protocols of the KD-DLGAN paper's tables.
"""

import json
import os
import re
import time

import dnnlib
from metrics import metric_utils
from metrics.frechet_inception_distance import compute_fid
from metrics.inception_score import compute_is
from metrics.kernel_inception_distance import compute_kid
from metrics.perceptual_path_length import compute_ppl
from metrics.precision_recall import compute_pr

PAPER_PROTOCOLS = {
    "few-shot": dnnlib.EasyDict(metrics=["fid5k_full"], data="the whole training set (--data)",
                                note="5k fakes vs every training image (100-shot / AnimalFace sets)"),
    "cifar": dnnlib.EasyDict(metrics=["fid10k", "is10k"], data="the CIFAR test split (--metric-data=cifar10-test.zip)",
                             note="10k fakes vs the 10k test images; IS of the same 10k fakes"),
}

_metric_dict = {}  # name -> fn(opts) -> dict of results
_FID_KID_RE = re.compile(r"^(fid|kid)(\d+)k(_full)?$")
_PR_RE = re.compile(r"^pr(\d+)k3(_full)?$")
_IS_RE = re.compile(r"^is(\d+)k$")
_PPL_RE = re.compile(r"^ppl(2)?_([zw])(full|end)(?:_(\d+)k)?$")
_MAX_REAL_FULL = {"fid": None, "kid": 1000000, "pr": 200000}


def register_metric(fn):
    """Decorator: register `fn(opts) -> dict` under its own name."""
    if not callable(fn):
        raise TypeError(f"register_metric: {fn!r} is not callable")
    _metric_dict[fn.__name__] = fn
    return fn


def parse_metric_name(name):
    """(family, kwargs) for a metric name of any count, or None."""
    if not isinstance(name, str):
        return None
    match = _FID_KID_RE.match(name)
    if match and int(match.group(2)) > 0:
        family, count, full = match.group(1), int(match.group(2)) * 1000, bool(match.group(3))
        return family, dict(max_real=_MAX_REAL_FULL[family] if full else count, num_gen=count, full=full)
    match = _PR_RE.match(name)
    if match and int(match.group(1)) > 0:
        count, full = int(match.group(1)) * 1000, bool(match.group(2))
        return "pr", dict(max_real=_MAX_REAL_FULL["pr"] if full else count, num_gen=count, full=full)
    match = _IS_RE.match(name)
    if match and int(match.group(1)) > 0:
        return "is", dict(num_gen=int(match.group(1)) * 1000)
    match = _PPL_RE.match(name)
    if match and (match.group(4) is None or int(match.group(4)) > 0):
        count = int(match.group(4)) * 1000 if match.group(4) else 50000
        return "ppl", dict(num_samples=count, space=match.group(2), sampling=match.group(3), crop=not match.group(1))
    return None


def needs_reference(name, G):
    """Does metric `name` read a dataset for G? fid/kid/pr compare with reals; every metric of a conditional
    G samples its labels from the dataset; is/ppl of an unconditional G need none."""
    parsed = parse_metric_name(name)
    return parsed is None or parsed[0] in ("fid", "kid", "pr") or getattr(G, "c_dim", 0) > 0


def _run(name, opts):
    """Results dict of an any-count metric name (the *_full dataset override is applied by calc_metric)."""
    family, kwargs = parse_metric_name(name)
    kwargs.pop("full", None)
    if family == "fid":
        return {name: compute_fid(opts, **kwargs)}
    if family == "kid":
        return {name: compute_kid(opts, **kwargs)}
    if family == "pr":
        precision, recall = compute_pr(opts, **kwargs)
        return {f"{name}_precision": precision, f"{name}_recall": recall}
    if family == "is":
        mean, std = compute_is(opts, **kwargs)
        return {f"{name}_mean": mean, f"{name}_std": std}
    return {name: compute_ppl(opts, **kwargs)}


# The named metrics of REFERENCE.md 2.6 and the paper's protocols; any other count works by name too.
@register_metric
def fid50k_full(opts):
    return _run("fid50k_full", opts)


@register_metric
def kid50k_full(opts):
    return _run("kid50k_full", opts)


@register_metric
def pr50k3_full(opts):
    return _run("pr50k3_full", opts)


@register_metric
def is50k(opts):
    return _run("is50k", opts)


@register_metric
def ppl2_wend(opts):
    return _run("ppl2_wend", opts)


@register_metric
def fid50k(opts):
    return _run("fid50k", opts)


@register_metric
def kid50k(opts):
    return _run("kid50k", opts)


@register_metric
def pr50k3(opts):
    return _run("pr50k3", opts)


@register_metric
def ppl_zfull(opts):
    return _run("ppl_zfull", opts)


@register_metric
def ppl_wfull(opts):
    return _run("ppl_wfull", opts)


@register_metric
def ppl_zend(opts):
    return _run("ppl_zend", opts)


@register_metric
def ppl_wend(opts):
    return _run("ppl_wend", opts)


@register_metric
def fid5k_full(opts):
    return _run("fid5k_full", opts)


@register_metric
def fid10k(opts):
    return _run("fid10k", opts)


@register_metric
def is10k(opts):
    return _run("is10k", opts)


def is_valid_metric(name):
    """True for a registered name or an any-count name (fid5k_full, kid10k, pr1k3, is10k, ppl2_wend_1k, ...)."""
    return name in _metric_dict or parse_metric_name(name) is not None


def list_valid_metrics():
    """The registered names (any-count variants such as fid10k_full are valid as well)."""
    return list(_metric_dict)


def _metric_fn(name):
    if name in _metric_dict:
        return _metric_dict[name]
    if parse_metric_name(name) is not None:
        return lambda opts: _run(name, opts)
    raise metric_utils.MetricError(f"unknown metric {name!r}; use one of {', '.join(list_valid_metrics())} "
                                   "or an any-count name such as fid10k_full")


# ----------------------------------------------------------------------------
# Entry points.


def reference_dataset_kwargs(G, dataset_kwargs=None, metric_data=None, full=False):
    """The reference set's kwargs: `metric_data` (a folder/zip) or `dataset_kwargs`, labels as G needs them.

    `full` (for *_full metrics) takes every image without x-flips. Returns None when neither is given.
    """
    if metric_data is not None:
        kwargs = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=os.fspath(metric_data),
                                 max_size=None, xflip=False, random_seed=0)
    elif dataset_kwargs:
        kwargs = dnnlib.EasyDict(dataset_kwargs)
    else:
        return None
    # The data's own resolution is checked against G's in check_reference (a clearer error than the loader's).
    kwargs.pop("resolution", None)
    if G is not None:
        kwargs.use_labels = G.c_dim > 0
    if full:
        kwargs.update(max_size=None, xflip=False)
    return kwargs


def check_reference(opts, option="reference set"):
    """Raise MetricError (one line) when the reference set does not fit G (resolution, labels)."""
    dataset, G = opts.dataset(), opts.G
    where = f"{option} {opts.dataset_kwargs.get('path')}"
    if dataset.resolution != G.img_resolution:
        raise metric_utils.MetricError(f"{where}: images are {dataset.resolution}x{dataset.resolution} but the network "
                                       f"makes {G.img_resolution}x{G.img_resolution}; build the reference set at "
                                       f"the network's resolution with dataset_tool.py")
    if G.c_dim > 0 and dataset.label_dim != G.c_dim:
        raise metric_utils.MetricError(f"{where}: has {dataset.label_dim} label dimensions but the network is "
                                       f"conditioned on {G.c_dim}; use a reference set with the training labels")


def calc_metric(metric, G=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None, metric_data=None,
                detector_path=None, vgg16_path=None, verbose=False, **kwargs):
    """Evaluate one metric of generator G (used by the training loop and calc_metrics.py).

    Args:
        metric: a name valid for is_valid_metric (see the module docstring).
        G: the generator (G_ema); it is copied to `device` and left untouched.
        dataset_kwargs: reference dataset kwargs (the training set's); `metric_data` (a path) replaces it.
        num_gpus, rank: processes sharing the work (an initialised torch.distributed group when > 1).
        detector_path / vgg16_path: Inception / VGG16 file or URL (None = env var, then official URL).
        **kwargs: more MetricOptions (cache, seed, G_kwargs, data_loader_kwargs, batch_size, batch_gen).
    Returns:
        EasyDict(results=EasyDict(name -> float), metric, total_time, total_time_str, num_gpus); the
        same on every rank.
    """
    fn = _metric_fn(metric)
    parsed = parse_metric_name(metric)
    full = bool(parsed and parsed[1].get("full"))
    reference = None
    if needs_reference(metric, G):
        reference = reference_dataset_kwargs(G, dataset_kwargs, metric_data, full=full)
    opts = metric_utils.MetricOptions(G=G, dataset_kwargs=reference, num_gpus=num_gpus, rank=rank, device=device,
                                      verbose=verbose, inception_path=detector_path, vgg16_path=vgg16_path, **kwargs)
    if reference is not None and G is not None:
        check_reference(opts, "--metric-data" if metric_data is not None else "reference set")
    start = time.time()
    results = fn(opts)
    total_time = time.time() - start
    return dnnlib.EasyDict(results=dnnlib.EasyDict(results), metric=metric, total_time=total_time,
                           total_time_str=dnnlib.util.format_time(total_time), num_gpus=num_gpus)


def report_metric(result_dict, run_dir=None, snapshot_pkl=None):
    """Append the result as one JSON line to `<run_dir>/metric-<metric>.jsonl` (when run_dir is set); return the line.

    Fields: results, metric, total_time, total_time_str, num_gpus, snapshot_pkl (relative to
    run_dir), timestamp. The caller prints the returned line (library code does not print).
    """
    metric = result_dict["metric"]
    if not is_valid_metric(metric):
        raise metric_utils.MetricError(f"report_metric: unknown metric {metric!r}")
    if run_dir is not None and snapshot_pkl is not None and not dnnlib.util.is_url(snapshot_pkl):
        snapshot_pkl = os.path.relpath(snapshot_pkl, run_dir)
    record = dict(result_dict, snapshot_pkl=snapshot_pkl, timestamp=time.time())
    line = json.dumps(record)
    if run_dir is not None:
        with open(os.path.join(run_dir, f"metric-{metric}.jsonl"), "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return line
