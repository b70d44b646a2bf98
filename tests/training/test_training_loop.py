"""training_loop: outputs of a short run, schedules, exact resume, pickle transfer, 2-process gloo run."""

import json
import os
import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
import legacy
from tests.multiprocess import free_port, run_workers
from torch_utils import distributed
from training import snapshot, training_logs
from training import training_setup as setup
from training.training_loop import training_loop

RECORDER = "tests.training.test_loss.RecordingPlugin"


pytestmark = pytest.mark.usefixtures("pure_pytorch_ops")


def make_dataset(path, num=12, res=8, num_classes=None, channels=3):
    """PNGs plus dataset.json (labels = index % num_classes, or null)."""
    os.makedirs(path, exist_ok=True)
    rnd = np.random.RandomState(0)
    labels = []
    for idx in range(num):
        pixels = (rnd.rand(res, res, channels) * 255).astype(np.uint8)
        PIL.Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(os.path.join(path, f"img{idx:03d}.png"))
        labels.append([f"img{idx:03d}.png", idx % num_classes if num_classes else 0])
    with open(os.path.join(path, "dataset.json"), "w") as f:
        json.dump({"labels": labels if num_classes else None}, f)
    return str(path)


def loop_kwargs(run_dir, data, res=8, use_labels=False, **overrides):
    """The train.py contract for a tiny network (channel_max 8), ADA on, every snapshot written."""
    os.makedirs(run_dir, exist_ok=True)
    kwargs = dnnlib.EasyDict(
        run_dir=str(run_dir),
        training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path=data, use_labels=use_labels,
                                 xflip=False, resolution=res),
        data_loader_kwargs=dict(num_workers=0, pin_memory=True, prefetch_factor=2),
        G_kwargs=dict(class_name="training.networks.Generator", z_dim=8, w_dim=8, mapping_kwargs=dict(num_layers=2),
                      synthesis_kwargs=dict(channel_base=64, channel_max=8, num_fp16_res=0, conv_clamp=None)),
        D_kwargs=dict(class_name="training.networks.Discriminator", channel_base=64, channel_max=8,
                      epilogue_kwargs=dict(mbstd_group_size=2)),
        G_opt_kwargs=dict(class_name="torch.optim.Adam", lr=0.002, betas=[0, 0.99], eps=1e-8),
        D_opt_kwargs=dict(class_name="torch.optim.Adam", lr=0.002, betas=[0, 0.99], eps=1e-8),
        augment_kwargs=dict(class_name="training.augment.AugmentPipe", xflip=1, rotate90=1, xint=1, scale=1,
                            rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
        loss_kwargs=dict(class_name="training.loss.StyleGAN2Loss", r1_gamma=1, pl_weight=2, style_mixing_prob=0.9,
                         plugins=[dict(class_name=RECORDER)]),
        augment_p=0.2, ada_target=0.6, ada_kimg=0.1, ada_interval=2, metrics=[], random_seed=0, num_gpus=1, rank=0,
        local_rank=0, batch_size=4, batch_gpu=2, ema_kimg=0.01, ema_rampup=0.05, G_reg_interval=2,
        D_reg_interval=4, total_kimg=0.016, kimg_per_tick=0.008, image_snapshot_ticks=1, network_snapshot_ticks=1,
        keep_last=None, resume_pkl=None, allow_partial=False, cudnn_benchmark=True, allow_tf32=False, device="cpu",
        grid_size=[4, 2])
    kwargs.update(overrides)
    return kwargs


# ----------------------------------------------------------------------------
# Schedules and helpers.


def test_lazy_regularisation_scales_lr_and_betas():
    kwargs = setup.lazy_reg_opt_kwargs(dict(class_name="torch.optim.Adam", lr=0.0025, betas=[0, 0.99], eps=1e-8), 16)
    assert kwargs.lr == pytest.approx(0.0025 * 16 / 17)
    assert kwargs.betas == pytest.approx([0, 0.99 ** (16 / 17)])
    assert kwargs.eps == 1e-8 and kwargs.class_name == "torch.optim.Adam"
    assert setup.lazy_reg_opt_kwargs(dict(lr=0.002, betas=[0.5, 0.9]), 4).betas == pytest.approx([0.5**0.8, 0.9**0.8])


