"""Rank-0 outputs of the training loop: stats.jsonl, TensorBoard, the tick line and image grids."""

import json
import math
import os
import time
import warnings

import numpy as np
import PIL.Image
import torch

import dnnlib

# ----------------------------------------------------------------------------
# Image grids.


def default_grid_size(width, height, device_type, max_side=None):
    """(gw, gh): StyleGAN2-ADA's 7680x4320-pixel grid on CUDA; at most 8x4 images elsewhere.

    The full grid means hundreds of G forward passes at every image snapshot, minutes on a CPU.
    max_side: an int (train.py --grid) caps both sides; a pair (gw, gh) is used as is.
    """
    if isinstance(max_side, (list, tuple)):
        return int(max_side[0]), int(max_side[1])
    if device_type == "cuda":
        gw, gh = int(np.clip(7680 // width, 7, 32)), int(np.clip(4320 // height, 4, 32))
    else:
        gw, gh = 8, 4
    if max_side:
        gw, gh = min(gw, int(max_side)), min(gh, int(max_side))
    return gw, gh


def setup_snapshot_image_grid(training_set, grid_size, random_seed=0):
    """Pick the reals of the grid: returns (images uint8 [gw*gh, C, H, W], labels float32 [gw*gh, c_dim]).

    Without labels the images are a seeded random sample (repeating if the dataset is smaller than
    the grid). With labels each row holds one class (classes in seeded random order, cycling when
    there are fewer classes than rows; each row cycles through its class's images).
    """
    rnd = np.random.RandomState(random_seed)
    gw, gh = grid_size
    if not training_set.has_labels:
        order = list(range(len(training_set)))
        rnd.shuffle(order)
        indices = [order[i % len(order)] for i in range(gw * gh)]
    else:
        groups = {}
        for idx in range(len(training_set)):
            key = tuple(training_set.get_details(idx).raw_label.flat[::-1])
            groups.setdefault(key, []).append(idx)
        keys = sorted(groups)
        rnd.shuffle(keys)
        for key in keys:
            rnd.shuffle(groups[key])
        indices = []
        for row in range(gh):
            group = groups[keys[row % len(keys)]]
            indices += [group[col % len(group)] for col in range(gw)]
    images, labels = zip(*[training_set[i] for i in indices])
    return np.stack(images), np.stack(labels)


def save_image_grid(images, path, drange, grid_size):
    """Write images [gw*gh, C, H, W] (values in drange) as one PNG of gh rows and gw columns."""
    lo, hi = drange
    images = np.asarray(images, dtype=np.float32)
    images = np.rint((images - lo) * (255 / (hi - lo))).clip(0, 255).astype(np.uint8)
    gw, gh = grid_size
    _, channels, height, width = images.shape
    images = images.reshape(gh, gw, channels, height, width).transpose(0, 3, 1, 4, 2)
    images = images.reshape(gh * height, gw * width, channels)
    if channels == 1:
        PIL.Image.fromarray(images[:, :, 0], "L").save(path)
    elif channels == 3:
        PIL.Image.fromarray(images, "RGB").save(path)
    else:
        raise ValueError(f"save_image_grid: images have {channels} channels; only 1 (grey) or 3 (RGB) can be saved")


@torch.no_grad()
def generate_grid_images(G_ema, grid_z, grid_c):
    """G_ema on the fixed grid latents: lists of z [n, z_dim] and c [n, c_dim] -> float [N, C, H, W] (CPU)."""
    return torch.cat([G_ema(z, c, noise_mode="const").cpu() for z, c in zip(grid_z, grid_c)]).numpy()


# ----------------------------------------------------------------------------
# Console.


def tick_line(fields):
    """The tick line: StyleGAN2-ADA's fields, the plugins' (`fields.extra`, {name: float}), then
    `nonfinite` (gradient elements) and `eta`."""
    parts = [
        f"tick {fields.tick:<5d}",
        f"kimg {fields.kimg:<8.1f}",
        f"time {dnnlib.util.format_time(fields.total_sec):<12s}",
        f"sec/tick {fields.sec_per_tick:<7.1f}",
        f"sec/kimg {fields.sec_per_kimg:<7.2f}",
        f"maintenance {fields.maintenance_sec:<6.1f}",
        f"cpumem {fields.cpu_mem_gb:<6.2f}",
        f"gpumem {fields.gpu_mem_gb:<6.2f}",
        f"augment {fields.augment:.3f}",
        *(f"{name} {value:.3f}" for name, value in fields.get("extra", {}).items()),
        f"nonfinite {int(fields.nonfinite):d}",
        f"eta {_format_eta(fields.eta_sec)}",
    ]
    return " ".join(parts)


def _format_eta(seconds):
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return dnnlib.util.format_time(seconds)


# ----------------------------------------------------------------------------
# stats.jsonl and TensorBoard.


def _json_number(value):
    """NaN and +-inf as null (JSON has no such numbers)."""
    value = float(value)
    return value if math.isfinite(value) else None


class StatsWriter:
    """Appends one JSON line per tick to stats.jsonl and mirrors the means to TensorBoard."""

    def __init__(self, run_dir, start_time, log=print):
        self.path = os.path.join(run_dir, "stats.jsonl")
        self.file = open(self.path, "at", encoding="utf-8")
        self.start_time = start_time
        self.tensorboard = None
        try:
            import torch.utils.tensorboard as tensorboard
            self.tensorboard = tensorboard.SummaryWriter(run_dir)
        except ImportError as err:
            log(f"Skipping tfevents export: {err} (pip install tensorboard to get TensorBoard logs)")

    def write(self, stats, metrics, global_step, timestamp=None):
        """stats: {name: EasyDict(num, mean, std)}; metrics: {name: value}; global_step: kimg (int)."""
        timestamp = time.time() if timestamp is None else timestamp
        record = {name: {"num": int(value.num), "mean": _json_number(value.mean), "std": _json_number(value.std)}
                  for name, value in stats.items()}
        record["timestamp"] = timestamp
        self.file.write(json.dumps(record, allow_nan=False) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            walltime = timestamp - self.start_time
            for name, value in stats.items():
                self.tensorboard.add_scalar(name, value.mean, global_step=global_step, walltime=walltime)
            for name, value in metrics.items():
                self.tensorboard.add_scalar(f"Metrics/{name}", value, global_step=global_step, walltime=walltime)
            self.tensorboard.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def warn_once(message, _seen=set()):  # noqa: B006 -- the shared set is the point
    """warnings.warn(message) once per process."""
    if message not in _seen:
        _seen.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
