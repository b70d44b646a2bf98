"""torch_utils.training_stats: report / Collector, single process and across 2 gloo processes."""

import json
import math
import os

import numpy as np
import pytest
import torch

from tests.multiprocess import run_workers
from torch_utils import training_stats


@pytest.fixture(autouse=True)
def _single_process_state(monkeypatch):
    """Undo init_multiprocessing() calls and start every test with no pending reports."""
    monkeypatch.setattr(training_stats, "_rank", None)
    monkeypatch.setattr(training_stats, "_sync_device", training_stats._AUTO)
    monkeypatch.setattr(training_stats, "_pending", {})


def _moments(values):
    values = np.asarray(values, dtype=np.float64)
    return len(values), values.mean(), values.std()


def _assert_stat(collector, name, values):
    num, mean, std = _moments(values)
    assert collector.num(name) == num
    assert collector.mean(name) == pytest.approx(mean, rel=1e-12)
    assert collector[name] == pytest.approx(mean, rel=1e-12)
    assert collector.std(name) == pytest.approx(std, rel=1e-9, abs=1e-12)


def test_mixed_inputs_match_numpy():
    collector = training_stats.Collector()
    training_stats.report("a", 3)
    training_stats.report("a", 0.25)
    training_stats.report("a", np.float32(-1.5))
    training_stats.report("a", np.array([[1.0, 2.0], [7.0, 11.0]]))
    training_stats.report("a", torch.tensor([[0.5, -2.0, 4.0]], dtype=torch.float16))
    training_stats.report("a", torch.tensor(True))
    collector.update()
    _assert_stat(collector, "a", [3, 0.25, -1.5, 1, 2, 7, 11, 0.5, -2, 4, 1])


def test_report_returns_its_argument_and_keeps_the_graph():
    x = torch.ones(3, requires_grad=True)
    loss = (x * 2).sum()
    assert training_stats.report("loss", loss) is loss
    arr = np.zeros(2)
    assert training_stats.report0("arr", arr) is arr
    loss.backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))


def test_intervals_keep_previous_and_independent_collectors():
    keep = training_stats.Collector(keep_previous=True)
    drop = training_stats.Collector(keep_previous=False)
    training_stats.report("x", [1.0, 2.0])
    keep.update()
    drop.update()
    training_stats.report("x", [10.0, 20.0, 30.0])
    keep.update()  # `drop` is not updated: it must still see both intervals
    _assert_stat(keep, "x", [10, 20, 30])
    keep.update()
    _assert_stat(keep, "x", [10, 20, 30])  # no new samples: previous values kept
    drop.update()
    _assert_stat(drop, "x", [10, 20, 30])
    drop.update()
    assert drop.num("x") == 0 and math.isnan(drop.mean("x")) and math.isnan(drop.std("x"))
    assert drop.names() == ["x"]


def test_regex_filters_names_and_as_dict():
    collector = training_stats.Collector(regex="Loss/.*")
    training_stats.report("Loss/G/loss", torch.tensor([1.0, 3.0]))
    training_stats.report("Timing/total_sec", 5.0)
    training_stats.report("Loss/D/loss", 2.0)
    training_stats.report("xLoss/y", 2.0)  # regex must match the whole name
    collector.update()
    assert collector.names() == ["Loss/D/loss", "Loss/G/loss"]
    stats = collector.as_dict()
    assert list(stats) == ["Loss/D/loss", "Loss/G/loss"]
    assert stats["Loss/G/loss"] == {"num": 2, "mean": 2.0, "std": 1.0}
    assert stats["Loss/G/loss"].mean == 2.0 and stats["Loss/D/loss"].std == 0.0
    assert collector.num("Timing/total_sec") == 0


def test_reports_before_collector_creation_are_ignored():
    training_stats.report("early", 100.0)
    collector = training_stats.Collector()
    training_stats.report("early", 1.0)
    collector.update()
    _assert_stat(collector, "early", [1.0])


