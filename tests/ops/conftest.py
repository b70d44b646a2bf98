"""Fixtures shared by the tests of the compiled ops (bias_act, upfirdn2d)."""

import os

import pytest
import torch

from torch_utils import custom_ops


def load_cpu_plugin(op_module, load, ext_dir):
    """Build (or reuse from `ext_dir`) an op's CPU plugin with custom ops enabled; fail loudly if it cannot."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_EXTENSIONS_DIR", ext_dir)
        mp.delenv(custom_ops.DISABLE_ENV, raising=False)
        mp.setattr(op_module, "_plugins", {})
        plugin = load("cpu")
    assert plugin is not None, f"the {op_module.__name__} CPU plugin failed to build; the warning names the log"
    return plugin


def use_cpu_plugin(op_module, plugin, ext_dir, monkeypatch):
    """Start a test with `plugin` loaded and custom ops enabled; monkeypatch undoes it afterwards."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", ext_dir)
    monkeypatch.delenv(custom_ops.DISABLE_ENV, raising=False)
    monkeypatch.setattr(op_module, "_plugins", {"cpu": plugin})


@pytest.fixture
def cuda_build_env(monkeypatch):
    """Environment for compiling .cu sources: skips without a toolkit; one arch (9.0) without a GPU."""
    if custom_ops.find_cuda_home() is None:
        pytest.skip("no CUDA toolkit (nvcc + cuda_runtime.h) found; install one to check the .cu sources compile")
    cpp_extension = custom_ops._cpp_extension()
    for name in ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST"):  # setup_cuda_build_env edits these: restore them
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)
    if torch.cuda.is_available():
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "{}.{}".format(*torch.cuda.get_device_capability()))
    else:
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")  # one arch keeps nvcc quick
