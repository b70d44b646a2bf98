"""Metrics tests: one torch thread (a busy 2-core machine stalls multi-threaded BLAS) and jit warnings off."""

import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_quiet_jit():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield
    torch.set_num_threads(threads)
