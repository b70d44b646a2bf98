"""torch_utils.ops.upfirdn2d: the reference path against an independent numpy implementation, the
C++ kernel path against the reference (forward, first and second order), the wrappers' sizes,
setup_filter, fallbacks, the CUDA compile and build-cache reuse.

The CPU plugin is built once per session into a temp cache (module fixture); the CUDA plugin is
compiled once by its own test, which also runs it when a GPU is present.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from torch_utils import custom_ops
from tests.ops.conftest import load_cpu_plugin, use_cpu_plugin
from torch_utils.ops import upfirdn2d

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def naive_upfirdn2d(x, f, up, down, padding, flip_filter, gain):
    """Literal numpy version of the documented steps, float64. x [N, C, H, W]; f None, [fw] or [fh, fw]."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, padding
    n, c, h, w = x.shape
    upsampled = np.zeros([n, c, h * upy, w * upx])
    upsampled[:, :, ::upy, ::upx] = x  # each pixel followed by up - 1 zeros
    top, left = max(py0, 0), max(px0, 0)
    padded = np.zeros([n, c, h * upy + top + max(py1, 0), w * upx + left + max(px1, 0)])
    padded[:, :, top:top + h * upy, left:left + w * upx] = upsampled
    padded = padded[:, :, max(-py0, 0):padded.shape[2] - max(-py1, 0), max(-px0, 0):padded.shape[3] - max(-px1, 0)]
    if f is None:
        kernel = np.ones([1, 1]) * gain
    elif f.ndim == 1:
        kernel = np.outer(f, f) * gain  # horizontal then vertical pass == their outer product
    else:
        kernel = f * gain
    if not flip_filter:
        kernel = kernel[::-1, ::-1]  # convolution == correlation with the flipped kernel
    fh, fw = kernel.shape
    out_h, out_w = padded.shape[2] - fh + 1, padded.shape[3] - fw + 1
    out = np.zeros([n, c, out_h, out_w])
    for ty in range(fh):
        for tx in range(fw):
            out += kernel[ty, tx] * padded[:, :, ty:ty + out_h, tx:tx + out_w]
    return out[:, :, ::downy, ::downx]


def make_filter(kind):
    """Named test filters (float32, as the ops receive them)."""
    gen = torch.Generator().manual_seed(sum(map(ord, kind)))
    return {
        "none": lambda: None,
        "blur4": lambda: upfirdn2d.setup_filter([1, 3, 3, 1]),  # StyleGAN2's 4x4, rank 1
        "sep8": lambda: upfirdn2d.setup_filter([1, 2, 5, 9, 9, 5, 2, 1]),  # 1-D, separable by rule
        "sep3": lambda: upfirdn2d.setup_filter([1, 2, 1], separable=True),
        "tap1": lambda: torch.tensor([0.75]),
        "rand3x5": lambda: torch.randn([3, 5], generator=gen),  # full rank
        "rand4x2": lambda: torch.randn([4, 2], generator=gen),
        "rand1d5": lambda: torch.randn([5], generator=gen),
    }[kind]()


# (up, down, padding, filter, flip_filter, gain, (H, W))
CASES = [
    (1, 1, 0, "none", False, 1, (5, 7)),
    (1, 1, [1, -1, 2, 0], "none", True, 3.0, (5, 7)),
    (2, 1, [2, 1, 2, 1], "blur4", False, 4, (6, 5)),  # upsample2d
    (1, 2, 1, "blur4", False, 1, (8, 9)),  # downsample2d, odd width
    (1, 1, 2, "blur4", False, 4, (9, 9)),  # conv2d_resample's filter after a transposed conv
    (1, 1, [1, 2, 2, 1], "blur4", True, 1, (7, 6)),
    ([3, 2], [1, 2], [-1, 2, 3, -2], "rand1d5", True, 0.5, (7, 9)),
    ([1, 3], [4, 1], [2, 0, -1, 3], "rand3x5", False, 1.5, (6, 8)),
    (4, 4, [3, -2, 0, 1], "rand4x2", False, 1, (5, 6)),
    (2, 3, [-3, -1, 4, 2], "sep8", False, 2, (9, 7)),
    (3, [2, 3], [5, 4, 6, 3], "sep3", True, 1, (4, 5)),
    ([2, 4], 1, [0, 3, 1, 0], "rand3x5", True, 1, (3, 4)),
    (1, [3, 1], [-2, -2, -1, 0], "rand4x2", False, 1, (10, 9)),
    (2, 2, [4, 4, 4, 4], "tap1", False, 2, (3, 3)),
    (1, 4, [0, 0, 0, 0], "rand1d5", False, 1, (11, 13)),
    (4, [1, 2], [1, 1, -3, 2], "blur4", True, 9, (2, 3)),
    ([1, 2], [2, 1], [7, 1, 0, 6], "rand3x5", False, 1, (4, 4)),
    (3, 3, [-1, -2, -2, -1], "sep3", False, 1, (6, 7)),
]
CASE_IDS = [f"case{i}-{c[3]}" for i, c in enumerate(CASES)]


