"""Train a GAN: StyleGAN2-ADA plus data-limited methods (DiffAugment, KD-DLGAN, APA, LeCam, InsGen).

\b
python train.py --outdir=runs --data=datasets/cats.zip --gpus=1 --dry-run
python train.py --outdir=runs --data=datasets/obama.zip --cfg=lowshot --mirror=1
python train.py --outdir=runs --data=datasets/cifar10.zip --cfg=cifar --cond=1 --gpus=2
torchrun --nproc_per_node=4 train.py --outdir=runs --data=datasets/ffhq256.zip --cfg=paper256

--gpus=N starts N local processes; on a machine without CUDA (or with --device=cpu) they are N CPU
processes talking over gloo. Under torchrun every process runs this script and --gpus must be unset
or equal to WORLD_SIZE. All the logic lives in training/train_options.py.
"""

import json
import os
import socket

import click

import dnnlib
from torch_utils import distributed
from training import train_options

# Looked up at call time (so the loop may not exist yet for --dry-run) and passed to spawned workers.
LOOP_FUNC = "training.training_loop.training_loop"

# ----------------------------------------------------------------------------
# One training process.


def run_training_process(func_name: str, kwargs: dict) -> None:
    """Join the process group, tee output to run_dir/log.txt (rank 0), and run the loop."""
    distributed.init()
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    if world_size != kwargs["num_gpus"]:
        raise click.ClickException(f"{world_size} processes joined but --gpus={kwargs['num_gpus']}; "
                                   "launch with torchrun --nproc_per_node=N or --gpus=N alone")
    log_file = os.path.join(kwargs["run_dir"], "log.txt") if rank == 0 else None
    logger = dnnlib.util.Logger(file_name=log_file, file_mode="a", should_flush=True)
    try:
        dnnlib.util.call_func_by_name(func_name=func_name, rank=rank, local_rank=distributed.get_local_rank(),
                                      **kwargs)
    finally:
        logger.close()
        distributed.shutdown()


