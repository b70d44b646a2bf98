"""torch_utils.distributed: single-process defaults and a 2-process torchrun-style (env://) launch."""

import contextlib
import io
import json
import os

import pytest
import torch

from tests.multiprocess import free_port, run_workers
from torch_utils import distributed, training_stats

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_defaults(no_torchrun_env, capsys):
    distributed.init()
    assert not torch.distributed.is_initialized()
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.get_local_rank()) == (0, 1, 0)
    assert distributed.is_main()
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert distributed.device() == expected
    distributed.barrier()
    distributed.print0("hello", 3, sep="-")
    assert capsys.readouterr().out == "hello-3\n"
    distributed.shutdown()


def test_torchrun_with_one_process_needs_no_group(no_torchrun_env):
    for name, value in zip(TORCHRUN_VARS, ("0", "1", "0", "127.0.0.1", "1")):
        no_torchrun_env.setenv(name, value)
    distributed.init()
    assert not torch.distributed.is_initialized()
    assert distributed.get_world_size() == 1


def test_incomplete_env_raises_naming_the_variable(no_torchrun_env):
    no_torchrun_env.setenv("WORLD_SIZE", "2")
    no_torchrun_env.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        distributed.init()
    no_torchrun_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed.init()


# --------------------------------------------------------------------------- two processes

def _torchrun_worker(rank, port, out_dir):
    # Hide GPUs (before CUDA is first queried) so both ranks use gloo even on a 1-GPU machine.
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    distributed.init()
    distributed.init()  # second call must be a no-op
    total = torch.tensor([float(rank + 1)], device=distributed.device())
    torch.distributed.all_reduce(total)
    distributed.barrier()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        distributed.print0("from", distributed.get_rank())
    collector = training_stats.Collector()  # auto sync: no init_multiprocessing() call
    training_stats.report("rank", float(rank))
    collector.update()
    result = dict(rank=distributed.get_rank(), world=distributed.get_world_size(),
                  local=distributed.get_local_rank(), main=distributed.is_main(), sum=total.item(),
                  device=str(distributed.device()),
                  printed=out.getvalue(), stat=collector.as_dict()["rank"])
    distributed.shutdown()
    result["after_shutdown"] = (distributed.get_rank(), distributed.get_world_size())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_two_process_env_launch(tmp_path):
    run_workers(_torchrun_worker, 2, (free_port(), str(tmp_path)))
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as f:
            result = json.load(f)
        assert (result["rank"], result["world"], result["local"]) == (rank, 2, rank)
        assert result["main"] == (rank == 0)
        assert result["sum"] == 3.0 and result["device"] == "cpu"
        assert result["printed"] == ("from 0\n" if rank == 0 else "")
        assert result["stat"] == {"num": 2, "mean": 0.5, "std": 0.5}
        assert result["after_shutdown"] == [0, 1]
