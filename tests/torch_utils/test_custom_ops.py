"""torch_utils.custom_ops: disk cache, reuse across processes, locking, failure fallback, CUDA set-up.

Each tiny extension is compiled at most once per session (a C++ build takes ~10 s here).
"""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from torch_utils import custom_ops

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ATen + the pybind glue instead of <torch/extension.h>: same API, about half the compile time.
CPP_TEMPLATE = """\
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>
static at::Tensor affine(const at::Tensor& x) {{ return x * {scale} + 1; }}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {{ m.def("affine", &affine); }}
"""

# The kernel file includes no torch headers, so nvcc is quick; cusparse.h is only found through the
# nvidia wheel include dir that setup_cuda_build_env() adds.
CUDA_KERNEL = """\
#include <cuda_runtime.h>
#include <cusparse.h>
__global__ void affine_kernel(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] * 2.0f + 1.0f;
}
void launch_affine(const float* x, float* y, int n) { affine_kernel<<<(n + 255) / 256, 256>>>(x, y, n); }
"""

CUDA_BINDING = """\
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>
void launch_affine(const float* x, float* y, int n);
static at::Tensor affine(const at::Tensor& x) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == at::kFloat && x.is_contiguous(), "affine: need a float CUDA tensor");
    auto y = at::empty_like(x);
    launch_affine(x.data_ptr<float>(), y.data_ptr<float>(), static_cast<int>(x.numel()));
    return y;
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("affine", &affine); }
"""

# A subprocess that builds/loads a plugin and prints the result, the .so path and the call time.
CHILD_SCRIPT = textwrap.dedent("""\
    import sys, time, torch
    from torch_utils import custom_ops
    start = time.time()
    m = custom_ops.get_plugin(sys.argv[1], ["op.cpp"], source_dir=sys.argv[2])
    elapsed = time.time() - start
    print(m.affine(torch.arange(3.0)).tolist(), m.__file__, elapsed)
""")


def _write_source(directory, scale, name="op.cpp"):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(CPP_TEMPLATE.format(scale=scale))
    return path


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("torch_extensions"))


@pytest.fixture(autouse=True)
def _use_cache_root(cache_root, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", cache_root)
    monkeypatch.delenv(custom_ops.DISABLE_ENV, raising=False)


@pytest.fixture(scope="module")
def built_op(cache_root, tmp_path_factory):
    """The x*2+1 op, built once: (module, source dir)."""
    source_dir = str(tmp_path_factory.mktemp("src"))
    _write_source(source_dir, scale=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_EXTENSIONS_DIR", cache_root)
        module = custom_ops.get_plugin("sg2kd_test_affine", ["op.cpp"], source_dir=source_dir)
    return module, source_dir


def _run_child(module_name, source_dir, cache_root):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=cache_root, PYTHONPATH=REPO_ROOT)
    return subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT, module_name, source_dir], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_build_and_call(built_op, cache_root):
    module, source_dir = built_op
    x = torch.linspace(-1, 1, 7)
    assert torch.equal(module.affine(x), x * 2 + 1)
    build_dir = os.path.dirname(module.__file__)
    assert os.path.dirname(build_dir) == cache_root
    assert os.path.basename(build_dir).startswith("sg2kd_test_affine-")
    assert build_dir == custom_ops.get_build_dir("sg2kd_test_affine", ["op.cpp"], source_dir=source_dir)
    assert os.path.isfile(os.path.join(build_dir, "op.cpp"))  # sources are copied into the build dir
    assert custom_ops.get_plugin("sg2kd_test_affine", ["op.cpp"], source_dir=source_dir) is module


def test_new_process_reuses_the_build(built_op, cache_root):
    module, source_dir = built_op
    mtime = os.stat(module.__file__).st_mtime_ns
    child = _run_child("sg2kd_test_affine", source_dir, cache_root)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    result, so_path, elapsed = out.split("] ")[0] + "]", *out.split("] ")[1].split()
    assert result == "[1.0, 3.0, 5.0]"
    assert so_path == module.__file__
    assert os.stat(module.__file__).st_mtime_ns == mtime  # not relinked
    assert float(elapsed) < 3.0, "a cached plugin must load without compiling"
    assert "Setting up custom op" not in err  # the brief message appears only when compiling


def test_cache_key_follows_contents_not_paths(tmp_path):
    first = _write_source(tmp_path / "a", scale=2)
    same = _write_source(tmp_path / "b", scale=2)
    changed = _write_source(tmp_path / "c", scale=3)  # a single byte differs
    dir_of = lambda path, **kw: custom_ops.get_build_dir("sg2kd_key", [path], **kw)  # noqa: E731
    assert dir_of(first) == dir_of(same)
    assert dir_of(changed) != dir_of(first)
    assert dir_of(first, extra_cflags=["-O3"]) != dir_of(first)
    assert dir_of(first, verbose=True) == dir_of(first)  # output settings do not change the build


def test_argument_errors_name_the_input(tmp_path):
    path = _write_source(tmp_path, scale=2)
    with pytest.raises(FileNotFoundError, match="missing.cpp"):
        custom_ops.get_plugin("sg2kd_err", ["missing.cpp"], source_dir=str(tmp_path))
    with pytest.raises(ValueError, match="build_directory"):
        custom_ops.get_plugin("sg2kd_err", [path], build_directory=str(tmp_path))
    with pytest.raises(ValueError, match="module_name"):
        custom_ops.get_plugin("not-an-identifier", [path])


