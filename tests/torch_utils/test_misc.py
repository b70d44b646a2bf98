"""Tests for torch_utils.misc."""

import contextlib
import io
import itertools
import warnings

import numpy as np
import pytest
import torch

from torch_utils import misc

# ----------------------------------------------------------------------------
# constant


def test_constant_is_cached_per_key():
    a = misc.constant([1.0, 2.0, 3.0])
    assert misc.constant([1.0, 2.0, 3.0]) is a
    assert misc.constant(np.array([1.0, 2.0, 3.0])) is a  # same value bytes, shape and dtype
    assert a.dtype == torch.get_default_dtype() and a.device.type == "cpu"
    torch.testing.assert_close(a, torch.tensor([1.0, 2.0, 3.0]))
    others = [
        misc.constant([1.0, 2.0, 4.0]),
        misc.constant([1.0, 2.0, 3.0], dtype=torch.float64),
        misc.constant([1.0, 2.0, 3.0], shape=[2, 3]),
        misc.constant(np.array([1, 2, 3], dtype=np.int64)),  # same numbers, different source dtype
        misc.constant([[1.0, 2.0, 3.0]]),  # same bytes, different value shape
    ]
    assert len({id(t) for t in [a] + others}) == len(others) + 1


def test_constant_shape_dtype_and_memory_format():
    t = misc.constant(0.5, shape=[2, 3, 4, 5], dtype=torch.float16, memory_format=torch.channels_last)
    assert t.shape == (2, 3, 4, 5) and t.dtype == torch.float16
    assert t.is_contiguous(memory_format=torch.channels_last)
    assert torch.all(t == 0.5)
    assert misc.constant(0.5, shape=(2, 3, 4, 5), dtype=torch.float16, memory_format=torch.channels_last) is t
    assert misc.constant(0.5, shape=[2, 3, 4, 5], dtype=torch.float16) is not t


# ----------------------------------------------------------------------------
# assert_shape and friends


def test_assert_shape_passes_with_wildcards():
    x = torch.zeros(2, 3, 4)
    misc.assert_shape(x, [2, 3, 4])
    misc.assert_shape(x, [None, 3, None])
    misc.assert_shape(x, [None, None, None])


def test_assert_shape_failures_name_the_dimension():
    x = torch.zeros(2, 5, 4)
    with pytest.raises(AssertionError) as excinfo:
        misc.assert_shape(x, [None, 3, 4])
    message = str(excinfo.value)
    assert "dimension 1" in message and "size 5" in message and "expected 3" in message
    with pytest.raises(AssertionError, match="3 dimensions .* expected 2"):
        misc.assert_shape(x, [2, 5])


def test_assert_shape_accepts_tensor_sizes():
    x = torch.zeros(2, 3)
    misc.assert_shape(x, [torch.tensor(2), None])
    with pytest.raises(AssertionError, match="dimension 0"):
        misc.assert_shape(x, [torch.tensor(4), None])


def test_assert_shape_under_trace_is_silent():
    def fn(x):
        misc.assert_shape(x, [None, 3])
        return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # one from assert_shape would fail here
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace itself is deprecated
        traced = torch.jit.trace(fn, torch.zeros(2, 3))
    torch.testing.assert_close(traced(torch.ones(4, 3)), torch.full([4, 3], 2.0))


def test_suppress_tracer_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with misc.suppress_tracer_warnings():
            warnings.warn("ignored", torch.jit.TracerWarning)
        with pytest.raises(torch.jit.TracerWarning):
            warnings.warn("raised", torch.jit.TracerWarning)


def test_symbolic_assert():
    misc.symbolic_assert(True, "fine")
    with pytest.raises(AssertionError, match="boom"):
        misc.symbolic_assert(False, "boom")


def test_profiled_function_records_its_name():
    @misc.profiled_function
    def my_profiled_op(x, scale=1.0):
        """Doc."""
        return x * scale

    assert my_profiled_op.__name__ == "my_profiled_op" and my_profiled_op.__doc__ == "Doc."
    with torch.autograd.profiler.profile() as prof:
        out = my_profiled_op(torch.ones(2), scale=3.0)
    torch.testing.assert_close(out, torch.full([2], 3.0))
    assert "my_profiled_op" in {event.name for event in prof.function_events}


def test_nan_to_num():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.5])
    out = misc.nan_to_num(x, nan=0, posinf=1e5, neginf=-1e5)
    torch.testing.assert_close(out, torch.tensor([0.0, 1e5, -1e5, 1.5]))
    misc.nan_to_num(x, nan=0, posinf=1e5, neginf=-1e5, out=x)
    torch.testing.assert_close(x, out)


