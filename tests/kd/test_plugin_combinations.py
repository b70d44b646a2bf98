"""Every option combination of the paper's tables, from train.py's option builder to a training run.

Each combination in COMBINATIONS (DA, ADA, APA, LeCam, InsGen and all three baselines stacked,
each also with KD-DLGAN when the KD plugin is present) goes through
`train_options.build_training_setup` with the real plugin modules, then trains one tick on the CPU
with tiny networks. Each baseline alone, DA + KD and the three stacked (plus KD) also resume
exactly: 6 steps straight == 3 steps, stop, resume from the training state (through the option builder again, as
`--resume=...pt`), 3 more; and run on two gloo processes, where APA's p and InsGen's queues must
stay identical on both ranks.
"""

import importlib.util
import json

import pytest
import torch

from tests.multiprocess import free_port, run_workers
from tests.training.test_training_loop import _assert_same, _final_state, _gloo_worker, loop_kwargs, make_dataset
from training import snapshot
from training import train_options as to
from training.training_loop import training_loop

pytestmark = pytest.mark.usefixtures("pure_pytorch_ops")

HAS_KD = all(importlib.util.find_spec(name) is not None
             for name in ("stylegan2_ada_kd.kd_plugin", "tests.kd.clip_fixtures"))
KD_OPTIONS = {"kd": "agkd,cgkd"}  # plus the tiny offline teacher (fixture)

# name -> (train.py options, the plugins they must build, their run-dir suffix). APA moves p fast
# (--apa-kimg=0.1) so that a few steps change it; LeCam gets a weight that shows in D's steps.
COMBINATIONS = {
    "da": (dict(aug="diffaug"), [], "-diffaug"),
    "ada": (dict(aug="ada"), [], "-ada"),
    "apa": (dict(aug="ada", apa=True, apa_kimg=0.1), ["apa"], "-ada-apa-apakimg0.1"),
    "lecam": (dict(aug="diffaug", lecam=0.1), ["lecam"], "-diffaug-lecam0.1"),
    "insgen": (dict(aug="ada", insgen=True, insgen_queue=8), ["insgen"], "-ada-insgen-queue8"),
    "apa+lecam+insgen": (dict(aug="ada", apa=True, apa_kimg=0.1, lecam=0.1, insgen=True, insgen_queue=8),
                         ["apa", "lecam", "insgen"], "-ada-apa-apakimg0.1-lecam0.1-insgen-queue8"),
}
# Statistic each plugin must report in a run.
PLUGIN_STATS = {"apa": "Progress/apa_p", "lecam": "Loss/lecam/penalty", "insgen": "Loss/insgen/real",
                "kd": "Loss/KD/agkd"}
CASES = [(name, False) for name in COMBINATIONS] + [(name, True) for name in COMBINATIONS if HAS_KD]
# Exact resume: each baseline plugin alone, DA with KD, and the three stacked with KD (each state is checked).
RESUME_CASES = [("apa", False), ("lecam", False), ("insgen", False), ("apa+lecam+insgen", HAS_KD)]
RESUME_CASES += [("da", True)] if HAS_KD else []


@pytest.fixture(scope="module")
def plugin_modules():
    modules = to.load_plugin_modules()
    names = {module.__name__ for module in modules}
    assert {"stylegan2_ada_kd.apa", "stylegan2_ada_kd.lecam", "stylegan2_ada_kd.insgen"} <= names
    return modules


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("combo_data"))


@pytest.fixture(scope="module")
def teacher_options(tmp_path_factory):
    if not HAS_KD:
        return {}
    from tests.kd.clip_fixtures import make_tiny_clip_checkpoint

    spec, ckpt = make_tiny_clip_checkpoint(tmp_path_factory.mktemp("tiny_clip"))
    return dict(KD_OPTIONS, teacher=spec, teacher_ckpt=ckpt)


def build_run(tmp_path, data, modules, name, with_kd, teacher_options, run, resume=None, initial_p=0.5, **overrides):
    """(setup, loop kwargs): the options of `name` through the builder, on tiny nets (loop_kwargs)."""
    opts, plugins, suffix = COMBINATIONS[name]
    opts = dict(opts, **(teacher_options if with_kd else {}))
    if resume is not None:  # as a user resuming would: the saved APA schedule must win over --resume's 100 kimg
        opts.pop("apa_kimg", None)
    setup = to.build_training_setup(dict(outdir=str(tmp_path / "runs"), data=data, device="cpu", metrics="none",
                                         resume=resume, **opts), modules)
    c = setup.kwargs
    names = [spec.class_name.rsplit(".", 1)[0].rsplit(".", 1)[1] for spec in c.loss_kwargs.plugins]
    expected = (["kd_plugin"] if with_kd else []) + plugins
    assert names == expected and ("-kd-agkd-cgkd" in setup.desc) == with_kd
    if resume is None:
        assert setup.desc.replace("-kd-agkd-cgkd", "").endswith(suffix)
    for spec in c.loss_kwargs.plugins:
        if spec.class_name.endswith(".APA"):
            spec.initial_p = initial_p  # start mid-range so that p visibly moves either way
    kwargs = loop_kwargs(tmp_path / run, data, loss_kwargs=c.loss_kwargs, augment_kwargs=c.augment_kwargs,
                         ada_target=c.ada_target, augment_p=0.2 if c.ada_target is not None else 0,
                         resume_pkl=c.resume_pkl, **overrides)
    if c.resume_pkl is not None:
        kwargs.update(ada_kimg=c.ada_kimg, ema_rampup=c.ema_rampup)  # what train.py passes (the saved values win)
    return setup, kwargs


