"""Training statistics: cheap `report()` calls anywhere, periodic `Collector.update()` on every rank.

`report(name, value)` may be called from any code (losses, plugins, the training loop) with a python
number, a numpy array or a tensor of any shape on any device. It only adds the element count, sum and
sum of squares to per-name accumulators that live on the value's device, so it never forces a
host-device synchronisation.

A `Collector` turns the reports made since its previous `update()` into num / mean / std. When
`torch.distributed` is initialised with more than one process, `update()` is a collective: every rank
must call it at the same point, and the moments are summed over all ranks in float64. Collectors
are independent: each sees every report made after it was created that matches its regex, whenever
the other collectors update.

Non-finite values are not filtered: every element counts, so an interval that saw a NaN reports a NaN
mean and std, and one that saw +-Inf (and no NaN) reports an infinite mean and a NaN std. This keeps a
diverging loss visible in the logs. Each interval starts afresh, so a NaN does not poison later ticks.
"""

import json
import re
import weakref

import numpy as np
import torch

import dnnlib

# Accumulation happens in float64 wherever the device supports it, so that long intervals with many
# elements do not lose the low bits of the sums (and the variance, computed from their difference).
_ACC_DTYPE = torch.float64

_AUTO = "auto"  # sentinel: decide the sync device from torch.distributed at update() time
_rank = None  # rank given to init_multiprocessing(); None = ask torch.distributed
_sync_device = _AUTO  # device for all_reduce; None = never sync across processes

# name -> _Pending with the reports made since the last drain into the live collectors.
_pending = {}
_collectors = weakref.WeakSet()


class _Pending:
    """Moments of one name since the last drain: exact host count, sums per device (tensors or floats)."""

    __slots__ = ("count", "host_sum", "host_sumsq", "device_sums")

    def __init__(self):
        self.count = 0
        self.host_sum = 0.0
        self.host_sumsq = 0.0
        self.device_sums = {}  # torch.device -> tensor [2] (sum, sum of squares)

    def add_host(self, count, total, total_sq):
        self.count += count
        self.host_sum += total
        self.host_sumsq += total_sq

    def add_device(self, count, sums):
        self.count += count
        prev = self.device_sums.get(sums.device)
        self.device_sums[sums.device] = sums if prev is None else prev + sums

    def merge(self, other):
        self.count += other.count
        self.host_sum += other.host_sum
        self.host_sumsq += other.host_sumsq
        for sums in other.device_sums.values():
            self.add_device(0, sums)


def init_multiprocessing(rank, sync_device):
    """Set this process's rank and the device used to all_reduce stats across processes.

    rank: index of this process (report0 uses it). sync_device: a `torch.device` on which
    `Collector.update()` runs its all_reduce (a CUDA device with NCCL, the CPU with gloo), or None to
    keep statistics local to this process. Without this call, both come from torch.distributed.
    """
    global _rank, _sync_device
    _rank = int(rank)
    _sync_device = None if sync_device is None else torch.device(sync_device)


