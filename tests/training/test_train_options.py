"""training/train_options.py: presets, derived settings, validation, run dirs, resume=latest, plugins."""

import json
import pickle
import os
import sys

import click
import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from training import train_options as to


def make_dataset(root, count=6, resolution=32, labels=None, class_names=None):
    """A folder of `count` random RGB PNGs, plus dataset.json when labels are given. Returns the path."""
    os.makedirs(root, exist_ok=True)
    names = [f"img{idx:08d}.png" for idx in range(count)]
    rnd = np.random.RandomState(0)
    for name in names:
        PIL.Image.fromarray(rnd.randint(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(root / name)
    if labels is not None:
        meta = {"labels": [[name, label] for name, label in zip(names, labels)], "class_names": class_names}
        (root / "dataset.json").write_text(json.dumps(meta))
    return str(root)


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cats(tmp_path):
    return make_dataset(tmp_path / "cats")


def build(tmp_path, data, plugins=None, **opts):
    return to.build_training_setup(dict(outdir=str(tmp_path / "runs"), data=data, **opts), plugins)


# ---- Presets and derived settings.

@pytest.mark.parametrize("res, gpus, batch, mbstd, fmaps, lr, gamma, ema", [
    (32, 1, 32, 4, 0.5, 0.0025, 0.0002 * 32**2 / 32, 10.0),         # 4096//32=128 -> capped at 32 per GPU
    (256, 1, 16, 4, 0.5, 0.0025, 0.0002 * 256**2 / 16, 5.0),        # 4096//256 = 16
    (256, 2, 32, 4, 0.5, 0.0025, 0.0002 * 256**2 / 32, 10.0),       # 2 GPUs x 16
    (1024, 1, 4, 4, 1, 0.002, 0.0002 * 1024**2 / 4, 1.25),          # 4096//1024 = 4; fmaps 1 and lr 0.002 at 1024
    (1024, 32, 64, 2, 1, 0.002, 0.0002 * 1024**2 / 64, 20.0),       # 32 x 4 capped at 64; mbstd 64//32 = 2
])
def test_auto_preset_formulas(res, gpus, batch, mbstd, fmaps, lr, gamma, ema):
    spec = to.resolve_preset("auto", res, gpus)
    assert (spec.ref_gpus, spec.kimg, spec.batch, spec.mbstd) == (gpus, 25000, batch, mbstd)
    assert (spec.fmaps, spec.lr, spec.ramp, spec.map, spec.cmax) == (fmaps, lr, 0.05, 2, 512)
    assert spec.gamma == pytest.approx(gamma) and spec.ema == pytest.approx(ema)


@pytest.mark.parametrize("cfg, expected", [
    # ref_gpus kimg batch mbstd fmaps lr gamma ema ramp map (REFERENCE.md 2.2; lowshot: METHOD.md 4)
    ("stylegan2", (8, 25000, 32, 4, 1, 0.002, 10, 10, None, 8)),
    ("paper256", (8, 25000, 64, 8, 0.5, 0.0025, 1, 20, None, 8)),
    ("paper512", (8, 25000, 64, 8, 1, 0.0025, 0.5, 20, None, 8)),
    ("paper1024", (8, 25000, 32, 4, 1, 0.002, 2, 10, None, 8)),
    ("cifar", (2, 100000, 64, 32, 1, 0.0025, 0.01, 500, 0.05, 2)),
    ("lowshot", (1, 300, 8, 4, 1, 0.002, 10, 10, None, 2)),
])
def test_fixed_presets(cfg, expected):
    assert tuple(to.resolve_preset(cfg, 256, 1))[:10] == expected


def test_tiny_preset():
    spec = to.resolve_preset("tiny", 32, 1)
    assert (spec.batch, spec.mbstd, spec.lr, spec.map, spec.ramp) == (8, 4, 0.0025, 2, 0.05)
    assert int(spec.fmaps * 32768) == 1024 and spec.cmax == 64
    assert spec.gamma == pytest.approx(0.0002 * 32**2 / 8) and spec.ema == pytest.approx(2.5)


@pytest.mark.parametrize("cfg, gpus, batch_gpu", [("stylegan2", 1, 4), ("paper256", 2, 8), ("cifar", 1, 32),
                                                  ("auto", 2, 32), ("lowshot", 2, 4)])
def test_batch_gpu_follows_ref_gpus(tmp_path, cats, cfg, gpus, batch_gpu, monkeypatch):
    monkeypatch.setattr(to, "check_device", lambda *args: None)  # --gpus=2 without CUDA devices is fine here
    kwargs = build(tmp_path, cats, cfg=cfg, gpus=gpus, metrics="none").kwargs
    assert kwargs.batch_gpu == batch_gpu and kwargs.num_gpus == gpus
    # --batch always splits over --gpus (no accumulation).
    assert build(tmp_path, cats, cfg=cfg, gpus=gpus, batch=8).kwargs.batch_gpu == 8 // gpus


def test_cifar_extras_and_performance_flags(tmp_path, cats):
    c = build(tmp_path, cats, cfg="cifar", fp32=True, nhwc=True, nobench=True, allow_tf32=True, workers=0).kwargs
    assert c.D_kwargs.architecture == "orig" and c.loss_kwargs.pl_weight == 0 and c.loss_kwargs.style_mixing_prob == 0
    assert c.G_kwargs.synthesis_kwargs.num_fp16_res == 0 and c.D_kwargs.conv_clamp is None
    assert c.G_kwargs.synthesis_kwargs.fp16_channels_last and c.D_kwargs.block_kwargs.fp16_channels_last
    assert c.cudnn_benchmark is False and c.allow_tf32 is True
    assert c.data_loader_kwargs == dict(pin_memory=True, num_workers=0)  # no prefetch_factor without workers


def test_default_tree(tmp_path, cats):
    c = build(tmp_path, cats).kwargs
    assert c.training_set_kwargs == dict(class_name="training.dataset.ImageFolderDataset", path=cats, use_labels=False,
                                         max_size=6, xflip=False, resolution=32, random_seed=0)
    assert c.G_kwargs.synthesis_kwargs == dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256)
    assert c.G_kwargs.mapping_kwargs == dict(num_layers=2) and c.G_kwargs.z_dim == c.G_kwargs.w_dim == 512
    assert c.D_kwargs.epilogue_kwargs == dict(mbstd_group_size=4) and c.D_kwargs.block_kwargs == dict(freeze_layers=0)
    assert c.G_opt_kwargs == dict(class_name="torch.optim.Adam", lr=0.0025, betas=[0.0, 0.99], eps=1e-8)
    assert c.loss_kwargs == dict(class_name="training.loss.StyleGAN2Loss", r1_gamma=pytest.approx(0.0064),
                                 style_mixing_prob=0.9, pl_weight=2, pl_batch_shrink=2, pl_decay=0.01, plugins=[])
    assert c.augment_kwargs == dict(class_name="training.augment.AugmentPipe", **to.AUGPIPE_SPECS["bgc"])
    assert (c.augment_p, c.ada_target, c.ada_kimg, c.ada_interval) == (0, 0.6, 500, 4)
    assert (c.metrics, c.batch_size, c.batch_gpu, c.ema_kimg, c.ema_rampup) == (["fid50k_full"], 32, 32, 10, 0.05)
    assert (c.total_kimg, c.kimg_per_tick, c.image_snapshot_ticks, c.network_snapshot_ticks) == (25000, 4, 50, 50)
    assert (c.resume_pkl, c.keep_last, c.grid_size, c.device, c.num_gpus) == (None, None, None, "auto", 1)


def test_overrides(tmp_path, cats):
    c = build(tmp_path, cats, cbase=2048, cmax=128, glr=0.001, dlr=0.003, map_depth=4, mbstd_group=2, batch=8,
              batch_gpu=4, gamma=0.5, kimg=7, tick=2, snap=3, image_snap=1, keep_last=2, grid=4, device="cpu").kwargs
    assert c.G_kwargs.synthesis_kwargs.channel_base == c.D_kwargs.channel_base == 2048
    assert c.G_kwargs.synthesis_kwargs.channel_max == c.D_kwargs.channel_max == 128
    assert (c.G_opt_kwargs.lr, c.D_opt_kwargs.lr, c.G_kwargs.mapping_kwargs.num_layers) == (0.001, 0.003, 4)
    assert (c.D_kwargs.epilogue_kwargs.mbstd_group_size, c.batch_size, c.batch_gpu) == (2, 8, 4)
    assert (c.loss_kwargs.r1_gamma, c.total_kimg, c.kimg_per_tick) == (0.5, 7, 2)
    assert (c.network_snapshot_ticks, c.image_snapshot_ticks, c.keep_last, c.grid_size, c.device) == (3, 1, 2, 4, "cpu")


def test_preset_option_defaults(tmp_path, cats):
    low = build(tmp_path, cats, cfg="lowshot")
    assert low.kwargs.augment_kwargs == dict(class_name=to.DIFFAUG_CLASS, policy="color,translation,cutout")
    assert low.kwargs.ada_target is None and low.kwargs.network_snapshot_ticks == 10
    assert low.desc == "cats-lowshot"  # implied options stay out of the name
    assert build(tmp_path, cats, cfg="lowshot", aug="ada").kwargs.augment_kwargs.class_name.endswith("AugmentPipe")
    tiny = build(tmp_path, cats, cfg="tiny").kwargs
    assert (tiny.metrics, tiny.kimg_per_tick, tiny.total_kimg) == ([], 1, to.TINY_KIMG)
    assert build(tmp_path, cats, cfg="tiny", metrics="fid50k").kwargs.metrics == ["fid50k"]


def test_augmentation_modes(tmp_path, cats):
    fixed = build(tmp_path, cats, aug="fixed", p=0.3, augpipe="bgcfnc").kwargs
    assert fixed.augment_p == 0.3 and fixed.ada_target is None and fixed.augment_kwargs.cutout == 1
    assert build(tmp_path, cats, aug="noaug").kwargs.augment_kwargs is None
    assert build(tmp_path, cats, target=0.7).kwargs.ada_target == 0.7
    diff = build(tmp_path, cats, aug="diffaug", diffaug_policy="cutout, color").kwargs
    assert diff.augment_kwargs == dict(class_name=to.DIFFAUG_CLASS, policy="color,cutout")


def test_diffaug_ops_match_the_module():
    diffaugment = pytest.importorskip("stylegan2_ada_kd.diffaugment")
    assert to.DIFFAUG_OPS == tuple(diffaugment.POLICIES)
    assert to.DIFFAUG_DEFAULT_POLICY == diffaugment.DEFAULT_POLICY


def test_augpipe_unions():
    specs = to.AUGPIPE_SPECS
    assert specs["blit"] == dict(xflip=1, rotate90=1, xint=1) and specs["filter"] == dict(imgfilter=1)
    assert specs["bgc"] == {**specs["blit"], **specs["geom"], **specs["color"]}
    assert specs["bgcfnc"] == {**specs["bgcfn"], "cutout": 1} and len(specs) == 11


# ---- Validation helpers.

def test_metric_names_without_registry(monkeypatch):
    monkeypatch.setattr(to, "_metric_registry", lambda: None)
    assert to.parse_metrics("none") == [] and to.parse_metrics("fid50k_full, kid10k ,pr50k3_full") == [
        "fid50k_full", "kid10k", "pr50k3_full"]
    for good in ("ppl2_wend", "is50k", "fid5k_full"):
        assert to.is_valid_metric(good)
    for bad in ("fid", "fid50k_fuller", "ppl_foo"):
        assert not to.is_valid_metric(bad)
    with pytest.raises(click.BadParameter, match="fid_bogus"):
        to.parse_metrics("fid50k_full,fid_bogus")


def test_metric_names_use_registry(monkeypatch):
    fake = type(sys)("metrics.metric_main")
    fake.is_valid_metric = lambda name: name == "only_this"
    fake.list_valid_metrics = lambda: ["only_this"]
    monkeypatch.setitem(sys.modules, "metrics.metric_main", fake)
    assert to.parse_metrics("only_this") == ["only_this"]
    with pytest.raises(click.BadParameter, match="use a comma list of only_this"):
        to.parse_metrics("fid50k_full")


def test_diffaug_policy_parsing():
    assert to.parse_diffaug_policy("translation,color") == "color,translation"
    for bad in ("colour", "color,color", " , "):
        with pytest.raises(click.BadParameter) as info:
            to.parse_diffaug_policy(bad)
        assert info.value.format_message().startswith("Invalid value for '--diffaug-policy'")


def test_num_gpus_and_launcher():
    assert to.resolve_num_gpus(None, {}) == (1, "single")
    assert to.resolve_num_gpus(3, {}) == (3, "spawn")
    assert to.resolve_num_gpus(None, {"RANK": "1", "WORLD_SIZE": "4"}) == (4, "torchrun")
    assert to.resolve_num_gpus(4, {"RANK": "0", "WORLD_SIZE": "4"}) == (4, "torchrun")
    with pytest.raises(click.BadParameter, match="WORLD_SIZE=4"):
        to.resolve_num_gpus(2, {"RANK": "0", "WORLD_SIZE": "4"})


# ---- Run directories.

def test_run_dir_naming(tmp_path, cats):
    outdir = tmp_path / "runs"
    assert to.next_run_dir(str(outdir), "x") == str(outdir / "00000-x")  # outdir need not exist
    for name in ("00000-a", "00007-b", "00003", "notes"):
        (outdir / name).mkdir(parents=True)
    (outdir / "00099-file.txt").write_text("files do not count")
    assert to.next_run_dir(str(outdir), "cats-auto1") == str(outdir / "00008-cats-auto1")
    to.create_run_dir(str(outdir / "00008-cats-auto1"))
    with pytest.raises(click.ClickException, match="already exists"):
        to.create_run_dir(str(outdir / "00008-cats-auto1"))


@pytest.mark.parametrize("opts, desc", [
    ({}, "cats-auto1"),
    (dict(cfg="paper256", gamma=0.5, kimg=10, batch=4), "cats-paper256-gamma0.5-kimg10-batch4"),
    (dict(subset=3, mirror=True, aug="fixed", p=0.2, augpipe="bgcf", freezed=2, desc="try1"),
     "cats-subset3-mirror-auto1-fixed-p0.2-bgcf-freezed2-try1"),
    (dict(target=0.7, resume="ffhq256"), "cats-auto1-target0.7-resumeffhq256"),
    (dict(aug="diffaug", diffaug_policy="translation"), "cats-auto1-diffaug-translation"),
    (dict(cfg="tiny", cbase=512, cmax=32, glr=0.001, dlr=0.002, map_depth=1, mbstd_group=2),
     "cats-tiny-cbase512-cmax32-glr0.001-dlr0.002-map1-mbstd2"),
])
def test_run_desc(tmp_path, cats, opts, desc):
    assert build(tmp_path, cats, **opts).desc == desc


def test_cond_desc_and_labels(tmp_path):
    data = make_dataset(tmp_path / "digits", count=4, labels=[0, 1, 2, 1], class_names=["a", "b", "c"])
    setup = build(tmp_path, data, cond=True)
    assert setup.desc == "digits-cond-auto1" and setup.kwargs.training_set_kwargs.use_labels is True
    assert setup.dataset.class_names == ["a", "b", "c"]
    assert build(tmp_path, data).kwargs.training_set_kwargs.use_labels is False


def test_options_json_round_trip(tmp_path, cats):
    kwargs = build(tmp_path, cats, cfg="lowshot", resume="ffhq256").kwargs
    kwargs.run_dir = str(tmp_path)
    loaded = to.load_training_options(to.write_training_options(kwargs, str(tmp_path)))
    assert loaded == kwargs and isinstance(loaded.G_kwargs.synthesis_kwargs, dnnlib.EasyDict)
    assert loaded.G_opt_kwargs.betas == [0.0, 0.99] and isinstance(loaded.G_opt_kwargs.betas[0], float)


# ---- --resume.

def _touch(path, data=None):
    """Write a small complete file of the kind the name says (a torch zip or a pickle), or `data`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None and path.name.endswith(".pt"):
        torch.save({}, str(path))
        return
    path.write_bytes(pickle.dumps({}) if data is None else data)


def test_find_latest_resume(tmp_path):
    outdir = tmp_path / "runs"
    assert to.find_latest_resume(str(outdir), "cats") is None
    _touch(outdir / "00000-cats-auto1" / "network-snapshot-000400.pkl")
    _touch(outdir / "00001-cats-auto1" / "network-snapshot-000100.pkl")
    _touch(outdir / "00001-cats-auto1" / "training-state-000100.pt")            # beats the pickle of the same kimg
    _touch(outdir / "00001-cats-auto1" / ".tmp-training-state-000200.pt")       # temporary: ignored
    _touch(outdir / "00001-cats-auto1" / "network-snapshot-000200.pkl.tmp")     # temporary: ignored
    _touch(outdir / "00001-cats-auto1" / "network-snapshot-000300.pkl", b"")    # empty: ignored
    _touch(outdir / "00001-cats-auto1" / "training-state-000250.pt", b"PK\x03\x04cut")  # truncated: ignored
    _touch(outdir / "00002-catsdogs-auto1" / "network-snapshot-000900.pkl")      # another dataset
    _touch(outdir / "00003-cats-auto1" / "log.txt")                               # a run without snapshots
    assert to.find_latest_resume(str(outdir), "cats") == str(outdir / "00001-cats-auto1" / "training-state-000100.pt")
    # training_options.json decides the dataset where present, whatever the dir is called.
    run = outdir / "00004-renamed"
    _touch(run / "network-snapshot-000004.pkl")
    (run / "training_options.json").write_text(json.dumps({"training_set_kwargs": {"path": "/data/cats.zip"}}))
    assert to.find_latest_resume(str(outdir), "cats") == str(run / "network-snapshot-000004.pkl")


def test_resume_options(tmp_path, cats):
    c = build(tmp_path, cats, resume="celebahq256").kwargs
    assert c.resume_pkl == to.RESUME_URLS["celebahq256"] and c.ada_kimg == 100 and c.ema_rampup is None
    assert all(url.startswith("https://nvlabs-fi-cdn.nvidia.com/") for url in to.RESUME_URLS.values())
    pkl = tmp_path / "mine.pkl"
    _touch(pkl)
    setup = build(tmp_path, cats, resume=str(pkl))
    assert setup.kwargs.resume_pkl == str(pkl) and setup.desc.endswith("-resumecustom")
    assert build(tmp_path, cats, resume="https://example.com/a.pkl").kwargs.resume_pkl == "https://example.com/a.pkl"
    _touch(tmp_path / "runs" / "00000-cats-auto1" / "training-state-000012.pt")
    latest = build(tmp_path, cats, resume="latest")
    assert latest.kwargs.resume_pkl.endswith("training-state-000012.pt") and latest.desc.endswith("-resumelatest")
    with pytest.raises(click.BadParameter, match="no such file"):
        build(tmp_path, cats, resume=str(tmp_path / "missing.pkl"))


def test_resume_local_file_named_like_a_short_name_wins(tmp_path, cats, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _touch(tmp_path / "ffhq256")
    setup = build(tmp_path, cats, resume="ffhq256")
    assert setup.kwargs.resume_pkl == str(tmp_path / "ffhq256") and setup.desc.endswith("-resumecustom")
    assert build(tmp_path, cats, resume="ffhq512").kwargs.resume_pkl == to.RESUME_URLS["ffhq512"]


# ---- Plugins.

PLUGIN_SOURCE = '''
import click

CLI_OPTIONS = [click.Option(["--fake-weight"], type=float, default=None, help="fake plugin weight")]


def make_plugin_kwargs(opts, context):
    if opts["fake_weight"] is None:
        return []
    assert context.kwargs.batch_size > 0  # the tree so far is visible
    return [dict(class_name="fake_plugin.FakeLoss", weight=opts["fake_weight"], classes=context.class_names,
                 resolution=context.resolution, num_images=context.num_images)]


def run_desc(opts):
    return "" if opts["fake_weight"] is None else f"fake{opts['fake_weight']:g}"
'''


@pytest.fixture
def fake_plugin(tmp_path, monkeypatch):
    """A plugin module `fake_plugin` importable from a temp dir, registered next to missing ones."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "fake_plugin.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "plugins" / "broken_plugin.py").write_text("import not_a_real_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.setattr(to, "PLUGIN_MODULES", ["no_such_plugin_pkg.kd", "fake_plugin", "stylegan2_ada_kd.nothing"])
    for name in ("fake_plugin", "broken_plugin"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def test_plugin_registry(fake_plugin, cats):
    modules = to.load_plugin_modules()
    assert [m.__name__ for m in modules] == ["fake_plugin"]  # absent modules are skipped silently
    assert [o.name for o in to.plugin_cli_options(modules)] == ["fake_weight"]
    setup = build(fake_plugin, cats, plugins=modules, fake_weight=0.5)
    assert setup.kwargs.loss_kwargs.plugins == [dict(class_name="fake_plugin.FakeLoss", weight=0.5, classes=None,
                                                     resolution=32, num_images=6)]
    assert setup.desc == "cats-auto1-fake0.5" and "kwargs" not in setup.dataset
    assert build(fake_plugin, cats, plugins=modules).kwargs.loss_kwargs.plugins == []


def test_broken_plugin_surfaces(fake_plugin):
    with pytest.raises(ModuleNotFoundError, match="not_a_real_module_xyz"):
        to.load_plugin_modules(["broken_plugin"])


def test_plugin_kwargs_need_class_name(cats, tmp_path):
    module = type(sys)("bad_plugin")
    module.make_plugin_kwargs = lambda opts, context: [dict(weight=1)]
    with pytest.raises(click.ClickException, match="bad_plugin.*class_name"):
        build(tmp_path, cats, plugins=[module])


def test_resume_rejects_damaged_files(tmp_path, cats):
    for name, data in [("cut.pt", b"PK\x03\x04truncated"), ("text.pkl", b"not a pickle")]:
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(click.BadParameter, match=f"{name}: not a complete"):
            build(tmp_path, cats, resume=str(bad))


def test_metric_data_names_the_reference_set(tmp_path, cats):
    test_split = make_dataset(tmp_path / "test_split", count=3)
    kwargs = build(tmp_path, cats, metric_data=test_split).kwargs
    ref = kwargs.metric_dataset_kwargs
    assert (ref.path, ref.resolution, ref.xflip, ref.max_size, ref.use_labels) == (test_split, 32, False, None, False)
    assert build(tmp_path, cats).kwargs.metric_dataset_kwargs is None
    small = make_dataset(tmp_path / "small", count=2, resolution=16)
    with pytest.raises(click.BadParameter, match=r"16x16 but --data is 32x32"):
        build(tmp_path, cats, metric_data=small)
    with pytest.raises(click.BadParameter, match="missing.zip: no such file or folder; check --metric-data") as info:
        build(tmp_path, cats, metric_data=str(tmp_path / "missing.zip"))
    assert info.value.param_hint == "'--metric-data'"
