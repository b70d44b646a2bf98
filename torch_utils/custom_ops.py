"""Build and load C++/CUDA extensions with ninja (`torch.utils.cpp_extension.load`), cached on disk.

`get_plugin()` copies the sources into `<cache root>/<module_name>-<hash>/` and builds there. The
hash covers the contents of every source and header, the PyTorch, Python and CUDA versions and the
build options, so an edited source builds into a fresh directory and an unchanged one is reused by
later processes without recompiling. The cache root is $TORCH_EXTENSIONS_DIR if set, else
`dnnlib.make_cache_dir_path('torch_extensions')`. Several processes (ranks) may build the same
plugin at once: an OS file lock on the build directory serialises them, so one compiles and the
others load its result.

`try_get_plugin()` is what ops call: on failure it warns once per module name (pointing at a log
file holding the full compiler output) and returns None so the op falls back to its pure-PyTorch
path. Setting SG2KD_DISABLE_CUSTOM_OPS=1 makes it return None without building anything.

Messages go to the `logging` logger 'torch_utils.custom_ops', whose chattiness is set by the module
attribute `verbosity`:
  'none'  - nothing (failures still warn from try_get_plugin);
  'brief' - one line when a plugin starts compiling and one when it is ready (not on cache hits);
  'full'  - as brief, plus ninja's and the compiler's output streamed to stdout. In this mode the
            compiler output is not captured, so build_error.log holds only the exception.
INFO records are visible by default: if the application configured no logging handler at all, a
stderr handler is added to this logger on first use.
"""

import contextlib
import glob
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings

import torch

import dnnlib

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent builds there rely on torch's own lock only.
    fcntl = None

verbosity = "brief"  # 'none' | 'brief' | 'full' (see module docstring)

DISABLE_ENV = "SG2KD_DISABLE_CUSTOM_OPS"
# A100 and H100/H200, plus PTX so newer GPUs can JIT the kernels. Only used when no GPU is visible
# to pick the arch from; TORCH_CUDA_ARCH_LIST in the environment always wins.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"
ERROR_LOG_NAME = "build_error.log"
_LOCK_NAME = ".sg2kd-build.lock"  # not 'lock': torch holds its own FileLock on <build dir>/lock
_RESERVED_KWARGS = ("name", "sources", "build_directory")

logger = logging.getLogger(__name__)

_plugins = {}  # build dir -> loaded module (one load per process)
_failed = {}  # module name -> log path: try_get_plugin warns once and never retries a failed build
_disabled_noted = False


class PluginBuildError(RuntimeError):
    """A plugin failed to build or load; `log_path` holds the compiler output and traceback."""

    def __init__(self, message, log_path):
        super().__init__(message)
        self.log_path = log_path


def _info(message, *args):
    if verbosity == "none":
        return
    if not logger.hasHandlers():
        logger.addHandler(logging.StreamHandler(sys.stderr))
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)  # the root's default WARNING would hide these otherwise
    logger.info(message, *args)