def test_ema_beta_formula_with_rampup():
    assert setup.ema_beta(32, 10**9, 10, None) == pytest.approx(0.5 ** (32 / 10000))
    assert setup.ema_beta(32, 1000, 10, 0.05) == pytest.approx(0.5 ** (32 / 50))  # min(10000, 1000 * 0.05)
    assert setup.ema_beta(32, 10**9, 10, 0.05) == pytest.approx(0.5 ** (32 / 10000))
    assert setup.ema_beta(32, 0, 10, 0.05) == 0.0  # first step: G_ema = G


def test_ada_adjust_direction_step_and_clamp():
    step = 64 * 4 / (500 * 1000)
    assert setup.ada_adjust(0.3, 0.9, 0.6, 64, 4, 500) == pytest.approx(0.3 + step)  # overfitting: more aug
    assert setup.ada_adjust(0.3, 0.1, 0.6, 64, 4, 500) == pytest.approx(0.3 - step)
    assert setup.ada_adjust(0.0, -1.0, 0.6, 64, 4, 500) == 0.0
    assert setup.ada_adjust(1.0, 1.0, 0.6, 64, 4, 500) == 1.0
    assert setup.ada_adjust(0.5, 0.6, 0.6, 64, 4, 500) == 0.5


def test_nonfinite_gradients_are_zeroed_and_counted():
    params = [torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(2, 2)),
              torch.nn.Parameter(torch.ones(1))]
    params[0].grad = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 2.0])
    params[1].grad = torch.ones(2, 2)
    count = setup.sync_and_clean_grads(params, num_gpus=1)
    assert int(count) == 3 and params[2].grad is None
    assert params[0].grad.tolist() == [1.0, 0.0, 1e5, -1e5, 2.0]


def test_tick_line_has_reference_fields_plus_nonfinite_and_eta():
    line = training_logs.tick_line(dnnlib.EasyDict(tick=3, kimg=12.5, total_sec=3725, sec_per_tick=10.0,
                                                   sec_per_kimg=2.5, maintenance_sec=0.5, cpu_mem_gb=1.25,
                                                   gpu_mem_gb=0, augment=0.125, nonfinite=7, eta_sec=65))
    assert line.split() == ["tick", "3", "kimg", "12.5", "time", "1h", "02m", "05s", "sec/tick", "10.0", "sec/kimg",
                            "2.50", "maintenance", "0.5", "cpumem", "1.25", "gpumem", "0.00", "augment", "0.125",
                            "nonfinite", "7", "eta", "1m", "05s"]
    assert line.startswith("tick 3     kimg 12.5     time 1h 02m 05s   sec/tick 10.0    ")
    extra = training_logs.tick_line(dnnlib.EasyDict(tick=3, kimg=12.5, total_sec=3725, sec_per_tick=10.0,
                                                    sec_per_kimg=2.5, maintenance_sec=0.5, cpu_mem_gb=1.25,
                                                    gpu_mem_gb=0, augment=0.125, nonfinite=7, eta_sec=65,
                                                    extra={"apa_p": 0.25, "x": 2}))
    assert extra.split()[18:26] == ["augment", "0.125", "apa_p", "0.250", "x", "2.000", "nonfinite", "7"]


def test_image_grid_rows_are_classes_and_grid_layout(tmp_path):
    from training.dataset import ImageFolderDataset
    dataset = ImageFolderDataset(make_dataset(tmp_path / "data", num=10, num_classes=3), use_labels=True)
    images, labels = training_logs.setup_snapshot_image_grid(dataset, (5, 4), random_seed=0)
    assert images.shape == (20, 3, 8, 8) and images.dtype == np.uint8 and labels.shape == (20, 3)
    rows = labels.reshape(4, 5, 3)
    assert all((row == row[0]).all() for row in rows)  # one class per row
    assert len({tuple(row[0]) for row in rows[:3]}) == 3  # every class before any repeats
    grid = np.arange(2 * 3 * 1 * 2 * 2, dtype=np.float32).reshape(6, 1, 2, 2)
    training_logs.save_image_grid(grid, tmp_path / "g.png", drange=[0, 23], grid_size=(3, 2))
    pixels = np.asarray(PIL.Image.open(tmp_path / "g.png"))
    assert pixels.shape == (4, 6) and pixels[0, 2] == round(4 * 255 / 23) and pixels[2, 0] == round(12 * 255 / 23)


