"""Shared test set-up: keep the tests offline and out of the user's caches."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# Any accidental hub access must fail at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_dnnlib_cache(tmp_path_factory, monkeypatch):
    """Point dnnlib's cache at a per-session temp dir so tests never touch ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "dnnlib-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(cache))
    yield
