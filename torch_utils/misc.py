"""Small tensor and module helpers.

The first group (`constant`, `assert_shape`, `symbolic_assert`, `profiled_function`,
`suppress_tracer_warnings`) is called by the source embedded in official network pickles, so the
names and signatures are fixed. The rest serves the training loop: samplers, parameter copying,
DDP helpers and a module summary table.
"""

import contextlib
import dataclasses
import functools
import re
import sys
import warnings

import numpy as np
import torch

# ----------------------------------------------------------------------------
# Cached constants.

_constant_cache = {}


def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """Cached constant tensor holding `value` (array-like), broadcast to `shape` if given.

    Returns the same tensor object for the same value bytes, value shape and dtype, `shape`,
    `dtype` (default: torch's default dtype), `device` (default CPU) and `memory_format` (default
    contiguous). Treat the result as read-only: it is shared by every caller with the same key.
    """
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    device = torch.device("cpu") if device is None else torch.device(device)
    if memory_format is None:
        memory_format = torch.contiguous_format
    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor, _ = torch.broadcast_tensors(tensor, torch.empty(shape, device=device))
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


def nan_to_num(input, nan=0.0, posinf=None, neginf=None, *, out=None):  # noqa: A002 -- torch's name
    """`torch.nan_to_num`: replace NaN and +-inf in `input` (any shape) by finite values."""
    return torch.nan_to_num(input, nan=nan, posinf=posinf, neginf=neginf, out=out)


# ----------------------------------------------------------------------------
# Shape assertions that also work while tracing.

# Records the check in traced graphs instead of evaluating it once at trace time.
symbolic_assert = torch._assert


class suppress_tracer_warnings(warnings.catch_warnings):  # noqa: N801 -- public name used by official pickles
    """Context manager that silences torch.jit.TracerWarning (shape checks are intentional)."""

    def __enter__(self):
        result = super().__enter__()
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        return result


def assert_shape(tensor, ref_shape):
    """Raise AssertionError unless `tensor.shape` matches `ref_shape`; None entries match any size.

    Sizes that are tensors (as under torch.jit.trace) are checked with `symbolic_assert`, so the
    check is recorded in the traced graph.
    """
    if tensor.ndim != len(ref_shape):
        raise AssertionError(_shape_message(tensor, ref_shape, None))
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(size, torch.Tensor) or isinstance(ref_size, torch.Tensor):
            # Comparing and formatting traced sizes converts tensors to Python values: intended here.
            with suppress_tracer_warnings():
                same = torch.equal(torch.as_tensor(size), torch.as_tensor(ref_size))
                symbolic_assert(same, _shape_message(tensor, ref_shape, idx))
        elif size != ref_size:
            raise AssertionError(_shape_message(tensor, ref_shape, idx))


def _shape_message(tensor, ref_shape, idx):
    """Failure message of assert_shape for dimension `idx` (None: wrong number of dimensions)."""
    with suppress_tracer_warnings():
        shape = [int(size) for size in tensor.shape]
        ref = [None if size is None else int(size) for size in ref_shape]
    if idx is None:
        return f"assert_shape: tensor has {len(shape)} dimensions {shape}, expected {len(ref)} {ref}"
    return f"assert_shape: dimension {idx} has size {shape[idx]}, expected {ref[idx]} (shape {shape}, expected {ref})"


def profiled_function(fn):
    """Decorator: run `fn` inside `torch.autograd.profiler.record_function(fn.__name__)`."""

    @functools.wraps(fn)
    def decorator(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)

    return decorator


# ----------------------------------------------------------------------------
# Sampling.