# ----------------------------------------------------------------------------
# Whole runs.


def test_short_run_writes_every_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.modules["training.training_loop"], "_module_exists", lambda name: False)  # no registry
    data = make_dataset(tmp_path / "data", res=16, num_classes=3)
    run_dir = tmp_path / "run"
    kwargs = loop_kwargs(run_dir, data, res=16, use_labels=True, metrics=["fid50k_full"], total_kimg=0.012,
                         loss_kwargs=dict(class_name="training.loss.StyleGAN2Loss", r1_gamma=1, pl_weight=2,
                                          plugins=[dict(class_name=RECORDER, nan_at_nimg=4)]))
    with pytest.warns(RuntimeWarning, match="metric_main"):
        training_loop(**kwargs)
    out = capsys.readouterr().out
    order = ["Loading training set...", "Num images:", "Constructing networks...", "Setting up augmentation...",
             "Distributing across 1 GPUs...", "Setting up training phases...", "Exporting sample images...",
             "Initializing logs...", "Training for 0.012 kimg...", "tick 0 ", "Exiting..."]
    assert all(out.index(a) < out.index(b) for a, b in zip(order, order[1:]))
    assert "glibc" in out and "nonfinite 0 " in out and "eta " in out
    ticks = [line for line in out.splitlines() if line.startswith("tick ")]
    assert len(ticks) == 2 and " nonfinite 0 " not in ticks[1]  # NaN plugin term at nimg 4, in tick 1

    files = sorted(os.listdir(run_dir))
    assert files == ["fakes000000.png", "fakes_init.png", "network-snapshot-000000.pkl", "reals.png", "stats.jsonl",
                     "training-state-000000.pt"]
    for name in ("reals.png", "fakes_init.png", "fakes000000.png"):
        assert PIL.Image.open(run_dir / name).size == (4 * 16, 2 * 16)
    lines = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    names = {"Progress/tick", "Progress/kimg", "Progress/augment", "Timing/total_sec", "Timing/sec_per_tick",
             "Timing/sec_per_kimg", "Timing/maintenance_sec", "Timing/total_hours", "Timing/total_days",
             "Timing/Gmain", "Timing/Greg", "Timing/Dmain", "Timing/Dreg", "Resources/cpu_mem_gb",
             "Resources/peak_gpu_mem_gb", "Loss/G/loss", "Loss/D/loss", "Loss/r1_penalty", "Loss/D/reg",
             "Loss/pl_penalty", "Loss/G/reg", "Loss/scores/real", "Loss/scores/fake", "Loss/signs/real",
             "Loss/signs/fake", "Progress/nonfinite_grads", "Loss/recorder/d", "timestamp"}
    assert names <= set(lines[-1])
    assert lines[1]["Loss/recorder/d"]["mean"] is None  # NaN written as null
    assert sum(line["Progress/nonfinite_grads"]["mean"] * line["Progress/nonfinite_grads"]["num"]
               for line in lines) > 0
    assert [line["Progress/tick"]["mean"] for line in lines] == [0, 1]

    with open(run_dir / "network-snapshot-000000.pkl", "rb") as f:
        data = legacy.load_network_pkl(f)
    assert {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs", "plugin_states"} <= set(data)
    assert not data["G_ema"].training and next(data["G"].parameters()).device.type == "cpu"
    recorder = data["plugin_states"]["recorder"]
    # setup; 3 steps x 2 rounds of augment_real, d_loss, g_loss; after_step per step; observe in Dmain + 1 Dreg step
    assert recorder["calls"].tolist() == [1, 6, 6, 6, 3, 8]
    assert all(torch.isfinite(value).all() for value in recorder.values())
    state = snapshot.load_training_state(str(run_dir / "training-state-000000.pt"))
    first_head = state["ranks"][0]["loss"]["plugins"]["recorder"]["head.weight"]
    assert torch.equal(first_head, recorder["head.weight"])
    assert state["cur_nimg"] == 12 and state["batch_idx"] == 3 and state["kwargs"]["batch_size"] == 4
    assert 0 < float(data["augment_pipe"].p) <= 1


def test_plugin_head_is_trained_by_d_optimizer(tmp_path):
    data = make_dataset(tmp_path / "data")
    kwargs = loop_kwargs(tmp_path / "run", data, total_kimg=0.004, network_snapshot_ticks=None,
                         image_snapshot_ticks=None, augment_kwargs=None, ada_target=None)
    heads = []
    for kimg in (0.004, 0.008):
        kwargs.update(total_kimg=kimg, network_snapshot_ticks=1, run_dir=str(tmp_path / f"run{kimg}"))
        os.makedirs(kwargs.run_dir)
        training_loop(**kwargs)
        with open(os.path.join(kwargs.run_dir, "network-snapshot-000000.pkl"), "rb") as f:
            heads.append(legacy.load_network_pkl(f)["plugin_states"]["recorder"]["head.weight"])
    assert not torch.equal(heads[0], heads[1])


def test_metrics_are_evaluated_at_snapshots_when_the_registry_exists(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("metrics.metric_main")
    fake.calc_metric = lambda **kwargs: calls.append(("calc", kwargs)) or dnnlib.EasyDict(
        results={kwargs["metric"]: 1.5}, metric=kwargs["metric"])
    fake.report_metric = lambda result_dict, run_dir, snapshot_pkl: calls.append(("report", snapshot_pkl)) or "{json}"
    monkeypatch.setitem(sys.modules, "metrics.metric_main", fake)
    import metrics
    monkeypatch.setattr(metrics, "metric_main", fake, raising=False)  # `from metrics import metric_main` reads this
    data = make_dataset(tmp_path / "data")
    test_split = make_dataset(tmp_path / "test_split", num=3)
    kwargs = loop_kwargs(tmp_path / "run", data, total_kimg=0.004, metrics=["fid50k_full"], augment_kwargs=None,
                         ada_target=None, metric_dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset",
                                                                     path=test_split, resolution=8))
    training_loop(**kwargs)
    calc = calls[0][1]
    assert calls[0][0] == "calc" and calc["metric"] == "fid50k_full" and calc["num_gpus"] == 1 and calc["rank"] == 0
    assert not calc["G"].training and calc["dataset_kwargs"]["path"] == test_split and str(calc["device"]) == "cpu"
    assert calls[1] == ("report", str(tmp_path / "run" / "network-snapshot-000000.pkl"))
    assert "\n{json}\n" in capsys.readouterr().out  # the metric line is shown on the console
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert "timestamp" in stats[0]


def _final_state(run_dir):
    return snapshot.load_training_state(snapshot.find_latest(str(run_dir)))


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for idx, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{idx}]")
    else:
        assert a == b, where