def run_case(case, impl, dtype=torch.float64, seed=0, memory_format=torch.contiguous_format):
    """(x, f, kwargs, y) for a case, x [2, 3, H, W] random."""
    up, down, padding, kind, flip, gain, (h, w) = case
    x = torch.randn([2, 3, h, w], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x.to(dtype).contiguous(memory_format=memory_format)
    f = make_filter(kind)
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    return x, f, kwargs, upfirdn2d.upfirdn2d(x, f, impl=impl, **kwargs)


@pytest.fixture(scope="module")
def ext_dir(torch_extensions_dir):
    return torch_extensions_dir


@pytest.fixture(scope="module")
def cpu_plugin(ext_dir):
    """The CPU plugin, built once for this module into its own cache directory."""
    return load_cpu_plugin(upfirdn2d, upfirdn2d._get_plugin, ext_dir)


@pytest.fixture(autouse=True)
def _kernel_state(ext_dir, cpu_plugin, monkeypatch):
    """Every test starts with the CPU plugin loaded and custom ops enabled; changes are undone."""
    use_cpu_plugin(upfirdn2d, cpu_plugin, ext_dir, monkeypatch)


# ---------------------------------------------------------------------------------------------
# Reference path against numpy.

@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_matches_naive_numpy(case):
    x, f, kwargs, y = run_case(case, "ref")
    up = upfirdn2d._parse_scaling(kwargs["up"])
    down = upfirdn2d._parse_scaling(kwargs["down"])
    padding = upfirdn2d._parse_padding(kwargs["padding"])
    f_np = None if f is None else f.double().numpy()
    want = naive_upfirdn2d(x.numpy(), f_np, up, down, padding, kwargs["flip_filter"], kwargs["gain"])
    assert y.shape == want.shape
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)