# ----------------------------------------------------------------------------
# InfiniteSampler


def _draws(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_sampler_every_pass_is_a_permutation():
    # Asserted: every aligned block of len(dataset) draws (one pass) contains each index exactly once.
    n = 10
    stream = _draws(misc.InfiniteSampler(range(n), seed=1), 5 * n)
    for start in range(0, len(stream), n):
        assert sorted(stream[start:start + n]) == list(range(n))
    assert stream[:n] != list(range(n))  # shuffled
    assert stream[:n] != stream[n:2 * n]  # the window reorders consecutive passes


def test_sampler_without_window_repeats_one_permutation():
    stream = _draws(misc.InfiniteSampler(range(8), seed=2, window_size=0), 24)
    assert sorted(stream[:8]) == list(range(8)) and stream[:8] != list(range(8))
    assert stream[:8] == stream[8:16] == stream[16:]


def test_sampler_ranks_are_disjoint_slices_of_one_stream():
    n, replicas, passes = 12, 3, 4
    single = _draws(misc.InfiniteSampler(range(n), seed=5), passes * n)
    per_rank = [_draws(misc.InfiniteSampler(range(n), rank=r, num_replicas=replicas, seed=5), passes * n // replicas)
                for r in range(replicas)]
    for r in range(replicas):
        assert per_rank[r] == single[r::replicas]  # rank r gets global draws k with k % replicas == r
    first_pass = [set(draws[:n // replicas]) for draws in per_rank]
    assert set.union(*first_pass) == set(range(n))
    assert sum(len(s) for s in first_pass) == n  # disjoint


def test_sampler_is_deterministic_by_seed():
    dataset = range(20)
    assert _draws(misc.InfiniteSampler(dataset, seed=3), 60) == _draws(misc.InfiniteSampler(dataset, seed=3), 60)
    assert _draws(misc.InfiniteSampler(dataset, seed=3), 60) != _draws(misc.InfiniteSampler(dataset, seed=4), 60)


def test_sampler_without_shuffle_is_sequential():
    assert _draws(misc.InfiniteSampler(range(4), shuffle=False), 10) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert _draws(misc.InfiniteSampler(range(4), rank=1, num_replicas=2, shuffle=False), 4) == [1, 3, 1, 3]


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=2, num_replicas=2), "rank=2"),
    (dict(window_size=1.5), "window_size"),
])
def test_sampler_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        misc.InfiniteSampler(range(4), **kwargs)
    with pytest.raises(ValueError, match="empty"):
        misc.InfiniteSampler([])


# ----------------------------------------------------------------------------
# copy_params_and_buffers


class _Pair(torch.nn.Module):
    def __init__(self, width, extra):
        super().__init__()
        self.shared = torch.nn.Linear(3, 2)
        self.head = torch.nn.Linear(2, width)
        self.register_buffer("count", torch.zeros([]))
        setattr(self, extra, torch.nn.Parameter(torch.zeros(4)))


def _modules_with_differences():
    torch.manual_seed(0)
    src = _Pair(width=5, extra="only_src")
    dst = _Pair(width=6, extra="only_dst")
    with torch.no_grad():
        for tensor in misc.params_and_buffers(src):
            tensor.uniform_(1, 2)
        for tensor in misc.params_and_buffers(dst):
            tensor.zero_()
    return src, dst


def test_copy_params_and_buffers_reports_and_copies():
    src, dst = _modules_with_differences()
    report = misc.copy_params_and_buffers(src, dst)
    assert sorted(report.copied) == ["count", "shared.bias", "shared.weight"]
    assert report.missing == ["only_dst"]
    assert report.unexpected == ["only_src"]
    assert report.shape_mismatch == [("head.weight", (5, 2), (6, 2)), ("head.bias", (5,), (6,))]
    assert not report.ok
    torch.testing.assert_close(dst.shared.weight, src.shared.weight)
    torch.testing.assert_close(dst.count, src.count)
    assert torch.all(dst.head.weight == 0) and torch.all(dst.only_dst == 0)
    assert dst.shared.weight.requires_grad and dst.shared.weight is not src.shared.weight
    text = str(report)
    assert "copied 3" in text and "only_dst" in text and "only_src" in text
    assert "head.weight (src [5, 2] vs dst [6, 2])" in text
    assert len(text.splitlines()) == 4


def test_copy_params_and_buffers_identical_modules_are_ok():
    torch.manual_seed(1)
    src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    report = misc.copy_params_and_buffers(src, dst, require_all=True, strict=True)
    assert report.ok and sorted(report.copied) == ["bias", "weight"]
    torch.testing.assert_close(dst.weight, src.weight)


def test_copy_params_and_buffers_require_all_and_strict_raise_before_copying():
    src, dst = _modules_with_differences()
    with pytest.raises(ValueError, match="only_dst") as excinfo:
        misc.copy_params_and_buffers(src, dst, require_all=True)
    assert "only_src" not in str(excinfo.value)
    with pytest.raises(ValueError, match="head.weight") as excinfo:
        misc.copy_params_and_buffers(src, dst, strict=True)
    assert "only_src" in str(excinfo.value) and "only_dst" in str(excinfo.value)
    assert torch.all(dst.shared.weight == 0)  # nothing was copied


def test_named_params_and_buffers():
    module = _Pair(width=2, extra="x")
    names = [name for name, _ in misc.named_params_and_buffers(module)]
    assert names == ["x", "shared.weight", "shared.bias", "head.weight", "head.bias", "count"]
    assert [t for t in misc.params_and_buffers(module)] == [t for _, t in misc.named_params_and_buffers(module)]
    with pytest.raises(TypeError, match="torch.nn.Module"):
        misc.params_and_buffers(object())


# ----------------------------------------------------------------------------
# DDP helpers


def test_ddp_helpers_without_distributed():
    module = torch.nn.Linear(2, 2)
    with misc.ddp_sync(module, sync=False):
        module(torch.ones(1, 2)).sum().backward()
    assert module.weight.grad is not None
    assert not torch.distributed.is_initialized()
    assert misc.check_ddp_consistency(module) is None


class _FakeDDP(torch.nn.parallel.DistributedDataParallel):
    """A DDP instance without a process group; records no_sync use."""

    def __init__(self):
        torch.nn.Module.__init__(self)
        self.no_sync_entered = 0

    @contextlib.contextmanager
    def no_sync(self):
        self.no_sync_entered += 1
        yield


def test_ddp_sync_uses_no_sync_only_when_not_syncing():
    ddp = _FakeDDP()
    with misc.ddp_sync(ddp, sync=True):
        pass
    assert ddp.no_sync_entered == 0
    with misc.ddp_sync(ddp, sync=False):
        assert ddp.no_sync_entered == 1


def test_check_ddp_consistency_names_the_differing_tensor(monkeypatch):
    module = torch.nn.Sequential(torch.nn.Linear(2, 3))
    module.register_buffer("w_avg", torch.zeros(4))

    def fake_broadcast(tensor, src):
        assert src == 0
        if tensor.shape == (4,):  # pretend rank 0 holds a different w_avg
            tensor.add_(1)

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "broadcast", fake_broadcast)
    with pytest.raises(AssertionError, match=r"Sequential\.w_avg on rank 1"):
        misc.check_ddp_consistency(module)
    misc.check_ddp_consistency(module, ignore_regex=r".*\.w_avg")
    with torch.no_grad():
        module[0].weight[0, 0] = float("nan")  # NaNs compare equal to themselves
    misc.check_ddp_consistency(module, ignore_regex=r".*\.w_avg")