def test_resume_from_training_state_is_bit_exact(tmp_path, capsys):
    """6 steps straight == 3 steps, stop, resume from the training state, 3 more steps.

    The stop (step 3) is off the straight run's tick grid (ticks end at steps 1, 4, 6), between two
    ADA adjustments (every 2 steps) and before a lazy R1 step (every 4).
    """
    data = make_dataset(tmp_path / "data")
    straight = loop_kwargs(tmp_path / "straight", data, total_kimg=0.024, kimg_per_tick=0.012)
    training_loop(**straight)
    first = loop_kwargs(tmp_path / "first", data, total_kimg=0.012, kimg_per_tick=0.012)
    training_loop(**first)
    state_path = snapshot.find_latest(str(tmp_path / "first"))
    state = snapshot.load_training_state(state_path)
    assert state["cur_nimg"] == 12 and state["ada_carry"][0] > 0  # ADA statistics pending at the stop
    # What train.py passes when resuming (the saved values win); loader workers do not change the data order.
    resumed = loop_kwargs(tmp_path / "resumed", data, total_kimg=0.024, kimg_per_tick=0.012, resume_pkl=state_path,
                          ada_kimg=100, ema_rampup=None, data_loader_kwargs=dict(num_workers=2, prefetch_factor=2))
    capsys.readouterr()
    training_loop(**resumed)
    out = capsys.readouterr().out
    assert "(exact continuation)" in out and "ada_kimg=0.1 (given 100)" in out and "ema_rampup=0.05 (given None)" in out
    assert out.index("Constructing networks...") < out.index("exact continuation") < out.index("Setting up augment")
    want, got = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert got["cur_nimg"] == want["cur_nimg"] == 24
    for key in ("G", "D", "G_ema", "augment_pipe", "optimizers", "ada_carry", "batch_idx"):
        _assert_same(want[key], got[key], key)
    _assert_same(want["ranks"][0]["loss"], got["ranks"][0]["loss"], "loss")
    _assert_same(want["ranks"][0]["rng"], got["ranks"][0]["rng"], "rng")
    assert float(want["augment_pipe"]["p"]) != 0.2  # ADA moved p


