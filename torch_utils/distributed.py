"""Process-group set-up for torchrun launches, with single-process defaults.

Launch with `torchrun --nproc_per_node=N train.py ...`: torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT, and `init()` joins the default process group through `env://`.
A plain `python train.py` sets none of them and runs as rank 0 of 1 without a process group.

A torchrun launch with a single process (WORLD_SIZE=1) also skips the process group: there is
nobody to talk to, and every helper here (and `training_stats`) already behaves correctly for one
process. All functions are safe to call before or without `init()`.
"""

import os

import torch

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _is_initialized():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; "
                         "unset it or let torchrun set it") from None


def _check_torchrun_env():
    """Raise when a multi-process launch lacks some of the variables env:// needs."""
    missing = [name for name in _TORCHRUN_VARS if not os.environ.get(name)]
    if missing:
        raise RuntimeError(f"WORLD_SIZE>1 but {', '.join(missing)} not set; launch with torchrun "
                           "or set all of RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT")


def init():
    """Join the default process group when launched by torchrun with WORLD_SIZE > 1.

    Uses NCCL when CUDA is available (after selecting the GPU LOCAL_RANK), gloo otherwise. Does
    nothing for a single process or when the group already exists, so calling it twice is harmless.
    """
    if _is_initialized() or _env_int("WORLD_SIZE", 1) <= 1:
        return
    _check_torchrun_env()
    if not torch.distributed.is_available():
        raise RuntimeError("WORLD_SIZE>1 but this PyTorch build has no torch.distributed; run a single process")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        # Before the group exists, so NCCL binds each rank to its own GPU rather than all to GPU 0.
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")


def get_rank():
    """Global rank of this process; 0 without a process group."""
    return torch.distributed.get_rank() if _is_initialized() else 0


def get_world_size():
    """Number of processes; 1 without a process group."""
    return torch.distributed.get_world_size() if _is_initialized() else 1


def get_local_rank():
    """Rank of this process on its node (LOCAL_RANK); 0 without a process group."""
    return _env_int("LOCAL_RANK", 0) if _is_initialized() else 0


def is_main():
    """True on rank 0, the process that prints and writes files."""
    return get_rank() == 0


def print0(*args, **kwargs):
    """`print()` on rank 0 only; other ranks stay silent. Flushes so tee'd logs stay ordered."""
    if is_main():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def barrier():
    """Wait until every process reaches this point; no-op for a single process."""
    if not _is_initialized() or get_world_size() <= 1:
        return
    if torch.distributed.get_backend() == "nccl":
        # Naming the device avoids NCCL guessing it (and warning) from the rank.
        torch.distributed.barrier(device_ids=[get_local_rank()])
    else:
        torch.distributed.barrier()


def device():
    """`cuda:LOCAL_RANK` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", get_local_rank())
    return torch.device("cpu")


def shutdown():
    """Wait for every rank, then destroy the default process group, if there is one.

    Without the barrier a rank that finishes early tears its connections down while a slower rank
    still talks to it, and gloo's background threads abort the process.
    """
    if _is_initialized():
        barrier()
        torch.distributed.destroy_process_group()