class InfiniteSampler(torch.utils.data.Sampler):
    """Yields dataset indices forever; rank `rank` gets global draws k with k % num_replicas == rank.

    With `shuffle`, the order starts as a seeded permutation; after each draw, the drawn slot is
    swapped with a random one of the `window_size * len(dataset)` slots up to and including it
    (never wrapping past the start of the pass). So every aligned block of `len(dataset)` global
    draws is a permutation of the dataset, while each pass's order is a reshuffle of the previous
    one (window_size=1 makes it a fresh uniform shuffle; 0 repeats the first order forever).
    Every rank must use the same seed so that the ranks' slices stay disjoint.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5):
        if len(dataset) <= 0:
            raise ValueError("InfiniteSampler: dataset is empty; pass a dataset with at least one item")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"InfiniteSampler: rank={rank}, num_replicas={num_replicas}; "
                             "need num_replicas >= 1 and 0 <= rank < num_replicas")
        if not 0 <= window_size <= 1:
            raise ValueError(f"InfiniteSampler: window_size={window_size}; pass a fraction in [0, 1]")
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size

    def __iter__(self):
        order = np.arange(len(self.dataset))
        rnd = np.random.RandomState(self.seed)
        window = 0
        if self.shuffle:
            rnd.shuffle(order)
            window = int(np.rint(order.size * self.window_size))
        draw = 0
        while True:
            slot = draw % order.size
            if draw % self.num_replicas == self.rank:
                yield int(order[slot])
            if window >= 2:
                # Swap only with slots already drawn in this pass (no wrap-around to the end of the
                # order), so every pass stays an exact permutation.
                other = slot - rnd.randint(min(window, slot + 1))
                order[slot], order[other] = order[other], order[slot]
            draw += 1


# ----------------------------------------------------------------------------
# Parameters and buffers.


def params_and_buffers(module):
    """List of `module`'s parameters followed by its buffers (recursively)."""
    _require_module(module, "params_and_buffers")
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module):
    """List of (qualified name, tensor) for `module`'s parameters followed by its buffers."""
    _require_module(module, "named_params_and_buffers")
    return list(module.named_parameters()) + list(module.named_buffers())


def _require_module(module, caller):
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{caller}: expected a torch.nn.Module, got {type(module).__name__}")


@dataclasses.dataclass
class CopyReport:
    """What `copy_params_and_buffers` did, by tensor name."""

    copied: list = dataclasses.field(default_factory=list)          # names copied from src to dst
    missing: list = dataclasses.field(default_factory=list)         # in dst, absent from src (left unchanged)
    unexpected: list = dataclasses.field(default_factory=list)      # in src, absent from dst (ignored)
    shape_mismatch: list = dataclasses.field(default_factory=list)  # (name, src shape, dst shape), skipped

    @property
    def ok(self):
        """True when every tensor matched by name and shape."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self):
        lines = [f"copied {len(self.copied)} tensor(s)"]
        if self.missing:
            lines.append(f"missing from source, left unchanged ({len(self.missing)}): {_name_list(self.missing)}")
        if self.unexpected:
            lines.append(f"not in destination, ignored ({len(self.unexpected)}): {_name_list(self.unexpected)}")
        if self.shape_mismatch:
            items = [f"{name} (src {list(s)} vs dst {list(d)})" for name, s, d in self.shape_mismatch]
            lines.append(f"shape mismatch, skipped ({len(items)}): {_name_list(items)}")
        return "\n".join(lines)


def _name_list(names, limit=20):
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"


def copy_params_and_buffers(src_module, dst_module, require_all=False, strict=False):
    """Copy parameters and buffers from `src_module` into `dst_module` by name; return a CopyReport.

    Tensors whose shapes differ are skipped and reported. `require_all=True` raises ValueError
    (before copying anything) if dst has names the source lacks; `strict=True` raises on any
    missing, unexpected or shape-mismatched name. Values are converted to dst's dtype and device.
    """
    _require_module(src_module, "copy_params_and_buffers")
    _require_module(dst_module, "copy_params_and_buffers")
    src_tensors = dict(named_params_and_buffers(src_module))
    dst_tensors = dict(named_params_and_buffers(dst_module))
    report = CopyReport(unexpected=[name for name in src_tensors if name not in dst_tensors])
    for name, dst in dst_tensors.items():
        if name not in src_tensors:
            report.missing.append(name)
        elif src_tensors[name].shape != dst.shape:
            report.shape_mismatch.append((name, tuple(src_tensors[name].shape), tuple(dst.shape)))
        else:
            report.copied.append(name)
    if require_all and report.missing:
        raise ValueError(f"copy_params_and_buffers: source lacks {len(report.missing)} tensor(s) of the destination: "
                         f"{_name_list(report.missing)}; pass require_all=False to keep their current values")
    if strict and not report.ok:
        raise ValueError(f"copy_params_and_buffers: modules differ (strict=True):\n{report}\n"
                         "pass strict=False to copy what matches")
    with torch.no_grad():
        for name in report.copied:
            dst_tensors[name].copy_(src_tensors[name].detach())
    return report


# ----------------------------------------------------------------------------
# Distributed helpers.


@contextlib.contextmanager
def ddp_sync(module, sync):
    """Context manager: skip DDP's gradient all-reduce inside it when `sync` is False.

    A no-op for modules that are not DistributedDataParallel, or when `sync` is True.
    """
    _require_module(module, "ddp_sync")
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def check_ddp_consistency(module, ignore_regex=None):
    """Assert that every parameter and buffer of `module` equals rank 0's copy (no-op without torch.distributed).

    Tensors are named `<ModuleClass>.<qualified name>`; names fully matching `ignore_regex` are
    skipped. NaNs compare equal to each other (both are mapped to 0 first).
    """
    _require_module(module, "check_ddp_consistency")
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    rank = torch.distributed.get_rank()
    for name, tensor in named_params_and_buffers(module):
        fullname = f"{type(module).__name__}.{name}"
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        if not torch.equal(tensor, other):
            raise AssertionError(f"check_ddp_consistency: {fullname} on rank {rank} differs from rank 0; "
                                 "broadcast the weights from rank 0 before training")


# ----------------------------------------------------------------------------
# Module summary.


def _flatten_tensors(obj):
    """Tensors found in `obj` (nested tuples, lists and dict values), in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _flatten_tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _flatten_tensors(item)]
    return []


