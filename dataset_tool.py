"""Convert images into a training dataset: a zip or folder of PNGs plus dataset.json.

Examples:
  python dataset_tool.py --source=~/photos --dest=~/datasets/photos256.zip --resolution=256x256 --transform=center-crop
  python dataset_tool.py --source=cifar-10-python.tar.gz --dest=~/datasets/cifar10.zip
  python dataset_tool.py --source=sample:shapes --dest=/tmp/shapes.zip

The logic lives in training/dataset_convert.py; this file parses options and prints.
"""

import signal
import sys

import click
import tqdm

from training.dataset_convert import convert_dataset
from training.dataset_io import DatasetError
from training.dataset_transforms import parse_resolution

_MAX_LISTED = 10  # Skipped files named in the summary; the rest are counted.


def _tqdm_progress(iterable, total, desc):
    return tqdm.tqdm(iterable, total=total, desc=desc, unit="img", dynamic_ncols=True)


def _resolve_size(resolution, width, height):
    """(W, H) from --resolution or the StyleGAN2-ADA spelling --width/--height; None if neither."""
    if resolution is not None and (width is not None or height is not None):
        raise DatasetError("pass either --resolution=WxH or --width/--height, not both")
    if resolution is not None:
        return parse_resolution(resolution)
    if (width is None) != (height is None):
        raise DatasetError("--width and --height go together; or pass --resolution=WxH")
    return None if width is None else (width, height)


def _print_summary(result):
    click.echo(f"Wrote {result.num_images} images to {result.dest}")
    click.echo(f"  source:     {result.source}")
    mode = "grayscale" if result.channels == 1 else "RGB"
    click.echo(f"  images:     {result.resolution}x{result.resolution}, {result.channels} channel(s) ({mode})")
    if result.label_kind == "classes" and result.class_names:
        names = result.class_names
        shown = ", ".join(names[:_MAX_LISTED]) + (", ..." if len(names) > _MAX_LISTED else "")
        click.echo(f"  labels:     {len(names)} classes ({shown})")
    elif result.label_kind == "classes":
        click.echo("  labels:     class indices (no class names)")
    else:
        click.echo(f"  labels:     {result.label_kind}")
    if result.skipped:
        click.echo(f"  skipped:    {len(result.skipped)} unreadable file(s):")
        for _, reason in result.skipped[:_MAX_LISTED]:
            click.echo(f"    {reason}")  # The reason names the file in full.
        if len(result.skipped) > _MAX_LISTED:
            click.echo(f"    ... and {len(result.skipped) - _MAX_LISTED} more")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--source", required=True, metavar="PATH",
              help="Folder or zip of images (class labels from first-level sub-folders or dataset.json), "
                   "CIFAR-10/100 python .tar.gz or extracted folder, or sample:shapes.")
@click.option("--dest", required=True, metavar="PATH", help="Output .zip or folder (written atomically).")
@click.option("--max-images", type=click.IntRange(min=1), metavar="INT",
              help="Write at most this many images (the first ones). For sample: sources, how many to draw "
                   "(default 1000, at most 100000).")
@click.option("--resolution", metavar="WxH", help="Output size, e.g. 256x256 (default: keep the source size).")
@click.option("--width", type=click.IntRange(min=1), help="Output width (StyleGAN2-ADA spelling; use with --height).")
@click.option("--height", type=click.IntRange(min=1), help="Output height (StyleGAN2-ADA spelling; use with --width).")
@click.option("--transform", type=click.Choice(["center-crop", "center-crop-wide"]),
              help="Crop to the output aspect before resizing; center-crop-wide then letterboxes into a square.")
@click.option("--resize-filter", type=click.Choice(["box", "lanczos"]), default="lanczos", show_default=True,
              help="Resampling filter.")
@click.option("--split", type=click.Choice(["train", "test"]), help="CIFAR split (default train).")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of sample: sources (default 0).")
@click.option("--skip-bad", is_flag=True, help="Leave out unreadable images (reported at the end) instead of stopping.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing non-empty --dest, once the new dataset is complete.")
def main(source, dest, max_images, resolution, width, height, transform, resize_filter, split, seed, skip_bad,
         overwrite):
    """Convert images into a StyleGAN2-ADA training dataset (NNNNN/imgNNNNNNNN.png + dataset.json)."""
    try:
        result = convert_dataset(
            source=source,
            dest=dest,
            max_images=max_images,
            resolution=_resolve_size(resolution, width, height),
            transform=transform,
            resize_filter=resize_filter,
            split=split,
            seed=seed,
            skip_bad=skip_bad,
            overwrite=overwrite,
            progress=_tqdm_progress,
        )
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    _print_summary(result)


if __name__ == "__main__":
    # Turn `kill` into an exception so the writer deletes its temporary output on the way out, as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    main()