@pytest.mark.parametrize("name, with_kd", CASES, ids=[f"{n}{'+kd' if kd else ''}" for n, kd in CASES])
def test_combination_trains_one_tick(tmp_path, data, plugin_modules, teacher_options, name, with_kd, capsys):
    setup, kwargs = build_run(tmp_path, data, plugin_modules, name, with_kd, teacher_options, "run",
                              total_kimg=0.008, kimg_per_tick=0.004, image_snapshot_ticks=None)
    training_loop(**kwargs)
    state = _final_state(tmp_path / "run")
    plugins = state["ranks"][0]["loss"]["plugins"]
    expected = (["kd"] if with_kd else []) + COMBINATIONS[name][1]
    assert list(plugins) == expected and state["cur_nimg"] == 8
    last_tick = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tick ")][-1].split()
    if "apa" in plugins:  # APA's p on the tick line, between ADA's augment and nonfinite
        at = last_tick.index("apa_p")
        assert last_tick[at - 2] == "augment" and last_tick[at + 2] == "nonfinite"
        assert last_tick[at + 1] == f"{float(plugins['apa']['p']):.3f}"
    else:
        assert "apa_p" not in last_tick
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    for plugin in expected:
        assert PLUGIN_STATS[plugin] in stats[-1], plugin
    for param in state["D"].values():
        assert torch.isfinite(param).all()
    aug = COMBINATIONS[name][0]["aug"]
    want_class = {"diffaug": "stylegan2_ada_kd.diffaugment.DiffAugment", "ada": "training.augment.AugmentPipe"}[aug]
    assert setup.kwargs.augment_kwargs.class_name == want_class
    assert (setup.kwargs.ada_target == 0.6) == (aug == "ada")


@pytest.mark.parametrize("name, with_kd", RESUME_CASES, ids=[f"{n}{'+kd' if kd else ''}" for n, kd in RESUME_CASES])
def test_combination_resumes_exactly(tmp_path, data, plugin_modules, teacher_options, name, with_kd):
    common = dict(kimg_per_tick=0.012, image_snapshot_ticks=None)
    _, straight = build_run(tmp_path, data, plugin_modules, name, with_kd, teacher_options, "straight",
                            total_kimg=0.024, **common)
    training_loop(**straight)
    _, first = build_run(tmp_path, data, plugin_modules, name, with_kd, teacher_options, "first",
                         total_kimg=0.012, **common)
    training_loop(**first)
    state_path = snapshot.find_latest(str(tmp_path / "first"))
    stopped = snapshot.load_training_state(state_path)["ranks"][0]["loss"]["plugins"]
    _, resumed = build_run(tmp_path, data, plugin_modules, name, with_kd, teacher_options, "resumed",
                           total_kimg=0.024, resume=state_path, **common)
    assert resumed.resume_pkl == state_path
    training_loop(**resumed)
    want, got = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert got["cur_nimg"] == want["cur_nimg"] == 24
    for key in ("G", "D", "G_ema", "augment_pipe", "optimizers", "batch_idx"):
        _assert_same(want[key], got[key], key)
    _assert_same(want["ranks"][0]["loss"], got["ranks"][0]["loss"], "loss")
    _assert_same(want["ranks"][0]["rng"], got["ranks"][0]["rng"], "rng")
    plugins = want["ranks"][0]["loss"]["plugins"]
    if "apa" in plugins:  # stopped between two adjustments (every 4 steps), with --resume's kimg default overridden
        assert stopped["apa"]["sign_stats"][0] > 0 and float(plugins["apa"]["p"]) != 0.5
        assert float(plugins["apa"]["kimg"]) == 0.1
    if "lecam" in plugins:
        assert int(plugins["lecam"]["num_updates"]) == 12  # 6 steps x 2 rounds of batch_gpu
    if "insgen" in plugins:  # 24 real keys through a queue of 8: wrapped three times
        assert int(plugins["insgen"]["real_ptr"]) == 0 and int(stopped["insgen"]["real_ptr"]) == 4


def test_two_processes_share_apa_p_and_insgen_queues(tmp_path, data, plugin_modules):
    """2 CPU ranks, 4 steps: APA adjusts once from both ranks' signs; every rank enqueues every rank's keys."""
    _, kwargs = build_run(tmp_path, data, plugin_modules, "apa+lecam+insgen", False, {}, "run", num_gpus=2,
                          total_kimg=0.016, kimg_per_tick=0.016, image_snapshot_ticks=None)
    run_workers(_gloo_worker, nprocs=2, args=(free_port(), dict(kwargs)), timeout=120)
    state = _final_state(tmp_path / "run")
    assert state["cur_nimg"] == 16 and len(state["ranks"]) == 2
    rank0, rank1 = (state["ranks"][r]["loss"]["plugins"] for r in (0, 1))
    _assert_same(rank0["apa"], rank1["apa"], "apa")
    assert float(rank0["apa"]["p"]) != 0.5 and rank0["apa"]["sign_stats"].tolist() == [0, 0]
    _assert_same(rank0["insgen"], rank1["insgen"], "insgen")  # queues, pointers, heads, momentum D
    assert int(rank0["insgen"]["real_ptr"]) == 0  # 4 steps x 2 ranks x 2 keys = 16 = 2 x the queue size 8
    # LeCam's anchors are per rank (each from its own batch, as the TensorFlow release).
    assert not torch.equal(rank0["lecam"]["biased"], rank1["lecam"]["biased"])