def _is_cuda_toolkit(path):
    """A real toolkit has nvcc and the runtime headers (a wrapper-script dir has only the former)."""
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and \
        os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home():
    """Directory of a usable CUDA toolkit, or None.

    Tries $CUDA_HOME, $CUDA_PATH, the directory of `nvcc` on PATH with symlinks resolved,
    /usr/local/cuda and /usr/local/cuda-* (newest first). Torch's own guess takes the parent of
    `nvcc` literally, which is wrong when `nvcc` is a wrapper script (e.g. /usr/local/bin/nvcc).
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    return next((path for path in candidates if _is_cuda_toolkit(path)), None)


def nvidia_include_dirs():
    """Include dirs of the nvidia-* wheels torch depends on (cusparse.h, cublas_v2.h, ...).

    A toolkit installed without the math libraries lacks those headers, which ATen's CUDA headers
    include. nvidia/cu13/include comes first when present.
    """
    roots = []
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        roots += list(spec.submodule_search_locations)
    dirs = []
    for root in roots:
        found = sorted(glob.glob(os.path.join(root, "*", "include")))
        found.sort(key=lambda d: os.path.basename(os.path.dirname(d)) != "cu13")
        dirs += [d for d in found if os.path.isdir(d) and d not in dirs]
    return dirs


def setup_cuda_build_env(default_arch_list=DEFAULT_CUDA_ARCH_LIST):
    """Make a CUDA build work on this machine; return the extra include dirs it needs.

    Sets CUDA_HOME to a real toolkit (see `find_cuda_home`) in os.environ and, since
    torch.utils.cpp_extension reads it once at import, in that module too if it is loaded. Sets
    TORCH_CUDA_ARCH_LIST to `default_arch_list` when it is unset and no GPU is visible (torch
    would otherwise fail to query the arch). Raises if no CUDA toolkit is found.
    """
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise RuntimeError("no CUDA toolkit found (need bin/nvcc and include/cuda_runtime.h); "
                           "install one matching torch.version.cuda or set CUDA_HOME to it")
    os.environ["CUDA_HOME"] = cuda_home
    cpp_extension = sys.modules.get("torch.utils.cpp_extension")
    if cpp_extension is not None:
        cpp_extension.CUDA_HOME = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list
    return nvidia_include_dirs()


def _cpp_extension():
    """Import torch.utils.cpp_extension without its 'No CUDA runtime is found' import-time warning.

    That warning is noise on a CPU-only machine building a C++ op.
    """
    if "torch.utils.cpp_extension" in sys.modules:
        return sys.modules["torch.utils.cpp_extension"]
    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    old_level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        torch_logger.setLevel(old_level)
    return cpp_extension


def cache_root():
    """Parent of all build dirs: $TORCH_EXTENSIONS_DIR if set, else the dnnlib cache."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or dnnlib.make_cache_dir_path("torch_extensions")


def _read_files(sources, headers, source_dir):
    """Return [(basename, bytes)] for sources then headers; raise on missing or clashing names."""
    paths = [os.path.join(source_dir, p) if source_dir else p for p in [*sources, *(headers or [])]]
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"custom op sources {paths} share a file name; they are copied into one "
                         "directory, so rename them")
    contents = []
    for path, name in zip(paths, names):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"custom op source {path!r} not found; check `sources`, `headers` "
                                    "and `source_dir`")
        with open(path, "rb") as f:
            contents.append((name, f.read()))
    return contents


def _build_key(module_name, contents, build_kwargs, with_cuda):
    """Hex digest of everything that changes the compiled result."""
    h = hashlib.sha256()
    env = [module_name, torch.__version__, str(torch.version.git_version), str(torch.version.cuda),
           sys.implementation.cache_tag, platform.machine(), os.environ.get("CXX", ""),
           repr(sorted(build_kwargs.items()))]
    if with_cuda:
        env += [os.environ.get("CUDA_HOME", ""), os.environ.get("TORCH_CUDA_ARCH_LIST", "")]
    for item in env:
        h.update(item.encode() + b"\0")
    for name, data in contents:
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:24]