def test_broken_source_raises_then_warns_once(tmp_path):
    source = tmp_path / "broken.cpp"
    source.write_text("#error deliberately broken source\n")
    with pytest.raises(custom_ops.PluginBuildError, match="sg2kd_broken") as info:
        custom_ops.get_plugin("sg2kd_broken", [str(source)])
    assert "deliberately broken source" in open(info.value.log_path).read()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert custom_ops.try_get_plugin("sg2kd_broken_try", [str(source)]) is None
        assert custom_ops.try_get_plugin("sg2kd_broken_try", [str(source)]) is None
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "sg2kd_broken_try" in message and "pure-PyTorch" in message
    log_path = message.rsplit("Full error log: ", 1)[1]
    assert os.path.basename(log_path) == custom_ops.ERROR_LOG_NAME
    assert "deliberately broken source" in open(log_path).read()


def test_disable_env_skips_the_build(tmp_path, cache_root, monkeypatch):
    monkeypatch.setenv(custom_ops.DISABLE_ENV, "1")
    source = _write_source(tmp_path, scale=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert custom_ops.try_get_plugin("sg2kd_disabled", [source]) is None
    assert caught == []
    assert not [d for d in os.listdir(cache_root) if d.startswith("sg2kd_disabled")]


def test_concurrent_builds_compile_once(tmp_path, cache_root):
    source_dir = str(tmp_path)
    _write_source(source_dir, scale=4)
    children = [_run_child("sg2kd_test_race", source_dir, cache_root) for _ in range(2)]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err
        assert out.startswith("[1.0, 5.0, 9.0]")
    assert sum(err.count("Setting up custom op sg2kd_test_race") for _, err in outputs) == 1
    build_dirs = [d for d in os.listdir(cache_root) if d.startswith("sg2kd_test_race-")]
    assert len(build_dirs) == 1
    with open(os.path.join(cache_root, build_dirs[0], ".ninja_log")) as f:
        # Ninja logs one "start end mtime output hash" line per command it ran.
        compiles = [line for line in f if line.split()[3:4] == ["op.o"]]
    assert len(compiles) == 1, compiles


def _fake_toolkit(root):
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "include"))
    open(os.path.join(root, "bin", "nvcc"), "w").close()
    open(os.path.join(root, "include", "cuda_runtime.h"), "w").close()
    return str(root)


@pytest.fixture
def cuda_env(monkeypatch):
    """Let the test change CUDA_HOME & co. and restore them (and cpp_extension.CUDA_HOME) afterwards."""
    from torch.utils import cpp_extension
    for name in ("CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.setenv(name, "")  # records the original value, so teardown restores it
        monkeypatch.delenv(name)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)
    return monkeypatch, cpp_extension


def test_cuda_env_helper(tmp_path, cuda_env):
    monkeypatch, cpp_extension = cuda_env
    fake = _fake_toolkit(tmp_path / "cuda")
    wrapper_dir = tmp_path / "wrapper"  # like /usr/local: bin/nvcc but no CUDA headers
    os.makedirs(wrapper_dir / "bin")
    open(wrapper_dir / "bin" / "nvcc", "w").close()
    monkeypatch.setenv("CUDA_HOME", str(wrapper_dir))
    monkeypatch.setenv("CUDA_PATH", fake)
    include_dirs = custom_ops.setup_cuda_build_env()
    assert os.environ["CUDA_HOME"] == fake and cpp_extension.CUDA_HOME == fake
    if torch.cuda.is_available():
        assert "TORCH_CUDA_ARCH_LIST" not in os.environ  # torch reads the arch from the GPU
    else:
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == custom_ops.DEFAULT_CUDA_ARCH_LIST
    assert all(os.path.isdir(d) for d in include_dirs)
    cu13 = [d for d in include_dirs if d.endswith(os.path.join("cu13", "include"))]
    if cu13:
        assert include_dirs[0] == cu13[0] and os.path.isfile(os.path.join(cu13[0], "cusparse.h"))

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5")  # the user's choice wins
    other = _fake_toolkit(tmp_path / "other")
    monkeypatch.setenv("CUDA_HOME", other)  # a valid CUDA_HOME is kept
    custom_ops.setup_cuda_build_env()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "7.5" and os.environ["CUDA_HOME"] == other


def test_cuda_extension_compiles(tmp_path, cuda_env):
    """Compile (and, with a GPU, run) a .cu kernel; without a GPU the built library must still import."""
    monkeypatch, _ = cuda_env
    if custom_ops.find_cuda_home() is None:
        pytest.skip("no CUDA toolkit (nvcc + cuda_runtime.h) found; install one to check CUDA sources compile")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    else:
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")  # one arch keeps nvcc quick
    (tmp_path / "kernel.cu").write_text(CUDA_KERNEL)
    (tmp_path / "binding.cpp").write_text(CUDA_BINDING)
    so_path = custom_ops.build_plugin("sg2kd_test_cuda", ["binding.cpp", "kernel.cu"], source_dir=str(tmp_path))
    assert os.path.isfile(so_path)
    module = custom_ops.get_plugin("sg2kd_test_cuda", ["binding.cpp", "kernel.cu"], source_dir=str(tmp_path))
    if torch.cuda.is_available():
        x = torch.arange(1000, dtype=torch.float32, device="cuda")
        assert torch.equal(module.affine(x), x * 2 + 1)
    else:
        with pytest.raises(RuntimeError, match="need a float CUDA tensor"):
            module.affine(torch.ones(3))
