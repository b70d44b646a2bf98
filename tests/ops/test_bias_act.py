"""torch_utils.ops.bias_act: the C++ kernel path against the pure-PyTorch reference and hand-written
formulas (forward, first and second order), fallbacks, the CUDA compile, and build-cache reuse.

The CPU plugin is built once per session into a temp cache (module fixture, ~12 s here); the CUDA
plugin is compiled once by its own test (~20 s), which also runs it when a GPU is present.
"""

import math
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from torch_utils import custom_ops
from tests.ops.conftest import load_cpu_plugin, use_cpu_plugin
from torch_utils.ops import bias_act

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ACTS = list(bias_act.activation_funcs)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


@pytest.fixture(scope="module")
def ext_dir(torch_extensions_dir):
    return torch_extensions_dir


@pytest.fixture(scope="module")
def cpu_plugin(ext_dir):
    """The CPU plugin, built once for this module into its own cache directory."""
    return load_cpu_plugin(bias_act, bias_act._init, ext_dir)


@pytest.fixture(autouse=True)
def _kernel_state(ext_dir, cpu_plugin, monkeypatch):
    """Every test starts with the CPU plugin loaded and custom ops enabled; changes are undone."""
    use_cpu_plugin(bias_act, cpu_plugin, ext_dir, monkeypatch)


def _pre_clamp(act, xb, alpha, gain):
    """act(xb) * gain in float64 by the reference table (only used to keep inputs off kinks)."""
    return bias_act.activation_funcs[act].func(xb.double(), alpha=alpha) * gain


