"""train.py end to end with a fake training loop: dry runs, errors, launch, plugins, --resume=latest."""

import json
import os
import pickle
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import train
from tests.multiprocess import free_port, run_workers
from training import train_options

CONTRACT_KEYS = {
    "run_dir", "training_set_kwargs", "data_loader_kwargs", "G_kwargs", "D_kwargs", "G_opt_kwargs", "D_opt_kwargs",
    "loss_kwargs", "augment_kwargs", "augment_p", "ada_target", "ada_kimg", "ada_interval", "metrics",
    "metric_dataset_kwargs", "random_seed", "num_gpus", "batch_size", "batch_gpu", "ema_kimg", "ema_rampup",
    "G_reg_interval", "D_reg_interval", "total_kimg",
    "kimg_per_tick", "image_snapshot_ticks", "network_snapshot_ticks", "keep_last", "resume_pkl", "allow_partial",
    "cudnn_benchmark", "allow_tf32", "device", "grid_size",
}


def make_dataset(root, count=6, resolution=32):
    """A folder of random RGB PNGs without labels."""
    os.makedirs(root, exist_ok=True)
    rnd = np.random.RandomState(1)
    for idx in range(count):
        image = rnd.randint(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        PIL.Image.fromarray(image).save(root / f"img{idx:08d}.png")
    return str(root)


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def paths(tmp_path):
    return dict(outdir=str(tmp_path / "runs"), data=make_dataset(tmp_path / "cats"))


def invoke(paths, *args, command=None):
    return CliRunner().invoke(command or train.main, ["--outdir", paths["outdir"], "--data", paths["data"], *args])


def options_json(output):
    """The kwargs tree printed after 'Training options:'."""
    start = output.index("Training options:\n") + len("Training options:\n")
    return json.JSONDecoder().raw_decode(output[start:])[0]


@pytest.fixture
def fake_loop(monkeypatch):
    """Stand-in for training.training_loop: records each call's kwargs and prints a line."""
    calls = []
    module = type(sys)("training.training_loop")

    def training_loop(**kwargs):
        calls.append(kwargs)
        print(f"fake loop running in {kwargs['run_dir']}")

    module.training_loop = training_loop
    monkeypatch.setitem(sys.modules, "training.training_loop", module)
    return calls


def test_dry_run_prints_the_tree_and_creates_nothing(paths):
    result = invoke(paths, "--cfg", "tiny", "-n")
    assert result.exit_code == 0, result.output
    tree = options_json(result.output)
    assert set(tree) == CONTRACT_KEYS
    assert tree["run_dir"] == os.path.join(paths["outdir"], "00000-cats-tiny")
    assert tree["G_kwargs"]["synthesis_kwargs"]["channel_base"] == 1024 and tree["metrics"] == []
    for line in ("Output directory:", "Training data:", "Training duration:   50 kimg", "Number of GPUs:      1",
                 "Number of images:    6", "Image resolution:    32", "Conditional model:   False",
                 "Dataset x-flips:     False", "Dry run; exiting."):
        assert line in result.output
    assert not os.path.exists(paths["outdir"])


@pytest.mark.parametrize("args, option", [
    (["--p", "0.2"], "--p"),
    (["--aug", "fixed"], "--p"),
    (["--aug", "noaug", "--target", "0.5"], "--target"),
    (["--cfg", "lowshot", "--target", "0.5"], "--target"),
    (["--aug", "diffaug", "--augpipe", "bgc"], "--augpipe"),
    (["--cond", "1"], "--cond"),
    (["--batch", "6", "--gpus", "4", "--device", "cpu"], "--batch"),
    (["--batch", "8", "--batch-gpu", "3"], "--batch-gpu"),
    (["--batch", "8", "--mbstd-group", "3"], "--mbstd-group"),
    (["--metrics", "fid50k_full,fid_bogus"], "--metrics"),
    (["--resume", "latest"], "--resume"),
    (["--resume", "no/such/file.pkl"], "--resume"),
    (["--aug", "diffaug", "--diffaug-policy", "color,zoom"], "--diffaug-policy"),
    (["--diffaug-policy", "color"], "--diffaug-policy"),
    (["--subset", "7"], "--subset"),
    (["--device", "tpu-please"], "--device"),
    (["--gamma", "-1"], "--gamma"),
    (["--cfg", "huge"], "--cfg"),
])
def test_errors_are_one_line_naming_the_option(paths, args, option):
    result = invoke(paths, *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"'{option}'" in errors[0], result.output
    assert not os.path.exists(paths["outdir"])


def test_missing_data_path(paths):
    result = invoke(dict(paths, data=paths["data"] + "-missing"))
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "'--data'" in errors[0] and "no such file" in errors[0]


def test_torchrun_world_size_must_match_gpus(paths, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = invoke(paths, "--gpus", "4", "-n")
    assert result.exit_code == 2 and "'--gpus'" in result.output and "WORLD_SIZE=2" in result.output


def test_launch_calls_the_loop_once(paths, fake_loop):
    result = invoke(paths, "--cfg", "tiny", "--kimg", "1", "--desc", "smoke")
    assert result.exit_code == 0, result.output
    assert len(fake_loop) == 1
    kwargs = fake_loop[0]
    assert set(kwargs) == CONTRACT_KEYS | {"rank", "local_rank"}
    assert (kwargs["rank"], kwargs["local_rank"], kwargs["num_gpus"]) == (0, 0, 1)
    run_dir = os.path.join(paths["outdir"], "00000-cats-tiny-kimg1-smoke")
    assert kwargs["run_dir"] == run_dir
    saved = train_options.load_training_options(os.path.join(run_dir, "training_options.json"))
    assert saved == {k: v for k, v in kwargs.items() if k not in ("rank", "local_rank")}
    assert saved.G_kwargs.mapping_kwargs.num_layers == 2  # EasyDicts all the way down
    with open(os.path.join(run_dir, "log.txt"), encoding="utf-8") as f:
        assert f"fake loop running in {run_dir}" in f.read()
    # The next launch takes the next number.
    assert invoke(paths, "--cfg", "tiny").exit_code == 0
    assert fake_loop[1]["run_dir"] == os.path.join(paths["outdir"], "00001-cats-tiny")


def test_resume_latest(paths, fake_loop):
    run = os.path.join(paths["outdir"], "00003-cats-auto1")
    os.makedirs(run)
    for name in ("network-snapshot-000008.pkl", "training-state-000008.pt", "training-state-000012.pt.tmp",
                 ".tmp-training-state-000016.pt"):
        if name.endswith(".pt"):
            torch.save({}, os.path.join(run, name))  # complete files, as the real writers leave them
        else:
            with open(os.path.join(run, name), "wb") as f:
                pickle.dump({}, f)
    result = invoke(paths, "--resume", "latest", "-n")
    assert result.exit_code == 0, result.output
    tree = options_json(result.output)
    assert tree["resume_pkl"] == os.path.abspath(os.path.join(run, "training-state-000008.pt"))
    assert (tree["ada_kimg"], tree["ema_rampup"]) == (100, None)
    assert tree["run_dir"].endswith("00004-cats-auto1-resumelatest")


PLUGIN_SOURCE = '''
import click

CLI_OPTIONS = [click.Option(["--fake-weight"], type=float, help="weight of the fake plugin")]


def make_plugin_kwargs(opts, context):
    if opts["fake_weight"] is None:
        return []
    return [dict(class_name="fake_cli_plugin.FakeLoss", weight=opts["fake_weight"], num_images=context.num_images)]


def run_desc(opts):
    return "" if opts["fake_weight"] is None else f"fake{opts['fake_weight']:g}"
'''


def test_plugin_options(paths, tmp_path, monkeypatch):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "fake_cli_plugin.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.delitem(sys.modules, "fake_cli_plugin", raising=False)
    command = train.make_command(["fake_cli_plugin", "stylegan2_ada_kd.not_written_yet"])
    assert "--fake-weight" in CliRunner().invoke(command, ["--help"]).output
    result = invoke(paths, "--fake-weight", "2", "-n", command=command)
    assert result.exit_code == 0, result.output
    tree = options_json(result.output)
    assert tree["loss_kwargs"]["plugins"] == [{"class_name": "fake_cli_plugin.FakeLoss", "weight": 2.0, "num_images": 6}]
    assert tree["run_dir"].endswith("00000-cats-auto1-fake2")
    assert options_json(invoke(paths, "-n", command=command).output)["loss_kwargs"]["plugins"] == []


def test_plugin_option_clash(tmp_path, monkeypatch):
    (tmp_path / "clash_plugin.py").write_text("import click\nCLI_OPTIONS = [click.Option(['--gamma'])]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "clash_plugin", raising=False)
    with pytest.raises(RuntimeError, match="--gamma"):
        train.make_command(["clash_plugin"])


SPAWN_LOOP_SOURCE = '''
import json
import os

import torch.distributed


def loop(**kwargs):
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    info = dict(rank=kwargs["rank"], local_rank=kwargs["local_rank"], num_gpus=kwargs["num_gpus"], world=world)
    with open(os.path.join(kwargs["run_dir"], f"rank{kwargs['rank']}.json"), "w") as f:
        json.dump(info, f)
    print(f"hello from rank {kwargs['rank']}")
'''


def test_gpus_2_spawns_two_cpu_processes(paths, tmp_path, monkeypatch):
    (tmp_path / "loops").mkdir()
    (tmp_path / "loops" / "spawn_fake_loop.py").write_text(SPAWN_LOOP_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path / "loops"))  # the spawned children inherit sys.path
    monkeypatch.setattr(train, "LOOP_FUNC", "spawn_fake_loop.loop")
    result = invoke(paths, "--gpus", "2", "--device", "cpu", "--cfg", "tiny")
    assert result.exit_code == 0, result.output
    run_dir = os.path.join(paths["outdir"], "00000-cats-tiny")
    for rank in (0, 1):
        with open(os.path.join(run_dir, f"rank{rank}.json"), encoding="utf-8") as f:
            assert json.load(f) == dict(rank=rank, local_rank=rank, num_gpus=2, world=2)
    with open(os.path.join(run_dir, "log.txt"), encoding="utf-8") as f:
        log = f.read()
    assert "hello from rank 0" in log and "hello from rank 1" not in log  # only rank 0 writes the log
    assert train_options.load_training_options(os.path.join(run_dir, "training_options.json")).batch_gpu == 4


def _torchrun_worker(rank, port, paths, loop_dir):
    # What torchrun sets up for each process; hidden GPUs keep both ranks on gloo.
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    sys.path.insert(0, loop_dir)
    train.LOOP_FUNC = "spawn_fake_loop.loop"
    train.main.main(["--outdir", paths["outdir"], "--data", paths["data"], "--cfg", "tiny"], standalone_mode=False)


def test_torchrun_ranks_share_one_run_dir(paths, tmp_path):
    (tmp_path / "loops").mkdir()
    (tmp_path / "loops" / "spawn_fake_loop.py").write_text(SPAWN_LOOP_SOURCE)
    run_workers(_torchrun_worker, 2, (free_port(), paths, str(tmp_path / "loops")))
    assert os.listdir(paths["outdir"]) == ["00000-cats-tiny"]  # rank 0 alone named and created it
    run_dir = os.path.join(paths["outdir"], "00000-cats-tiny")
    for rank in (0, 1):
        with open(os.path.join(run_dir, f"rank{rank}.json"), encoding="utf-8") as f:
            assert json.load(f) == dict(rank=rank, local_rank=rank, num_gpus=2, world=2)