def _record_calls(module, inputs, max_nesting):
    """Run `module(*inputs)` once; return (outputs, [(name, submodule, output tensors)] in completion order)."""
    calls = []
    handles = []
    for name, submodule in module.named_modules():
        depth = 0 if name == "" else name.count(".") + 1
        if depth > max_nesting:
            continue

        def hook(mod, _inputs, outputs, name=name or "<top-level>"):
            calls.append((name, mod, _flatten_tensors(outputs)))

        handles.append(submodule.register_forward_hook(hook))
    try:
        outputs = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, calls


def _summary_rows(calls, skip_redundant):
    """Table rows; each tensor (parameter, buffer, output) is counted at the first call that holds it."""
    seen = set()
    rows = []
    totals = [0, 0]
    for name, mod, outputs in calls:
        params = [t for t in mod.parameters() if id(t) not in seen]
        buffers = [t for t in mod.buffers() if id(t) not in seen]
        new_outputs = [t for t in outputs if id(t) not in seen]
        seen.update(id(t) for t in params + buffers + outputs)
        if skip_redundant and not (params or buffers or new_outputs):
            continue
        num_params = sum(t.numel() for t in params)
        num_buffers = sum(t.numel() for t in buffers)
        totals[0] += num_params
        totals[1] += num_buffers
        shown = new_outputs or outputs or [None]
        for idx, out in enumerate(shown):
            rows.append([
                name if idx == 0 else f"{name}:{idx}",
                (str(num_params) if num_params else "-") if idx == 0 else "",
                (str(num_buffers) if num_buffers else "-") if idx == 0 else "",
                str(list(out.shape)) if out is not None else "-",
                str(out.dtype).split(".")[-1] if out is not None else "-",
            ])
    return rows, totals


def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True, file=None):
    """Run `module(*inputs)` once and print a table of its submodules; return the module's outputs.

    Columns: submodule name, parameter count, buffer count, output shape, output dtype. Each
    parameter and buffer is counted once, in the first row (in call-completion order, so children
    come before their parent) whose module holds it; the Total row therefore sums the table.
    Submodules nested deeper than `max_nesting` levels fold into their ancestors. With
    `skip_redundant`, rows adding no new parameter, buffer or output tensor are left out.
    `file` defaults to stdout.
    """
    _require_module(module, "print_module_summary")
    if not isinstance(inputs, (tuple, list)):
        raise TypeError(f"print_module_summary: inputs must be a tuple or list of arguments, got "
                        f"{type(inputs).__name__}; wrap a single input as [x]")
    outputs, calls = _record_calls(module, inputs, max_nesting)
    rows, totals = _summary_rows(calls, skip_redundant)
    header = ["Module", "Parameters", "Buffers", "Output shape", "Datatype"]
    total = ["Total", str(totals[0]), str(totals[1]), "-", "-"]
    widths = [max(len(row[col]) for row in [header, total] + rows) for col in range(len(header))]
    rule = ["-" * width for width in widths]
    file = sys.stdout if file is None else file
    print(file=file)
    for row in [header, rule] + rows + [rule, total]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=file)
    print(file=file)
    return outputs