def test_transfer_from_pickle_checks_shapes(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    source = loop_kwargs(tmp_path / "source", data, total_kimg=0.004, augment_kwargs=None, ada_target=None)
    training_loop(**source)
    pkl = str(tmp_path / "source" / "network-snapshot-000000.pkl")
    wider = dict(source.G_kwargs, synthesis_kwargs=dict(channel_base=64, channel_max=16))
    target = loop_kwargs(tmp_path / "target", data, total_kimg=0.004, augment_kwargs=None, ada_target=None,
                         resume_pkl=pkl, G_kwargs=wider)
    capsys.readouterr()
    with pytest.raises(ValueError, match="allow_partial"):
        training_loop(**target)
    assert "shape mismatch" in capsys.readouterr().out
    target.update(allow_partial=True, run_dir=str(tmp_path / "target2"))
    os.makedirs(target.run_dir)
    training_loop(**target)
    out = capsys.readouterr().out
    assert f'Resuming from "{pkl}"' in out and "Resume D: copied" in out


def _gloo_worker(rank, port, kwargs):
    """One rank of a 2-process CPU run; the loop's check_ddp_consistency raises if the ranks drift apart."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        training_loop(**dict(kwargs, rank=rank, local_rank=rank))
    finally:
        distributed.shutdown()


def test_two_process_gloo_run_keeps_parameters_in_sync(tmp_path):
    """2 CPU processes: gradients all-reduced, check_ddp_consistency passes at every snapshot."""
    data = make_dataset(tmp_path / "data")
    kwargs = loop_kwargs(tmp_path / "run", data, num_gpus=2, total_kimg=0.012)
    run_workers(_gloo_worker, nprocs=2, args=(free_port(), dict(kwargs)), timeout=120)
    state = snapshot.load_training_state(snapshot.find_latest(str(tmp_path / "run")))
    assert state["cur_nimg"] == 12 and state["num_gpus"] == 2 and len(state["ranks"]) == 2
    rng0, rng1 = (state["ranks"][r]["rng"]["torch"] for r in (0, 1))
    assert not torch.equal(rng0, rng1)  # per-rank seeds


def test_default_grid_size_rules():
    # The reference's 7680x4320-pixel grid on CUDA, clipped to 7..32 x 4..32 images.
    assert training_logs.default_grid_size(256, 256, "cuda") == (30, 16)
    assert training_logs.default_grid_size(2048, 2048, "cuda") == (7, 4)
    assert training_logs.default_grid_size(32, 32, "cpu") == (8, 4)
    assert training_logs.default_grid_size(32, 32, "cuda", max_side=5) == (5, 5)  # --grid caps both sides
    assert training_logs.default_grid_size(32, 32, "cpu", max_side=[3, 2]) == (3, 2)