# ----------------------------------------------------------------------------
# print_module_summary


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        self.scale = torch.nn.Parameter(torch.full([2], 2.0))
        self.register_buffer("offset", torch.ones(5))

    def forward(self, x):
        return self.body(x) * self.scale


def _table_rows(text):
    return {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}


def test_print_module_summary_rows_and_outputs():
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(7, 3)
    buffer = io.StringIO()
    out = misc.print_module_summary(net, [x], file=buffer)
    torch.testing.assert_close(out, net(x))
    rows = _table_rows(buffer.getvalue())
    # Parameters, buffers, output shape, dtype; the Sequential only forwards body.2's output, so it is redundant.
    assert rows["body.0"] == ["16", "-", "[7,", "4]", "float32"]
    assert rows["body.1"] == ["-", "-", "[7,", "4]", "float32"]
    assert rows["body.2"] == ["10", "-", "[7,", "2]", "float32"]
    assert rows["<top-level>"] == ["2", "5", "[7,", "2]", "float32"]
    assert "body" not in rows
    assert rows["Total"][:2] == ["28", "5"]


def test_print_module_summary_nesting_and_redundant_rows():
    net = _Net()
    buffer = io.StringIO()
    misc.print_module_summary(net, [torch.zeros(1, 3)], max_nesting=1, skip_redundant=False, file=buffer)
    rows = _table_rows(buffer.getvalue())
    # Children of body are deeper than max_nesting, so body's row counts their parameters.
    assert rows["body"][:2] == ["26", "-"]
    assert not any(name.startswith("body.") for name in rows)
    assert rows["Total"][:2] == ["28", "5"]
    with pytest.raises(TypeError, match="tuple or list"):
        misc.print_module_summary(net, torch.zeros(1, 3))