def _prepare(module_name, sources, headers, source_dir, build_kwargs):
    """Validate arguments; return (file contents, source names, final build kwargs, build dir)."""
    if verbosity not in ("none", "brief", "full"):
        raise ValueError(f"custom_ops.verbosity={verbosity!r}; set it to 'none', 'brief' or 'full'")
    if not isinstance(module_name, str) or not module_name.isidentifier():
        raise ValueError(f"custom op module_name {module_name!r} must be a Python identifier, e.g. 'bias_act_plugin'")
    if isinstance(sources, str):
        sources = [sources]
    bad = [k for k in _RESERVED_KWARGS if k in build_kwargs]
    if bad:
        raise ValueError(f"custom op build kwargs {bad} are set by get_plugin; remove them")
    contents = _read_files(sources, headers, source_dir)
    source_names = [name for name, _ in contents[:len(sources)]]
    kwargs = dict(build_kwargs)
    kwargs.pop("verbose", None)  # output only: must not change the cache key (see `verbosity`)
    with_cuda = kwargs.get("with_cuda")
    if with_cuda is None:
        with_cuda = any(name.endswith((".cu", ".cuh")) for name in source_names)
    if with_cuda:
        extra = list(kwargs.get("extra_include_paths") or [])
        kwargs["extra_include_paths"] = extra + [d for d in setup_cuda_build_env() if d not in extra]
    key = _build_key(module_name, contents, kwargs, with_cuda)
    return contents, source_names, kwargs, os.path.join(cache_root(), f"{module_name}-{key}")


def get_build_dir(module_name, sources, headers=None, source_dir=None, **build_kwargs):
    """The directory `get_plugin` would build these sources in (nothing is built).

    For CUDA sources this applies `setup_cuda_build_env()` first, as the key depends on it.
    """
    return _prepare(module_name, sources, headers, source_dir, build_kwargs)[3]


@contextlib.contextmanager
def _file_lock(path):
    """Exclusive advisory lock on `path`; the kernel drops it if the holder dies."""
    with open(path, "a+") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _place_file(path, data):
    """Write `data` to `path` atomically, leaving an identical file untouched (ninja uses mtimes)."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_error_log(path, module_name, build_dir, err):
    """Write the traceback (which carries the compiler output) to `path`; return the path written."""
    lines = [f"custom op: {module_name}", f"build dir: {build_dir}", f"torch: {torch.__version__} "
             f"(CUDA {torch.version.cuda})", f"CUDA_HOME: {os.environ.get('CUDA_HOME', '')}",
             f"TORCH_CUDA_ARCH_LIST: {os.environ.get('TORCH_CUDA_ARCH_LIST', '')}", ""]
    if verbosity == "full":
        lines.append("(verbosity='full': the compiler output went to stdout, not into this file)")
    # The message first: for a failed build it carries the whole compiler output.
    text = "\n".join(lines) + f"\n{type(err).__name__}: {err}\n\n" + "".join(traceback.format_exception(err))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    except OSError:
        # An unwritable cache must not hide the real error: fall back to a temp file.
        fd, path = tempfile.mkstemp(prefix=f"{module_name}-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return path


def _build_and_load(module_name, contents, source_names, kwargs, build_dir):
    """Copy the sources into build_dir and build + import them, holding the build-dir lock."""
    cpp_extension = _cpp_extension()
    os.makedirs(build_dir, exist_ok=True)
    with _file_lock(os.path.join(build_dir, _LOCK_NAME)):
        for name, data in contents:
            _place_file(os.path.join(build_dir, name), data)
        compiling = not glob.glob(os.path.join(build_dir, "*" + cpp_extension.LIB_EXT))
        if compiling:
            _info("Setting up custom op %s (compiling into %s)...", module_name, build_dir)
        start = time.time()
        module = cpp_extension.load(name=module_name, sources=[os.path.join(build_dir, n) for n in source_names],
                                    build_directory=build_dir, verbose=verbosity == "full", **kwargs)
        if compiling:
            _info("Custom op %s ready (%.1f s).", module_name, time.time() - start)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(build_dir, ERROR_LOG_NAME))  # stale report of an earlier failure
    return module


def get_plugin(module_name, sources, headers=None, source_dir=None, **build_kwargs):
    """Build (or reuse from the disk cache) and import a C++/CUDA extension; return the module.

    module_name: Python identifier of the extension (PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)).
    sources: .cpp/.cu files, relative to `source_dir` when given. headers: extra files the sources
    include, copied next to them and part of the cache key. build_kwargs: passed on to
    `torch.utils.cpp_extension.load` (extra_cflags, extra_cuda_cflags, extra_include_paths, ...).
    CUDA sources (.cu) get `setup_cuda_build_env()`. The module is imported once per process.
    Raises PluginBuildError (with `log_path`) when the build or import fails.
    """
    contents, source_names, kwargs, build_dir = _prepare(module_name, sources, headers, source_dir, build_kwargs)
    module = _plugins.get(build_dir)
    if module is not None:
        return module
    try:
        module = _build_and_load(module_name, contents, source_names, kwargs, build_dir)
    except Exception as err:
        log_path = _write_error_log(os.path.join(build_dir, ERROR_LOG_NAME), module_name, build_dir, err)
        raise PluginBuildError(f"building custom op {module_name!r} failed; the compiler output is in {log_path}. "
                               f"Fix the source or toolchain, or set {DISABLE_ENV}=1 to use the pure-PyTorch path",
                               log_path) from err
    _plugins[build_dir] = module
    return module


def cpu_identity():
    """Short hash of this CPU's model and instruction-set flags, or None where they are unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "vendor_id"))]
    except OSError:
        return None
    if not lines:
        return None
    return hashlib.sha256("".join(sorted(set(lines))).encode()).hexdigest()[:16]