def _spawned_worker(rank: int, func_name: str, kwargs: dict, port: int) -> None:
    """Entry point of process `rank` of a --gpus=N launch: the env:// variables torchrun would set."""
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(kwargs["num_gpus"]),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if kwargs["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # before CUDA is first touched, so the process group uses gloo
    os.environ.update(env)
    import torch

    if not torch.cuda.is_available():
        # N CPU processes share the cores instead of each starting one thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // kwargs["num_gpus"]))
    run_training_process(func_name, kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(func_name: str, kwargs: dict) -> None:
    import torch.multiprocessing

    torch.multiprocessing.spawn(_spawned_worker, args=(func_name, kwargs, _free_port()),
                                nprocs=kwargs["num_gpus"], join=True)


# ----------------------------------------------------------------------------
# Launch.


def format_header(kwargs: dict) -> str:
    """The console header printed before launch (REFERENCE 2.4)."""
    data = kwargs["training_set_kwargs"]
    rows = [("Output directory", kwargs["run_dir"]), ("Training data", data["path"]),
            ("Training duration", f"{kwargs['total_kimg']} kimg"), ("Number of GPUs", kwargs["num_gpus"]),
            ("Number of images", data["max_size"]), ("Image resolution", data["resolution"]),
            ("Conditional model", data["use_labels"]), ("Dataset x-flips", data["xflip"])]
    lines = ["", "Training options:", json.dumps(kwargs, indent=2), ""]
    lines += [f"{label + ':':<20} {value}" for label, value in rows]
    return "\n".join(lines) + "\n"


def _prepare_run_dir(setup, outdir: str, dry_run: bool) -> None:
    """Name the run dir, print the header, and (unless dry) create it and write training_options.json."""
    setup.kwargs.run_dir = train_options.next_run_dir(outdir, setup.desc)
    click.echo(format_header(setup.kwargs))
    if dry_run:
        click.echo("Dry run; exiting.")
        return
    click.echo("Creating output directory...")
    train_options.create_run_dir(setup.kwargs.run_dir)
    train_options.write_training_options(setup.kwargs, setup.kwargs.run_dir)


def _launch_torchrun(setup, outdir: str, dry_run: bool) -> None:
    """Every torchrun process builds the options; rank 0 alone names and creates the run dir."""
    import torch.distributed

    distributed.init()
    result = [None, None]  # [run_dir, error message]
    failure = None
    if distributed.is_main():
        try:
            _prepare_run_dir(setup, outdir, dry_run)
            result[0] = setup.kwargs.run_dir
        except (click.ClickException, OSError) as exc:
            failure, result[1] = exc, str(exc)  # tell the other ranks instead of leaving them waiting
    if distributed.get_world_size() > 1:
        torch.distributed.broadcast_object_list(result, src=0)
    if failure is not None:
        raise failure
    if result[1] is not None:
        raise click.ClickException(f"rank 0 could not create the run directory: {result[1]}")
    if dry_run:
        distributed.shutdown()
        return
    setup.kwargs.run_dir = result[0]
    run_training_process(LOOP_FUNC, setup.kwargs)


def launch(setup, outdir: str, dry_run: bool) -> None:
    """Create the run and start num_gpus training processes the way the launcher calls for."""
    if setup.launcher == "torchrun":
        _launch_torchrun(setup, outdir, dry_run)
        return
    _prepare_run_dir(setup, outdir, dry_run)
    if dry_run:
        return
    click.echo("Launching processes...")
    if setup.launcher == "spawn":
        _spawn(LOOP_FUNC, setup.kwargs)
    else:
        run_training_process(LOOP_FUNC, setup.kwargs)


# ----------------------------------------------------------------------------
# Command line.

_BOOL = {"type": bool, "metavar": "BOOL"}
_POS_INT = {"type": click.IntRange(min=1), "metavar": "INT"}
_NONNEG_INT = {"type": click.IntRange(min=0), "metavar": "INT"}
_UNIT = {"type": click.FloatRange(min=0, max=1), "metavar": "FLOAT"}
_POS_FLOAT = {"type": click.FloatRange(min=0, min_open=True), "metavar": "FLOAT"}

_OPTIONS = [
    # General.
    click.Option(["--outdir"], required=True, metavar="DIR", help="Parent of the run directories"),
    click.Option(["--gpus"], **_POS_INT, help="Processes (GPUs, or CPU processes without CUDA)  [default: 1]"),
    click.Option(["--snap"], **_POS_INT, help="Ticks between snapshots  [default: 50; 10 for tiny, lowshot]"),
    click.Option(["--image-snap"], **_POS_INT, help="Ticks between image grids  [default: --snap]"),
    click.Option(["--metrics"], metavar="LIST", help="Comma list or none  [default: fid50k_full; none for tiny]"),
    click.Option(["--seed"], **_NONNEG_INT, default=0, show_default=True, help="Random seed"),
    click.Option(["-n", "--dry-run"], is_flag=True, help="Print the options and exit; creates nothing"),
    click.Option(["--desc"], metavar="STR", help="Appended to the run-dir name"),
    click.Option(["--tick"], **_POS_INT, help="kimg per tick (progress line)  [default: 4; 1 for tiny]"),
    click.Option(["--keep-last"], **_POS_INT, help="Keep only the newest N snapshots  [default: all]"),
    click.Option(["--device"], default="auto", show_default=True, metavar="STR", help="auto, cpu, cuda, cuda:N"),
    click.Option(["--grid"], **_POS_INT, help="Max images per side of image grids  [default: chosen by the loop]"),
    # Dataset.
    click.Option(["--data"], required=True, metavar="PATH", help="Training data (folder or zip)"),
    click.Option(["--cond"], **_BOOL, default=False, show_default=True, help="Class-conditional (needs labels)"),
    click.Option(["--subset"], **_POS_INT, help="Train on N random images  [default: all]"),
    click.Option(["--mirror"], **_BOOL, default=False, show_default=True, help="Add x-flipped copies"),
    click.Option(["--metric-data"], metavar="PATH",
                 help="Reference data for --metrics, e.g. a CIFAR test split  [default: --data]"),
    # Base configuration.
    click.Option(["--cfg"], type=click.Choice(train_options.CFG_NAMES), default="auto", show_default=True,
                 help="Preset"),
    click.Option(["--gamma"], type=click.FloatRange(min=0), metavar="FLOAT", help="R1 weight  [default: preset]"),
    click.Option(["--kimg"], **_POS_INT, help="Training length in kimg  [default: preset]"),
    click.Option(["--batch"], **_POS_INT, help="Total batch size  [default: preset]"),
    click.Option(["--batch-gpu"], **_POS_INT, help="Batch per GPU and step  [default: preset or batch/gpus]"),
    click.Option(["--cbase"], **_POS_INT, help="Channel base  [default: preset]"),
    click.Option(["--cmax"], **_POS_INT, help="Max channels  [default: preset]"),
    click.Option(["--glr"], **_POS_FLOAT, help="G learning rate  [default: preset]"),
    click.Option(["--dlr"], **_POS_FLOAT, help="D learning rate  [default: preset]"),
    click.Option(["--map-depth"], **_POS_INT, help="Mapping-network layers  [default: preset]"),
    click.Option(["--mbstd-group"], **_POS_INT, help="Minibatch-std group size  [default: preset]"),
    # Discriminator augmentation.
    click.Option(["--aug"], type=click.Choice(train_options.AUG_MODES),
                 help="Augmentation mode  [default: ada; diffaug for lowshot]"),
    click.Option(["--p"], **_UNIT, help="Augmentation probability (--aug=fixed only)"),
    click.Option(["--target"], **_UNIT, help="ADA target (--aug=ada only)  [default: 0.6]"),
    click.Option(["--augpipe"], type=click.Choice(list(train_options.AUGPIPE_SPECS)),
                 help="ADA pipeline  [default: bgc]"),
    click.Option(["--diffaug-policy"], metavar="LIST",
                 help=f"DiffAugment ops (--aug=diffaug only)  [default: {train_options.DIFFAUG_DEFAULT_POLICY}]"),
    # Transfer learning and resuming.
    click.Option(["--resume"], metavar="PKL", help="noresume, latest, "
                 f"{', '.join(train_options.RESUME_URLS)}, a path or a URL  [default: noresume]"),
    click.Option(["--freezed"], **_NONNEG_INT, help="Freeze-D: frozen D layers  [default: 0]"),
    click.Option(["--allow-partial"], **_BOOL, default=False, show_default=True,
                 help="Resume even if some parameters do not match (they are reported)"),
    # Performance.
    click.Option(["--fp32"], **_BOOL, default=False, show_default=True, help="Disable mixed precision"),
    click.Option(["--nhwc"], **_BOOL, default=False, show_default=True, help="channels_last for fp16 layers"),
    click.Option(["--nobench"], **_BOOL, default=False, show_default=True, help="Disable cuDNN benchmarking"),
    click.Option(["--allow-tf32"], **_BOOL, default=False, show_default=True, help="Allow TF32 matmul/convs"),
    click.Option(["--workers"], **_NONNEG_INT, default=3, show_default=True, help="DataLoader worker processes"),
]


def make_command(plugin_module_names=None) -> click.Command:
    """The train.py command with the core options plus every available plugin's CLI_OPTIONS."""
    plugins = train_options.load_plugin_modules(plugin_module_names)
    params = list(_OPTIONS)
    taken = {name for option in params for name in [*option.opts, option.name]}
    for option in train_options.plugin_cli_options(plugins):
        clash = taken.intersection([*option.opts, option.name])
        if clash:
            raise RuntimeError(f"plugin option {', '.join(sorted(clash))} is already defined; rename it in its module")
        taken.update([*option.opts, option.name])
        params.append(option)

    def main(**opts):
        setup = train_options.build_training_setup(opts, plugins)
        launch(setup, opts["outdir"], opts["dry_run"])

    return click.Command("train", callback=main, params=params, help=__doc__)


main = make_command()

if __name__ == "__main__":
    main()  # pylint: disable=no-value-parameter
