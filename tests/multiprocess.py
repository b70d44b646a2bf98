"""Helpers for tests that spawn several cooperating processes."""

import contextlib
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_workers(fn, nprocs, args, timeout=90):
    """Spawn `nprocs` processes running fn(rank, *args); fail instead of hanging on a deadlock."""
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"worker processes did not finish within {timeout} s (deadlock?)")


@contextlib.contextmanager
def gloo_group(rank, port, world_size=2):
    """Join a gloo process group on 127.0.0.1:port for the block; leave it together (barrier first)."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world_size)
    try:
        yield
    finally:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