def _current_rank():
    if _rank is not None:
        return _rank
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _resolve_sync_device():
    """Device for the cross-process all_reduce, or None when there is nothing to sync with."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    if _sync_device is not _AUTO:
        return _sync_device
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _pending_for(name):
    if not isinstance(name, str):
        raise TypeError(f"training_stats: name must be a str, got {type(name).__name__}; pass e.g. 'Loss/G/loss'")
    entry = _pending.get(name)
    if entry is None:
        entry = _pending[name] = _Pending()
    return entry


def _report_host(entry, value):
    """Fast path for python / numpy scalars: exact float64 arithmetic on the host, no tensor ops."""
    v = float(value)
    entry.add_host(1, v, v * v)


def _report_tensor(entry, value):
    elems = value.detach().reshape(-1)
    if elems.numel() == 0:
        return
    if elems.is_complex():
        raise TypeError("training_stats.report: complex values are not supported; report .real or .abs()")
    dtype = torch.float32 if elems.device.type == "mps" else _ACC_DTYPE  # MPS has no float64
    elems = elems.to(dtype)
    entry.add_device(elems.numel(), torch.stack([elems.sum(), elems.square().sum()]))


def report(name, value):
    """Add `value` (number, numpy array or tensor, any shape, any device) to the statistic `name`.

    Every element counts as one sample. Nothing is synchronised; the work is a couple of reductions
    on the value's device. An empty value only registers the name. Returns `value` unchanged, so it
    can wrap an expression: `loss = training_stats.report('Loss/G/loss', loss)`.
    """
    entry = _pending_for(name)
    if isinstance(value, torch.Tensor):
        _report_tensor(entry, value)
    elif isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        _report_host(entry, value)
    else:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"training_stats.report({name!r}): cannot read {type(value).__name__} as numbers; "
                            "pass a number, numpy array or tensor") from err
        _report_tensor(entry, torch.from_numpy(array))
    return value


def report0(name, value):
    """Like `report()`, but only rank 0 contributes; other ranks register `name` with no samples.

    Registering the name on every rank keeps the set of names identical across processes.
    """
    report(name, value if _current_rank() == 0 else [])
    return value


def _drain():
    """Move the global pending reports into every live collector whose regex matches the name."""
    global _pending
    if not _pending:
        return
    pending, _pending = _pending, {}
    collectors = list(_collectors)
    for name, entry in pending.items():
        for collector in collectors:
            if collector._regex.fullmatch(name):
                collector._take(name, entry)


class Collector:
    """Collects the statistics reported since the previous `update()` and exposes num / mean / std.

    regex: only names that fully match it are collected. keep_previous: a name that got no new
    samples in an interval keeps the values of the last interval that had some (otherwise it reads
    num=0, mean=nan, std=nan). Reports made before the collector was created are not included.
    """

    def __init__(self, regex=".*", keep_previous=True):
        _drain()  # reports made so far belong to the collectors that already exist
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._pending = {}  # name -> _Pending, private copy of reports since our last update
        self._names = set()  # names seen at update() by any rank
        self._moments = {}  # name -> (num, sum, sum of squares) of the last update
        _collectors.add(self)

    def _take(self, name, entry):
        mine = self._pending.get(name)
        if mine is None:
            mine = self._pending[name] = _Pending()
        mine.merge(entry)

    def names(self):
        """Sorted names known at the last `update()` (reported by any rank) that match the regex."""
        return sorted(self._names)

    def update(self):
        """Fold the reports since the previous update (of all ranks) into num / mean / std.

        A collective when torch.distributed runs more than one process: every rank must call it.
        Ranks may have reported different names; they first agree on the union, so the all_reduce
        lines up and every rank ends with the same names and values.
        """
        _drain()
        pending, self._pending = self._pending, {}
        sync_device = _resolve_sync_device()
        names = sorted(_union_names(set(pending) | self._names, sync_device))
        moments = _reduce_moments(names, pending, sync_device)
        for name, (num, total, total_sq) in zip(names, moments):
            if num > 0 or not self._keep_previous or name not in self._moments:
                self._moments[name] = (num, total, total_sq)
        self._names.update(names)

    def num(self, name):
        """Number of scalar samples of `name` in the last interval (0 if none)."""
        return int(self._moments.get(name, (0, 0.0, 0.0))[0])

    def mean(self, name):
        """Mean of `name` over the last interval; nan when num is 0."""
        num, total, _ = self._moments.get(name, (0, 0.0, 0.0))
        return float(total / num) if num > 0 else float("nan")

    def std(self, name):
        """Population std (divides by num) of `name`; 0 for a single sample, nan when num is 0."""
        num, total, total_sq = self._moments.get(name, (0, 0.0, 0.0))
        if num == 0:
            return float("nan")
        mean = total / num
        # max() clamps the tiny negative values that rounding leaves when all samples are equal.
        return float(np.sqrt(max(total_sq / num - mean * mean, 0.0))) if np.isfinite(mean) else float("nan")

    def as_dict(self):
        """EasyDict name -> EasyDict(num, mean, std) for every name in `names()`."""
        stats = dnnlib.EasyDict()
        for name in self.names():
            stats[name] = dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
        return stats

    def __getitem__(self, name):
        """Mean of `name` (same as `mean(name)`)."""
        return self.mean(name)


def _union_names(local_names, sync_device):
    """The union of every rank's names (local names alone when not distributed).

    The names travel as JSON bytes in uint8 tensors on `sync_device`, so the exchange runs on the
    same device (and backend) as the all_reduce that follows.
    """
    if sync_device is None:
        return local_names
    world_size = torch.distributed.get_world_size()
    payload = np.frombuffer(bytearray(json.dumps(sorted(local_names)).encode()), dtype=np.uint8)
    size = torch.tensor([len(payload)], dtype=torch.int64, device=sync_device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    torch.distributed.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=sync_device)
    padded[:len(payload)] = torch.from_numpy(payload).to(sync_device)
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, padded)
    union = set()
    for data, n in zip(gathered, sizes):
        union.update(json.loads(bytes(data[:n].cpu().numpy()).decode()))
    return union


def _local_moments(names, pending):
    """List of [num, sum, sum of squares] per name for this process, with one transfer per device."""
    rows = []
    by_device = {}  # device -> list of (row index, tensor [2])
    for index, name in enumerate(names):
        entry = pending.get(name)
        if entry is None:
            rows.append([0, 0.0, 0.0])
            continue
        rows.append([entry.count, entry.host_sum, entry.host_sumsq])
        for device, sums in entry.device_sums.items():
            by_device.setdefault(device, []).append((index, sums))
    for items in by_device.values():
        host = torch.stack([sums for _, sums in items]).to("cpu", torch.float64).tolist()
        for (index, _), (total, total_sq) in zip(items, host):
            rows[index][1] += total
            rows[index][2] += total_sq
    return rows


def _reduce_moments(names, pending, sync_device):
    """List of (num, sum, sum of squares) per name, summed over ranks when sync_device is set."""
    local = _local_moments(names, pending)
    if sync_device is None or not names:
        return local
    table = torch.tensor(local, dtype=torch.float64, device=sync_device)
    torch.distributed.all_reduce(table)
    return [(int(round(n)), s, sq) for n, s, sq in table.cpu().tolist()]
