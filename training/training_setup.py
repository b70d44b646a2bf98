"""Set-up and per-step helpers of the training loop: device, allocator, RNG, data, schedules, gradients."""

import copy
import ctypes
import ctypes.util
import os
import random

import numpy as np
import torch

import dnnlib
from torch_utils import misc

# ----------------------------------------------------------------------------
# Device and process set-up.


def resolve_device(device, local_rank):
    """'auto' -> cuda:<local_rank> when CUDA is available, else the CPU; other names are checked."""
    local_rank = 0 if local_rank is None else int(local_rank)
    if device in (None, "auto"):
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here; use device='cpu' or 'auto'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_MALLOPT_SETTINGS = (
    # Never serve big blocks with mmap: the activations exceed the mmap threshold, so every step
    # would map and unmap them again (page faults; ENVIRONMENT.md section 7 measured ~1.8x).
    ("M_MMAP_MAX", _M_MMAP_MAX, 0),
    # Keep freed heap memory instead of returning it to the OS (the next step needs it again);
    # INT_MAX is the largest value mallopt's int argument takes.
    ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, 2**31 - 1),
    # Grow the heap in 1 GiB steps rather than page by page.
    ("M_TOP_PAD", _M_TOP_PAD, 1 << 30),
)


def configure_cpu_malloc():
    """Apply the glibc malloc settings above via ctypes; returns a one-line description or None.

    A no-op (returns None) off glibc or when SG2KD_NO_MALLOPT=1 is set. Memory: the process keeps
    its peak heap (ENVIRONMENT.md measured 9.5 GiB instead of 5.2 for the cifar preset).
    """
    if os.environ.get("SG2KD_NO_MALLOPT", "") not in ("", "0"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = [f"{name}={value}" for name, param, value in _MALLOPT_SETTINGS if mallopt(param, value) == 1]
    return f"glibc {version} malloc tuned for CPU training: {', '.join(applied)}" if applied else None


def configure_backends(cudnn_benchmark, allow_tf32):
    from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    conv2d_gradfix.enabled = True  # R1 and path length need double backward through convs
    grid_sample_gradfix.enabled = True


# ----------------------------------------------------------------------------
# Random number generators.


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state(device):
    """All generator states of this process as plain data (loads with torch.load(weights_only=True))."""
    key, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": key, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "cuda": None,
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["key"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss_next"]))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------
# Data.


class SkipSampler(torch.utils.data.Sampler):
    """Yields `sampler`'s indices after dropping the first `skip` (resume at a data position)."""

    def __init__(self, sampler, skip=0):
        super().__init__()
        self.sampler = sampler
        self.skip = int(skip)

    def __iter__(self):
        iterator = iter(self.sampler)
        for _ in range(self.skip):
            next(iterator)
        yield from iterator


def make_data_iterator(training_set, data_loader_kwargs, rank, num_gpus, batch_per_rank, seed, skip, device):
    """Infinite iterator of (img uint8 [B, C, H, W], c float32 [B, c_dim]) batches for this rank.

    skip: indices this rank already consumed (exact resume). The sampler is deterministic and the
    dataset has no randomness, so the order does not depend on the number of loader workers.
    """
    kwargs = dict(data_loader_kwargs or {})
    if device.type != "cuda":
        kwargs.pop("pin_memory", None)  # pinning needs an accelerator
    if not kwargs.get("num_workers"):
        kwargs.pop("prefetch_factor", None)  # only valid with worker processes
        kwargs.pop("persistent_workers", None)
    sampler = misc.InfiniteSampler(dataset=training_set, rank=rank, num_replicas=num_gpus, seed=seed)
    loader = torch.utils.data.DataLoader(dataset=training_set, sampler=SkipSampler(sampler, skip),
                                         batch_size=batch_per_rank, **kwargs)
    return iter(loader)


# ----------------------------------------------------------------------------
# Schedules.


def lazy_reg_opt_kwargs(opt_kwargs, reg_interval):
    """Optimizer kwargs for lazy regularisation every `reg_interval` steps.

    With r = interval / (interval + 1): lr -> lr * r and every beta -> beta ** r, which keeps the
    per-image effect of the optimizer as without lazy regularisation.
    """
    kwargs = dnnlib.EasyDict(copy.deepcopy(dict(opt_kwargs)))
    ratio = reg_interval / (reg_interval + 1)
    if "lr" in kwargs:
        kwargs.lr = kwargs.lr * ratio
    if "betas" in kwargs:
        kwargs.betas = [beta**ratio for beta in kwargs.betas]
    return kwargs


def ema_beta(batch_size, cur_nimg, ema_kimg, ema_rampup):
    """G EMA decay per step: 0.5 ** (batch / ema_nimg), ema_nimg = min(ema_kimg * 1000, cur_nimg * rampup)."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def ada_adjust(p, signs_mean, target, batch_size, interval, ada_kimg):
    """ADA: p + sign(E[sign(D(real))] - target) * batch * interval / (ada_kimg * 1000), clamped to [0, 1]."""
    step = np.sign(signs_mean - target) * (batch_size * interval) / (ada_kimg * 1000)
    return float(min(max(p + step, 0.0), 1.0))


# ----------------------------------------------------------------------------
# Gradients.


def sync_and_clean_grads(params, num_gpus):
    """Average gradients over ranks, count and replace non-finite elements; returns the count (int64 []).

    params: the phase's parameters; those without a gradient are skipped (every rank runs the same
    code, so every rank skips the same ones and the all-reduce buffers line up). Non-finite values
    become 0 (NaN), 1e5 (+inf) or -1e5 (-inf), as StyleGAN2-ADA does before each optimizer step.
    """
    params = [param for param in params if param.grad is not None and param.numel() > 0]
    if not params:
        return torch.zeros([], dtype=torch.int64)
    if num_gpus > 1:
        flat = torch.cat([param.grad.flatten() for param in params])
        torch.distributed.all_reduce(flat)
        flat /= num_gpus
        for param, grad in zip(params, flat.split([param.numel() for param in params])):
            param.grad.copy_(grad.reshape(param.shape))
    grads = [param.grad for param in params]
    count = torch.stack([(~torch.isfinite(grad)).sum() for grad in grads]).sum()
    for grad in grads:
        misc.nan_to_num(grad, nan=0, posinf=1e5, neginf=-1e5, out=grad)
    return count


def broadcast_module(module):
    """Copy rank 0's parameters and buffers of `module` to every rank (no-op without a process group)."""
    if module is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for tensor in misc.params_and_buffers(module):
        torch.distributed.broadcast(tensor.data, src=0)
