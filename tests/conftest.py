"""Shared test set-up: keep the tests offline and out of the user's caches."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# Any accidental hub access must fail at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Compiled ops are cached across test sessions (keyed by a hash of their sources), so only the
# first run on a machine (e.g. a fresh CI checkout) pays the builds. Tests of the build machinery
# itself use their own empty cache directories.
TORCH_EXTENSIONS_DIR = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(REPO_ROOT, ".cache", "torch_extensions")
os.environ["TORCH_EXTENSIONS_DIR"] = TORCH_EXTENSIONS_DIR


@pytest.fixture(scope="session")
def torch_extensions_dir():
    """The extension build cache shared by every test session on this checkout."""
    os.makedirs(TORCH_EXTENSIONS_DIR, exist_ok=True)
    return TORCH_EXTENSIONS_DIR


@pytest.fixture(autouse=True)
def _isolated_dnnlib_cache(tmp_path_factory, monkeypatch):
    """Point dnnlib's cache at a per-session temp dir so tests never touch ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "dnnlib-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(cache))
    yield


@pytest.fixture
def pure_pytorch_ops(monkeypatch):
    """Pure-PyTorch op paths (no kernel builds) and one torch thread: fast, deterministic training tests."""
    import torch
    from torch_utils.ops import bias_act, upfirdn2d

    monkeypatch.setenv("SG2KD_DISABLE_CUSTOM_OPS", "1")
    monkeypatch.setattr(bias_act, "_plugins", {})
    monkeypatch.setattr(upfirdn2d, "_plugins", {})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core box can stall for seconds per op
    yield
    torch.set_num_threads(threads)