def test_output_size_formula_and_empty_output_error():
    x = torch.zeros([1, 1, 5, 7])
    f = torch.ones([3, 4])  # fh=3, fw=4
    y = upfirdn2d.upfirdn2d(x, f, up=[2, 3], down=[3, 2], padding=[1, 2, -1, 0], impl="ref")
    assert y.shape == (1, 1, (5 * 3 - 1 + 0 - 3) // 2 + 1, (7 * 2 + 1 + 2 - 4) // 3 + 1)
    with pytest.raises(ValueError, match="empty output"):
        upfirdn2d.upfirdn2d(x, f, padding=[0, 0, -2, -1])


# ---------------------------------------------------------------------------------------------
# Kernel path (impl='cuda' on CPU tensors) against the reference.

def values_and_grads(x, f, kwargs, impl):
    """y, dL/dx for L = sum(w * y^2) and the gradient of sum(v * (dL/dx)^2): orders 0, 1 and 2."""
    x = x.detach().requires_grad_(True)
    y = upfirdn2d.upfirdn2d(x, f, impl=impl, **kwargs)
    gen = torch.Generator().manual_seed(1)
    w = torch.rand(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
    (gx,) = torch.autograd.grad((w * y * y).sum(), x, create_graph=True)
    v = torch.rand(gx.shape, generator=gen, dtype=torch.float64).to(gx.dtype)
    (ggx,) = torch.autograd.grad((v * gx * gx).sum(), x)
    return y.detach(), gx.detach(), ggx


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_kernel_matches_reference(case, dtype):
    x, f, kwargs, _ = run_case(case, "ref", dtype=dtype)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for ref, got in zip(values_and_grads(x, f, kwargs, "ref"), values_and_grads(x, f, kwargs, "cuda")):
        assert got.dtype == dtype and got.shape == ref.shape
        torch.testing.assert_close(got, ref, **tol)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_kernel_matches_reference_large_planes(case):
    """The same cases on planes of over 1089 pixels, which take the kernel's row-by-row path
    (smaller planes are processed several at a time in a transposed layout)."""
    up, down, padding, kind, flip, gain, (h, w) = case
    case = (up, down, padding, kind, flip, gain, (h + 37, w + 41))
    x, f, kwargs, _ = run_case(case, "ref")
    for ref, got in zip(values_and_grads(x, f, kwargs, "ref"), values_and_grads(x, f, kwargs, "cuda")):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_kernel_matches_reference_many_planes(case, dtype):
    """Enough planes (and pixels) for the small-plane path's full 16-plane blocks and its 16 x 16
    transposes, plus a partial last block (37 planes)."""
    up, down, padding, kind, flip, gain, (h, w) = case
    x = torch.randn([1, 37, h + 3, w + 2], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x.to(dtype)
    f = make_filter(kind)
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for ref, got in zip(values_and_grads(x, f, kwargs, "ref"), values_and_grads(x, f, kwargs, "cuda")):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, **tol)


@pytest.mark.parametrize("case", [CASES[2], CASES[6], CASES[7]], ids=["blur4", "rand1d5", "rand3x5"])
def test_channels_last_and_strided_inputs(case):
    x, f, kwargs, want = run_case(case, "ref")
    x_cl = x.contiguous(memory_format=torch.channels_last)
    x_strided = torch.stack([x, -x], dim=4).flatten(3)[:, :, :, ::2]  # x's values, column stride 2
    for inp in (x_cl, x_strided):
        torch.testing.assert_close(upfirdn2d.upfirdn2d(inp, f, **kwargs), want, rtol=1e-12, atol=1e-12)
        for ref, got in zip(values_and_grads(x, f, kwargs, "ref"), values_and_grads(inp, f, kwargs, "cuda")):
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_kernel_path_is_taken_on_cpu(monkeypatch):
    x, f, kwargs, want = run_case(CASES[3], "ref")

    def no_reference(*args, **kw):
        raise AssertionError("reference path used")

    monkeypatch.setattr(upfirdn2d, "_upfirdn2d_ref", no_reference)
    x = x.requires_grad_(True)
    y = upfirdn2d.upfirdn2d(x, f, **kwargs)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    y.sum().backward()  # the backward is a kernel call too
    assert x.grad.shape == x.shape


def test_result_does_not_depend_on_thread_count():
    x = torch.randn([3, 7, 20, 18])
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = upfirdn2d.upsample2d(x, f)
        torch.set_num_threads(max(2, threads))
        many = upfirdn2d.upsample2d(x, f)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("case", [CASES[4], CASES[6], CASES[10]], ids=["blur4", "rand1d5", "sep3"])
def test_gradcheck_and_gradgradcheck_kernel_path(case):
    up, down, padding, kind, flip, gain, _ = case
    f = make_filter(kind)
    x = torch.randn([1, 2, 4, 5], dtype=torch.float64, requires_grad=True)

    def op(inp):
        return upfirdn2d.upfirdn2d(inp, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)

    assert op(x).grad_fn is not None and "Upfirdn2d" in type(op(x).grad_fn).__name__
    assert torch.autograd.gradcheck(op, [x])
    assert torch.autograd.gradgradcheck(op, [x])


def test_filter_gets_no_gradient_on_kernel_path():
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).requires_grad_(True)
    x = torch.randn([1, 1, 6, 6], requires_grad=True)
    upfirdn2d.filter2d(x, f).sum().backward()
    assert x.grad is not None and f.grad is None


def test_backward_padding_formula():
    # in=5, up=2, down=3, pad0=1, taps=4: out = (10 + 1 + 2 - 4) // 3 + 1 = 4.
    assert upfirdn2d._backward_padding(5, 4, 2, 3, 1, 4) == (2, (5 - 1) * 2 - 4 * 3 + 1 + 1)
    # The transposed op maps a [.., 4] gradient back to exactly 5 samples.
    assert upfirdn2d._out_size(4, 3, 2, -2, 4, 2) == 5


# ---------------------------------------------------------------------------------------------
# Wrappers and setup_filter.

@pytest.mark.parametrize("kind", ["none", "blur4", "sep8", "sep3", "rand4x2"])
@pytest.mark.parametrize("impl", ["ref", "cuda"])
def test_wrapper_output_sizes(kind, impl):
    f = make_filter(kind)
    x = torch.randn([2, 3, 9, 12])
    assert upfirdn2d.filter2d(x, f, impl=impl).shape == (2, 3, 9, 12)
    assert upfirdn2d.filter2d(x, f, padding=[1, 2, 0, -1], impl=impl).shape == (2, 3, 8, 15)
    assert upfirdn2d.upsample2d(x, f, impl=impl).shape == (2, 3, 18, 24)
    assert upfirdn2d.upsample2d(x, f, up=[3, 2], impl=impl).shape == (2, 3, 18, 36)
    assert upfirdn2d.downsample2d(x, f, impl=impl).shape == (2, 3, 4, 6)
    assert upfirdn2d.downsample2d(x, f, down=[4, 3], impl=impl).shape == (2, 3, 3, 3)


def test_wrappers_preserve_constants_and_center_the_filter():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.full([1, 2, 8, 8], 2.5, dtype=torch.float64)
    # Away from the zero-padded borders a normalised filter keeps a constant image constant.
    torch.testing.assert_close(upfirdn2d.upsample2d(x, f)[:, :, 2:-2, 2:-2], torch.full([1, 2, 12, 12], 2.5,
                               dtype=torch.float64))
    torch.testing.assert_close(upfirdn2d.downsample2d(x, f)[:, :, 1:-1, 1:-1], torch.full([1, 2, 2, 2], 2.5,
                               dtype=torch.float64))
    # filter2d with a one-hot odd filter is the identity ('same' alignment).
    impulse = torch.zeros([3, 3])
    impulse[1, 1] = 1
    x = torch.randn([1, 1, 5, 6])
    assert torch.equal(upfirdn2d.filter2d(x, impulse), x)


def test_setup_filter_rules():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32  # < 8 taps: 2-D outer product
    torch.testing.assert_close(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    assert upfirdn2d.setup_filter(list(range(1, 9))).shape == (8,)  # >= 8 taps: separable
    assert upfirdn2d.setup_filter([1, 2, 1], separable=True).shape == (3,)
    assert upfirdn2d.setup_filter(list(range(1, 9)), separable=False).shape == (8, 8)
    assert torch.equal(upfirdn2d.setup_filter(None), torch.ones([1, 1]))
    # A scalar is one tap; as a non-separable 1-D filter it becomes its outer product.
    assert torch.equal(upfirdn2d.setup_filter(2.0, normalize=False), torch.full([1, 1], 4.0))
    assert torch.equal(upfirdn2d.setup_filter([1, 3], normalize=False), torch.tensor([[1., 3], [3, 9]]))
    # The gain is folded in as gain ** (ndim / 2): the total gain is the same for 1-D and 2-D.
    assert upfirdn2d.setup_filter([1, 3, 3, 1], gain=4).sum().item() == pytest.approx(4)
    assert upfirdn2d.setup_filter([1, 2, 1], separable=True, gain=4).sum().item() == pytest.approx(2)
    flipped = upfirdn2d.setup_filter([[1, 2], [3, 4]], normalize=False, flip_filter=True)
    assert torch.equal(flipped, torch.tensor([[4., 3], [2, 1]]))
    taps = torch.tensor([1., 2, 1])
    upfirdn2d.setup_filter(taps)
    assert torch.equal(taps, torch.tensor([1., 2, 1])), "setup_filter must not modify its input"
    with pytest.raises(ValueError, match="separable"):
        upfirdn2d.setup_filter([[1, 2], [3, 4]], separable=True)


def test_argument_helpers():
    assert upfirdn2d._parse_scaling(2) == [2, 2]
    assert upfirdn2d._parse_scaling([1, 3]) == [1, 3]
    assert upfirdn2d._parse_padding(1) == [1, 1, 1, 1]
    assert upfirdn2d._parse_padding([1, -2]) == [1, 1, -2, -2]
    assert upfirdn2d._parse_padding([1, 2, 3, 4]) == [1, 2, 3, 4]
    assert upfirdn2d._get_filter_size(None) == (1, 1)
    assert upfirdn2d._get_filter_size(torch.zeros([3, 5])) == (5, 3)
    assert upfirdn2d._get_filter_size(torch.zeros([7])) == (7, 7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(up=0), "integers >= 1"),
    (dict(down=[1, 2, 3]), "scaling factor"),
    (dict(padding=[1, 2, 3]), "padding"),
    (dict(impl="triton"), "impl"),
    (dict(f=torch.ones([1, 2, 2])), "f must be"),
    (dict(x=torch.ones([2, 4, 4])), "x must be"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = dict(x=torch.ones([1, 1, 4, 4]), f=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        upfirdn2d.upfirdn2d(**args)


# ---------------------------------------------------------------------------------------------
# Fallbacks, CUDA compile and the build cache.

def test_disabled_custom_ops_fall_back_to_reference(monkeypatch):
    monkeypatch.setenv(custom_ops.DISABLE_ENV, "1")
    monkeypatch.setattr(upfirdn2d, "_plugins", {})  # a fresh lazy loader
    x, f, kwargs, want = run_case(CASES[7], "ref", dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for ref, got in zip(values_and_grads(x, f, kwargs, "ref"), values_and_grads(x, f, kwargs, "cuda")):
            assert torch.equal(got, ref)
    assert upfirdn2d._plugins == {}, "nothing may be loaded while custom ops are disabled"


def test_unsupported_cpu_dtype_uses_reference_silently():
    x = torch.randn([1, 2, 6, 6]).to(torch.bfloat16)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(upfirdn2d.upsample2d(x, f), upfirdn2d.upsample2d(x, f, impl="ref"))


def test_build_failure_warns_once_and_falls_back(monkeypatch, tmp_path):
    (tmp_path / "broken.cpp").write_text("#error this source is broken on purpose\n")
    monkeypatch.setattr(upfirdn2d, "_plugin_spec",
                        lambda device_type: ("upfirdn2d_broken_plugin", ["broken.cpp"], dict(source_dir=str(tmp_path))))
    monkeypatch.setattr(upfirdn2d, "_plugins", {})
    monkeypatch.setattr(custom_ops, "_failed", {})
    x, f, kwargs, _ = run_case(CASES[2], "ref")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [values_and_grads(x, f, kwargs, "cuda") for _ in range(2)]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "upfirdn2d_broken_plugin" in messages[0] and "log" in messages[0]
    for got in results:
        for ref, value in zip(values_and_grads(x, f, kwargs, "ref"), got):
            assert torch.equal(value, ref)


def _run_on_cuda(module):
    """On a GPU: the CUDA kernels against the reference for every case, float32/64 and float16."""
    for case in CASES:
        x, f, kwargs, _ = run_case(case, "ref")
        for dtype, tol in [(torch.float64, 1e-10), (torch.float32, 1e-4), (torch.float16, 2e-2)]:
            xc = x.to("cuda", dtype)
            want = upfirdn2d.upfirdn2d(xc.double(), f if f is None else f.cuda(), impl="ref", **kwargs)
            got = upfirdn2d.upfirdn2d(xc, f if f is None else f.cuda(), impl="cuda", **kwargs)
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    x = torch.randn([1, 2, 5, 6], dtype=torch.float64, device="cuda", requires_grad=True)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device="cuda")
    assert torch.autograd.gradgradcheck(lambda inp: upfirdn2d.upsample2d(inp, f), [x])


def test_cuda_sources_compile(cuda_build_env, monkeypatch):
    name, sources, kwargs = upfirdn2d._plugin_spec("cuda")
    so_path = custom_ops.build_plugin(name, sources, **kwargs)
    assert os.path.isfile(so_path)
    module = custom_ops.get_plugin(name, sources, **kwargs)
    assert callable(module.upfirdn2d)
    if torch.cuda.is_available():
        monkeypatch.setitem(upfirdn2d._plugins, "cuda", module)
        _run_on_cuda(module)


CHILD = textwrap.dedent("""\
    import time, torch
    from torch_utils.ops import upfirdn2d
    assert upfirdn2d._plugins == {}, "nothing may be built or loaded at import time"
    start = time.perf_counter()
    plugin = upfirdn2d._get_plugin("cpu")
    elapsed = time.perf_counter() - start
    y = upfirdn2d.upsample2d(torch.randn(1, 2, 4, 4), upfirdn2d.setup_filter([1, 3, 3, 1]))
    print(plugin.__file__, elapsed, list(y.shape))
""")


def test_build_cache_is_reused_by_a_fresh_process(ext_dir, cpu_plugin):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=ext_dir, PYTHONPATH=REPO_ROOT)
    env.pop(custom_ops.DISABLE_ENV, None)
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    so_path, elapsed, shape = result.stdout.split(maxsplit=2)
    assert so_path == cpu_plugin.__file__
    assert "compiling" not in result.stderr, "the fresh process recompiled instead of using the cache"
    assert float(elapsed) < 5.0
    assert shape.strip() == "[1, 2, 8, 8]"