def native_cpu_cflags():
    """Compiler flags for CPU kernels tuned to this machine: -O3, OpenMP, and -march=native on x86-64.

    -fopenmp makes at::parallel_for (OpenMP in these torch builds) run in parallel on the libgomp
    torch has already loaded. -march=native roughly doubles the vector width here; the CPU's
    identity goes into a define so it is part of the build-cache key, and a shared cache never
    hands the binary to a CPU with other instruction sets.
    """
    flags = ["-O3", "-fopenmp"]
    cpu_id = cpu_identity() if platform.machine().lower() in ("x86_64", "amd64") else None
    if cpu_id is not None:
        flags += ["-march=native", f"-DSG2KD_BUILD_CPU_ID={cpu_id}"]
    return flags


def build_plugin(module_name, sources, headers=None, source_dir=None, **build_kwargs):
    """Build a plugin and return the path of its shared library (for CI compile checks).

    Same arguments as `get_plugin`. The library is also imported, which works without a GPU:
    only calling a CUDA kernel needs one.
    """
    return get_plugin(module_name, sources, headers, source_dir, **build_kwargs).__file__


def custom_ops_disabled():
    """True when $SG2KD_DISABLE_CUSTOM_OPS asks for the pure-PyTorch paths everywhere."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def try_get_plugin(module_name, sources, headers=None, source_dir=None, **build_kwargs):
    """`get_plugin`, but return None instead of raising, so the caller can use its PyTorch path.

    The first failure of a module warns once (naming the log with the compiler output); that
    module is then not retried in this process. Returns None without building when
    $SG2KD_DISABLE_CUSTOM_OPS is set (noted once at INFO level).
    """
    global _disabled_noted
    if custom_ops_disabled():
        if not _disabled_noted:
            _info("Custom ops disabled by %s; using the pure-PyTorch implementations.", DISABLE_ENV)
            _disabled_noted = True
        return None
    if module_name in _failed:
        return None
    try:
        return get_plugin(module_name, sources, headers, source_dir, **build_kwargs)
    except Exception as err:
        log_path = getattr(err, "log_path", None)
        if log_path is None:  # failed before a build dir existed (missing file, bad argument)
            log_path = _write_error_log(os.path.join(cache_root(), f"{module_name}-{ERROR_LOG_NAME}"),
                                        module_name, None, err)
        _failed[module_name] = log_path  # also makes this the only warning for the module
        warnings.warn(f"Custom op {module_name!r} could not be built ({type(err).__name__}); using the slower "
                      f"pure-PyTorch path. Full error log: {log_path}", RuntimeWarning, stacklevel=2)
        return None