def test_report0_only_counts_rank0():
    collector = training_stats.Collector()
    training_stats.report0("r0", 4.0)
    collector.update()
    _assert_stat(collector, "r0", [4.0])
    training_stats.init_multiprocessing(rank=1, sync_device=None)
    training_stats.report0("r1", 4.0)
    collector.update()
    assert "r1" in collector.names()  # name registered, but no samples
    assert collector.num("r1") == 0 and math.isnan(collector.mean("r1"))


def test_empty_values_register_the_name():
    collector = training_stats.Collector()
    training_stats.report("empty", torch.zeros(0, 3))
    training_stats.report("empty", [])
    collector.update()
    assert collector.as_dict()["empty"].num == 0
    assert math.isnan(collector.as_dict()["empty"].mean)


def test_nan_and_inf_poison_only_their_interval():
    collector = training_stats.Collector(keep_previous=False)
    training_stats.report("v", torch.tensor([1.0, float("nan"), 3.0]))
    training_stats.report("w", [1.0, float("inf")])
    collector.update()
    assert collector.num("v") == 3  # non-finite elements are counted, not dropped
    assert math.isnan(collector.mean("v")) and math.isnan(collector.std("v"))
    assert collector.mean("w") == math.inf and math.isnan(collector.std("w"))
    training_stats.report("v", [2.0, 4.0])
    training_stats.report("w", float("-inf"))
    collector.update()
    _assert_stat(collector, "v", [2.0, 4.0])
    assert collector.mean("w") == -math.inf


def test_std_is_population_std_and_constant_values_give_zero():
    collector = training_stats.Collector()
    training_stats.report("c", torch.full((1000,), 0.1, dtype=torch.float64))
    training_stats.report("single", 7.0)
    collector.update()
    assert collector.std("c") == 0.0  # rounding must not yield nan from a negative variance
    assert collector.std("single") == 0.0
    assert collector.mean("c") == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize("value", ["abc", object(), torch.tensor([1j])])
def test_bad_values_raise(value):
    with pytest.raises(TypeError, match="report"):
        training_stats.report("bad", value)


def test_name_must_be_str():
    with pytest.raises(TypeError, match="name"):
        training_stats.report(3, 1.0)


# --------------------------------------------------------------------------- two processes

RANK_VALUES = {0: [1.0, 2.0, 3.0], 1: [[4.0, 5.0], [6.0, 7.0]]}


def _stats_worker(rank, store_path, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    training_stats.init_multiprocessing(rank=rank, sync_device=torch.device("cpu"))
    collector = training_stats.Collector()
    if rank == 1:
        training_stats.report("only1", torch.tensor([10.0, 20.0]))  # before 'common': order differs per rank
    training_stats.report("common", torch.tensor(RANK_VALUES[rank]))
    training_stats.report0("zero", 5.0 + rank)
    collector.update()
    first = collector.as_dict()
    if rank == 0:
        training_stats.report("late", 9.0)  # a name that appears on one rank in a later interval
    collector.update()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"first": first, "second": collector.as_dict(), "names": collector.names()}, f)
    torch.distributed.destroy_process_group()


def test_two_processes_see_the_global_moments(tmp_path):
    run_workers(_stats_worker, 2, (str(tmp_path / "store"), str(tmp_path)))
    expect_common = _moments(np.concatenate([np.ravel(v) for v in RANK_VALUES.values()]))
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as f:
            result = json.load(f)
        assert result["names"] == ["common", "late", "only1", "zero"]
        first, second = result["first"], result["second"]
        assert (first["common"]["num"], first["common"]["mean"]) == (7, pytest.approx(expect_common[1]))
        assert first["common"]["std"] == pytest.approx(expect_common[2])
        assert first["only1"] == {"num": 2, "mean": 15.0, "std": 5.0}
        assert first["zero"] == {"num": 1, "mean": 5.0, "std": 0.0}
        assert second["late"] == {"num": 1, "mean": 9.0, "std": 0.0}
        assert second["common"] == first["common"]  # keep_previous across ranks