def make_inputs(shape, dim=1, dtype=torch.float32, act="lrelu", alpha=0.2, gain=1.0, clamp=None, seed=0,
                margin=0.02):
    """Random x [shape] and b [shape[dim]] with x + b and |act(x + b) * gain| at least `margin` away
    from the kinks (0) and the clamp threshold, so that finite differences and ulp-level differences
    between the two paths cannot flip a branch."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    b = torch.randn([shape[dim]], generator=gen, dtype=torch.float64)
    b_view = b.reshape([-1 if i == dim else 1 for i in range(len(shape))])
    for _ in range(50):
        xb = x + b_view
        bad = xb.abs() < margin
        if clamp is not None:
            bad |= (_pre_clamp(act, xb, alpha, gain).abs() - clamp).abs() < margin
        if not bad.any():
            return x.to(dtype), b.to(dtype)
        x = torch.where(bad, torch.randn(shape, generator=gen, dtype=torch.float64) * 2, x)
    raise AssertionError("could not draw inputs away from the kinks")


def forward_and_grads(x, b, create_graph=True, **kwargs):
    """y, first-order grads of sum(w * y^2) (so dy depends on x), and the grads of the squared
    first-order grads (second order) w.r.t. x and b; None b is allowed."""
    x = x.detach().requires_grad_(True)  # detach, not clone: keeps x's exact strides
    inputs = [x] if b is None else [x, b.detach().requires_grad_(True)]
    y = bias_act.bias_act(x, *inputs[1:], **kwargs)
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    first = torch.autograd.grad((w * y * y).sum(), inputs, create_graph=create_graph)
    penalty = sum((g * g).sum() for g in first)
    second = [None] * len(inputs)
    if penalty.requires_grad:  # False only where nothing depends on x (all clamped)
        second = torch.autograd.grad(penalty, inputs, allow_unused=True)
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, inputs)]
    return y, list(first), second


def assert_paths_match(x, b, **kwargs):
    """The kernel path (impl='cuda' on CPU tensors) equals the reference in value, grad, grad-grad."""
    y_ref, first_ref, second_ref = forward_and_grads(x, b, impl="ref", **kwargs)
    y, first, second = forward_and_grads(x, b, impl="cuda", **kwargs)
    tol = 1e-5 if x.dtype == torch.float32 else 1e-12
    named = [("y", y, y_ref), *zip(["dx", "db"], first, first_ref), *zip(["ddx", "ddb"], second, second_ref)]
    for name, got, want in named:
        scale = max(want.abs().max().item(), 1.0) if want.numel() else 1.0
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, msg=lambda m: f"{name} ({kwargs}): {m}")
    return y


def _is_kernel_output(y):
    return type(y.grad_fn).__name__ == "_BiasActBackward"


# ----------------------------------------------------------------------------
# The table and the reference path.


def test_activation_table_matches_the_official_interface():
    expected = {  # name: (def_alpha, def_gain, has_2nd_grad)
        "linear": (0, 1, False), "relu": (0, math.sqrt(2), False), "lrelu": (0.2, math.sqrt(2), False),
        "tanh": (0, 1, True), "sigmoid": (0, 1, True), "elu": (0, 1, True), "selu": (0, 1, True),
        "softplus": (0, 1, True), "swish": (0, math.sqrt(2), True),
    }
    assert set(bias_act.activation_funcs) == set(expected)
    for name, (alpha, gain, second) in expected.items():
        spec = bias_act.activation_funcs[name]
        assert (spec.def_alpha, spec.has_2nd_grad) == (alpha, second) and spec.def_gain == pytest.approx(gain)
        assert callable(spec.func) and spec.ref in ("x", "y")


HAND_FORMULAS = {  # act(x) written out from the definitions, float64
    "linear": lambda x: x,
    "relu": lambda x: torch.where(x > 0, x, 0),
    "lrelu": lambda x: torch.where(x >= 0, x, 0.2 * x),
    "tanh": lambda x: (torch.exp(2 * x) - 1) / (torch.exp(2 * x) + 1),
    "sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
    "elu": lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
    "selu": lambda x: SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * (torch.exp(x) - 1)),
    "softplus": lambda x: torch.log(1 + torch.exp(x)),
    "swish": lambda x: x / (1 + torch.exp(-x)),
}


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("impl", ["ref", "cuda"])
def test_both_paths_equal_hand_formulas(act, impl):
    """y = clamp(act(x + b) * default gain), for both implementations, against the formulas above."""
    x, b = make_inputs([2, 3, 4, 5], act=act, dtype=torch.float64)
    gain = bias_act.activation_funcs[act].def_gain
    want = (HAND_FORMULAS[act](x + b.reshape(1, -1, 1, 1)) * gain).clamp(-1.5, 1.5)
    torch.testing.assert_close(bias_act.bias_act(x, b, act=act, clamp=1.5, impl=impl), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bias_act.bias_act(x, act=act, impl=impl), HAND_FORMULAS[act](x) * gain,
                               rtol=1e-12, atol=1e-12)


def test_lrelu_reference_formula_with_alpha_gain_clamp_and_dim():
    x, b = make_inputs([3, 4, 7], dim=2, dtype=torch.float64)
    xb = x + b
    want = (torch.where(xb >= 0, xb, 0.3 * xb) * 0.7).clamp(-0.9, 0.9)
    got = bias_act.bias_act(x, b, dim=2, act="lrelu", alpha=0.3, gain=0.7, clamp=0.9, impl="ref")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------
# The CPU kernel against the reference: values, gradients, second-order gradients.

# (shape, dim, with b, alpha, gain, clamp, layout, dtype)
CASES = [
    ([3, 5, 4, 6], 1, True, None, None, None, "contiguous", torch.float32),
    ([3, 5, 4, 6], 1, True, None, None, 0.5, "channels_last", torch.float64),  # clamp hits often
    ([2, 3, 7, 5], 2, True, 0.3, 0.7, 1.0, "permuted", torch.float32),
    ([5, 7], 1, False, None, 2.5, None, "contiguous", torch.float64),
    ([4, 6, 3], -1, True, -0.1, -1.5, 0.8, "strided", torch.float32),  # gain < 0: act' from x, not y
    ([9], 0, True, None, None, 0.3, "contiguous", torch.float64),
    ([6, 11], 1, True, None, None, 1.0, "contiguous", torch.float32),  # fully connected: channels innermost
]


def _layout(t, layout):
    """t with the given memory layout: 'contiguous', 'channels_last', 'permuted' (dense, reversed
    dim order) or 'strided' (every other element of a wider tensor: not dense)."""
    if layout == "channels_last":
        return t.to(memory_format=torch.channels_last)
    if layout == "permuted":
        dims = list(range(t.ndim))[::-1]
        return t.permute(dims).contiguous().permute(dims)
    if layout == "strided":
        return torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)[..., 0]
    return t


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_cpu_kernel_matches_reference(act, case):
    shape, dim, with_b, alpha, gain, clamp, layout, dtype = CASES[case]
    eff_gain = bias_act.activation_funcs[act].def_gain if gain is None else gain
    eff_alpha = bias_act.activation_funcs[act].def_alpha if alpha is None else alpha
    x, b = make_inputs(shape, dim=dim % len(shape), dtype=dtype, act=act, alpha=eff_alpha, gain=eff_gain,
                       clamp=clamp, seed=case)
    x = _layout(x, layout)
    assert layout != "strided" or x.stride(-1) == 2  # really not dense
    y = assert_paths_match(x, b if with_b else None, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    if layout in ("channels_last", "permuted"):
        assert y.stride() == x.stride()  # the output follows a dense input's layout
    if clamp is not None and case == 1:
        assert (y.abs() == clamp).any() and (y.abs() < clamp).any()  # the clamp really bit


def test_kernel_path_is_taken_on_cpu():
    x = torch.randn(2, 3, 4, requires_grad=True)
    assert _is_kernel_output(bias_act.bias_act(x, torch.zeros(3), act="lrelu"))
    assert not _is_kernel_output(bias_act.bias_act(x, torch.zeros(3), act="lrelu", impl="ref"))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_multithreaded_chunks_split_runs(layout):
    """Larger than several thread chunks, with odd sizes so chunk borders fall inside channel runs."""
    x, b = make_inputs([3, 37, 19, 23], act="lrelu", gain=math.sqrt(2), clamp=2.0)
    x = _layout(x, layout)
    for act in ("lrelu", "swish"):
        assert_paths_match(x, b, act=act, clamp=2.0)


def test_bias_gradient_does_not_depend_on_thread_count():
    """db is summed inside the backward kernel pass (per channel run, then across runs in a fixed
    order), so it is bit-identical whatever the number of threads."""
    x, b = make_inputs([5, 37, 19, 23], act="lrelu", gain=math.sqrt(2), clamp=2.0)
    x, b = x.float().requires_grad_(True), b.float().requires_grad_(True)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            y = bias_act.bias_act(x, b, act="lrelu", clamp=2.0)
            grads.append(torch.autograd.grad(y.square().sum(), [x, b]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_clamp_ties_block_the_gradient_like_torch_clamp():
    """At |act(x + b) * gain| == clamp exactly both paths pass no gradient (torch.clamp's rule)."""
    x = torch.tensor([[-2.0, -1.0, 0.25, 0.5, 1.0, 2.0]], dtype=torch.float64).t()  # [6, 1]
    # (act, gain, index of an x with |act(x) * gain| exactly 1 = clamp, index of one inside the
    # bounds); gain < 0 and elu read the derivative off x rather than y.
    cases = [("linear", 1.0, 4, 3), ("relu", 2.0, 3, 2), ("lrelu", 2.0, 3, 1), ("lrelu", -1.0, 4, 1),
             ("elu", 1.0, 4, 2)]
    for act, gain, tie, inside in cases:
        grads = []
        for impl in ("ref", "cuda"):
            xi = x.clone().requires_grad_(True)
            bias_act.bias_act(xi, act=act, gain=gain, clamp=1.0, impl=impl).sum().backward()
            grads.append(xi.grad)
        torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
        assert grads[1][tie].item() == 0 and grads[1][inside].item() != 0, (act, gain)


# ----------------------------------------------------------------------------
# gradcheck / gradgradcheck through the kernel path (float64).


@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_and_gradgradcheck_kernel_path(act):
    gain = bias_act.activation_funcs[act].def_gain * 0.9
    x, b = make_inputs([2, 3, 4], act=act, gain=gain, clamp=1.2, dtype=torch.float64, seed=7, margin=0.01)
    x.requires_grad_(True)
    b.requires_grad_(True)

    def fn(x, b):
        return bias_act.bias_act(x, b, act=act, gain=gain, clamp=1.2)

    assert _is_kernel_output(fn(x, b))
    assert torch.autograd.gradcheck(fn, (x, b), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradgradcheck(fn, (x, b), eps=1e-6, atol=1e-8)


def test_third_order_raises_clearly_on_kernel_path():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(bias_act.bias_act(x, act="tanh").sum(), x, create_graph=True)
    (ddx,) = torch.autograd.grad(dx.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="third-order"):
        torch.autograd.grad(ddx.sum(), x)


# ----------------------------------------------------------------------------
# Fallbacks and argument errors.


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unsupported_cpu_dtype_uses_reference_silently(dtype):
    x = torch.randn(2, 3, 4).to(dtype)
    b = torch.randn(3).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = bias_act.bias_act(x, b, act="lrelu", clamp=1.0)
    want = (torch.nn.functional.leaky_relu(x + b.reshape(1, -1, 1), 0.2) * math.sqrt(2)).clamp(-1, 1)
    assert got.dtype == dtype and torch.equal(got, want)


def test_disabled_custom_ops_fall_back_to_reference(monkeypatch):
    monkeypatch.setenv(custom_ops.DISABLE_ENV, "1")
    monkeypatch.setattr(bias_act, "_plugins", {})
    x, b = make_inputs([2, 5, 3, 3], act="swish")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = bias_act.bias_act(x.requires_grad_(), b, act="swish", clamp=1.0)
    assert bias_act._plugins == {"cpu": None} and not _is_kernel_output(y)
    torch.testing.assert_close(y, bias_act.bias_act(x, b, act="swish", clamp=1.0, impl="ref"), rtol=0, atol=0)


def test_build_failure_warns_once_and_falls_back(monkeypatch):
    def broken_build(*args, **kwargs):
        raise custom_ops.PluginBuildError("simulated compiler error", log_path="/nonexistent/build_error.log")

    monkeypatch.setattr(custom_ops, "get_plugin", broken_build)
    monkeypatch.setattr(custom_ops, "_failed", {})
    monkeypatch.setattr(bias_act, "_plugins", {})
    x, b = make_inputs([2, 4, 3], act="lrelu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [bias_act.bias_act(x, b, act="lrelu", clamp=0.5) for _ in range(3)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "bias_act_cpu_plugin" in messages[0] and "build_error.log" in messages[0]
    want = bias_act.bias_act(x, b, act="lrelu", clamp=0.5, impl="ref")
    assert all(torch.equal(y, want) for y in results)


@pytest.mark.parametrize("kwargs, match", [
    (dict(act="gelu"), "unknown act='gelu'"),
    (dict(impl="triton"), "impl='triton'"),
    (dict(b=torch.zeros(4)), r"b has shape \[4\], expected \[3\]"),
    (dict(b=torch.zeros(3), dim=5), "dim=5 is out of range"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bias_act.bias_act(torch.zeros(2, 3, 4), **kwargs)


# ----------------------------------------------------------------------------
# Builds: the CUDA sources compile; the CPU build is reused by a fresh process.


def _run_on_cuda(module, monkeypatch):
    """With a GPU: the CUDA kernel equals the reference (values, grads, grad-grads) per dtype."""
    monkeypatch.setitem(bias_act._plugins, "cuda", module)
    for act, dtype in [("lrelu", torch.float32), ("swish", torch.float64), ("tanh", torch.float32)]:
        x, b = make_inputs([4, 6, 5, 7], act=act, clamp=1.0, gain=bias_act.activation_funcs[act].def_gain)
        x, b = _layout(x.to("cuda", dtype), "channels_last"), b.to("cuda", dtype)
        y_ref, first_ref, second_ref = forward_and_grads(x, b, impl="ref", act=act, clamp=1.0)
        y, first, second = forward_and_grads(x, b, impl="cuda", act=act, clamp=1.0)
        assert _is_kernel_output(bias_act.bias_act(x.requires_grad_(), b, act=act))
        for got, want in zip([y, *first, *second], [y_ref, *first_ref, *second_ref]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(want.abs().max().item(), 1))
    x = torch.randn(3, 8, 5, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(bias_act.bias_act(x, act="lrelu"), bias_act.bias_act(x, act="lrelu", impl="ref"),
                               rtol=2e-3, atol=2e-3)


def test_cuda_sources_compile(cuda_build_env, monkeypatch):
    name, sources, kwargs = bias_act.plugin_spec("cuda")
    so_path = custom_ops.build_plugin(name, sources, **kwargs)
    assert os.path.isfile(so_path)
    module = custom_ops.get_plugin(name, sources, **kwargs)  # the one build_plugin loaded
    assert module.with_cuda
    # The shared host code also serves CPU tensors in this build: same result as the CPU plugin.
    x, b = make_inputs([2, 5, 3, 4], act="selu")
    cpu_out = bias_act._plugins["cpu"].bias_act(x, b, None, 1, 6, 0, 0.0, 1.0, 0.7)
    assert torch.equal(module.bias_act(x, b, None, 1, 6, 0, 0.0, 1.0, 0.7), cpu_out)
    if torch.cuda.is_available():
        _run_on_cuda(module, monkeypatch)


CHILD = textwrap.dedent("""\
    import time, torch
    from torch_utils.ops import bias_act
    assert bias_act._plugins == {}, "nothing may be built or loaded at import time"
    start = time.perf_counter()
    plugin = bias_act._init("cpu")
    elapsed = time.perf_counter() - start
    y = bias_act.bias_act(torch.randn(2, 3, 4, requires_grad=True), torch.zeros(3), act="lrelu")
    print(plugin.__file__, elapsed, type(y.grad_fn).__name__)
""")


def test_build_cache_is_reused_by_a_fresh_process(ext_dir, cpu_plugin):
    so_path = cpu_plugin.__file__
    mtime = os.path.getmtime(so_path)
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=ext_dir, PYTHONPATH=REPO_ROOT)
    env.pop(custom_ops.DISABLE_ENV, None)
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    child_path, elapsed, grad_fn = result.stdout.split()
    assert child_path == so_path and os.path.getmtime(so_path) == mtime
    assert float(elapsed) < 3.0, f"loading the cached plugin took {elapsed} s: it was rebuilt"
    assert grad_fn == "_BiasActBackward"
