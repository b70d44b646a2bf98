"""Metrics end to end with tiny TorchScript detectors: detector loading, stats cache, calc_metric, 2 processes."""

import hashlib
import json
import os

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch

import dnnlib
from metrics import detectors, metric_main, metric_utils
from metrics.perceptual_path_length import compute_ppl, slerp
from tests.metrics.toy_detectors import (BrightnessClassDetector, LevelG, LinearG, PlainStatsNet, ReplayG,
                                         ToyDetector, save_detector)
from tests.multiprocess import free_port, gloo_group, run_workers

NO_WORKERS = dict(data_loader_kwargs=dict(num_workers=0), device="cpu")


def make_images(path, num, res=8, seed=0, channels=3, num_classes=None):
    """`num` random PNGs plus dataset.json (labels idx % num_classes, or null); returns (path, uint8 [N, C, H, W])."""
    os.makedirs(path, exist_ok=True)
    rnd = np.random.RandomState(seed)
    images = (rnd.rand(num, res, res, channels) * 256).astype(np.uint8)
    for idx, img in enumerate(images):
        PIL.Image.fromarray(img[:, :, 0] if channels == 1 else img).save(os.path.join(path, f"img{idx:04d}.png"))
    with open(os.path.join(path, "dataset.json"), "w") as f:
        labels = [[f"img{idx:04d}.png", idx % num_classes] for idx in range(num)] if num_classes else None
        json.dump({"labels": labels}, f)
    return str(path), images.transpose(0, 3, 1, 2)


def dataset_kwargs(path, **kwargs):
    return dnnlib.EasyDict(dict(class_name="training.dataset.ImageFolderDataset", path=path, use_labels=False,
                                xflip=False), **kwargs)


@pytest.fixture(scope="module")
def data1k(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data1k"), 1000)


@pytest.fixture(scope="module")
def toy_detector(tmp_path_factory):
    return save_detector(ToyDetector(), tmp_path_factory.mktemp("det") / "toy.pt")


def _features(detector_file, images):
    """Toy detector features computed here, outside the metrics code: float64 [N, D]."""
    module = torch.jit.load(detector_file)
    with torch.no_grad():
        return module(torch.as_tensor(images), return_features=True).double().numpy()


# ---- Detectors.

def test_official_style_detector_is_loaded_once_with_its_file_hash(toy_detector):
    first = detectors.get_detector("inception", toy_detector, "cpu")
    assert detectors.get_detector("inception", toy_detector, "cpu") is first
    with open(toy_detector, "rb") as f:
        assert first.identity == hashlib.blake2b(f.read(), digest_size=16).hexdigest()
    assert not isinstance(first, detectors.PlainInceptionAdapter)


def test_plain_inception_gets_the_official_api(tmp_path):
    detector = detectors.get_detector("inception", save_detector(PlainStatsNet(), tmp_path / "plain.pt"), "cpu")
    assert isinstance(detector, detectors.PlainInceptionAdapter)
    img = torch.full([2, 3, 32, 32], 128, dtype=torch.uint8)
    img[1] = 255
    out = detector(img, return_features=True)
    # uint8 v -> v / 128 - 1, resized to 299x299 (the plain net reports its input's mean, min, max, H, W).
    assert torch.allclose(out[0], torch.tensor([0.0, 0.0, 0.0, 299, 299]), atol=1e-6)
    assert torch.allclose(out[1, :3], torch.tensor([127 / 128] * 3), atol=1e-6)
    with pytest.raises(detectors.DetectorError, match="IS needs the official"):
        detector(img, no_output_bias=True)


def test_unusable_detector_files_give_one_line_errors(tmp_path, monkeypatch):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript file")
    with pytest.raises(detectors.DetectorError, match="not a TorchScript detector") as info:
        detectors.get_detector("inception", str(bad), "cpu")
    assert "\n" not in str(info.value)
    monkeypatch.setenv("DNNLIB_OFFLINE", "1")
    monkeypatch.delenv("SG2KD_VGG16_PATH", raising=False)
    with pytest.raises(detectors.DetectorError, match=r"\$SG2KD_VGG16_PATH") as info:
        detectors.get_detector("vgg16", None, "cpu")
    assert "\n" not in str(info.value)


# ---- calc_metric end to end.

def test_fid_kid_pr_of_a_generator_that_replays_the_reals(data1k, toy_detector):
    path, images = data1k
    kwargs = dict(G=ReplayG(images), dataset_kwargs=dataset_kwargs(path), detector_path=toy_detector,
                  vgg16_path=toy_detector, **NO_WORKERS)
    fid = metric_main.calc_metric("fid1k_full", **kwargs)
    assert fid.metric == "fid1k_full" and fid.num_gpus == 1 and set(fid) >= {"total_time", "total_time_str"}
    assert abs(fid.results.fid1k_full) < 1e-6
    kid = metric_main.calc_metric("kid1k_full", **kwargs).results.kid1k_full
    # Exact copies: only the unbiased estimator's subset noise remains, far below the data's kernel scale.
    features = _features(toy_detector, images)
    scale = np.mean((features @ features.T / features.shape[1] + 1) ** 3)
    assert abs(kid) < 1e-3 * scale
    pr = metric_main.calc_metric("pr1k3_full", **kwargs).results
    assert (pr.pr1k3_full_precision, pr.pr1k3_full_recall) == (1.0, 1.0)


def test_fid_equals_scipy_on_independently_computed_features(data1k, toy_detector):
    path, images = data1k
    G = LinearG(res=8)
    rng_before = torch.get_rng_state()
    result = metric_main.calc_metric("fid1k_full", G=G, dataset_kwargs=dataset_kwargs(path),
                                     detector_path=toy_detector, **NO_WORKERS).results.fid1k_full
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's (training's) RNG is left alone
    # Fakes rebuilt here: batch b's latents come from its own seeded generator, 64 images a batch.
    z = torch.cat([torch.randn([min(64, 1000 - start), G.z_dim], generator=metric_utils.batch_generator(
        metric_utils.MetricOptions(seed=0, device="cpu"), idx)) for idx, start in enumerate(range(0, 1000, 64))])
    with torch.no_grad():
        fakes = (G(z, None) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    real, gen = _features(toy_detector, images), _features(toy_detector, fakes)
    mu1, mu2 = real.mean(0), gen.mean(0)
    s1, s2 = np.cov(real, rowvar=False, bias=True), np.cov(gen, rowvar=False, bias=True)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert expected > 1
    assert result == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("num_levels", [1, 4])
def test_is_counts_equally_used_classes(tmp_path, num_levels):
    detector = save_detector(BrightnessClassDetector(num_classes=4), tmp_path / "classes.pt")
    result = metric_main.calc_metric("is1k", G=LevelG(num_levels=num_levels), detector_path=detector, **NO_WORKERS)
    assert result.results.is1k_mean == pytest.approx(num_levels)
    assert result.results.is1k_std == pytest.approx(0, abs=1e-9)


def test_legacy_protocol_uses_n_reals_and_full_uses_all(tmp_path, toy_detector, monkeypatch):
    path, _ = make_images(tmp_path / "d", 30)
    seen = []
    real_fn = metric_utils.compute_feature_stats_for_dataset
    def recording(opts, *args, **kwargs):
        seen.append((len(opts.dataset()), kwargs["max_items"]))
        return real_fn(opts, *args, **kwargs)

    monkeypatch.setattr(metric_utils, "compute_feature_stats_for_dataset", recording)
    kwargs = dict(G=LinearG(res=8), detector_path=toy_detector, **NO_WORKERS)
    metric_main.calc_metric("fid1k", dataset_kwargs=dataset_kwargs(path, max_size=10), **kwargs)
    metric_main.calc_metric("fid1k_full", dataset_kwargs=dataset_kwargs(path, max_size=10), **kwargs)
    assert seen == [(10, 1000), (30, None)]  # as trained (10-image subset) vs every image


class RecordingLinearG(LinearG):
    def forward(self, z, c, **kwargs):
        self.seen_labels = getattr(self, "seen_labels", []) + [c.clone()]
        return super().forward(z, c)


def test_conditional_g_gets_labels_drawn_from_the_dataset(tmp_path, toy_detector):
    path, _ = make_images(tmp_path / "d", 12, num_classes=3)
    opts = metric_utils.MetricOptions(G=RecordingLinearG(c_dim=3, res=8), device="cpu", batch_size=8,
                                      dataset_kwargs=dataset_kwargs(path, use_labels=True))
    images = metric_utils.generate_images(opts, 0, 40, batch_index=0)
    labels = torch.cat(opts.generator().seen_labels)
    assert images.shape == (40, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.shape == (40, 3) and torch.equal(labels.sum(1), torch.ones(40))  # one-hot rows
    assert len(set(labels.argmax(1).tolist())) == 3  # drawn at random from all classes, not just the first
    unlabelled, _ = make_images(tmp_path / "u", 4)
    with pytest.raises(metric_utils.MetricError, match="label dimensions"):
        metric_main.calc_metric("fid1k", G=LinearG(c_dim=3, res=8), dataset_kwargs=dataset_kwargs(unlabelled),
                                detector_path=toy_detector, **NO_WORKERS)


def test_grayscale_images_reach_the_detector_as_rgb(tmp_path, toy_detector):
    path, images = make_images(tmp_path / "gray", 5, channels=1)
    opts = metric_utils.MetricOptions(dataset_kwargs=dataset_kwargs(path), inception_path=toy_detector, cache=False,
                                      **NO_WORKERS)
    got = metric_utils.compute_feature_stats_for_dataset(opts, opts.detector("inception"), dict(
        return_features=True), "fid", capture_all=True).get_all()
    assert np.allclose(got, _features(toy_detector, np.repeat(images, 3, axis=1)), atol=1e-5)


def test_reference_set_must_match_g(tmp_path, toy_detector):
    path, _ = make_images(tmp_path / "d16", 4, res=16)
    with pytest.raises(metric_utils.MetricError, match="--metric-data .* 16x16 but the network makes 8x8") as info:
        metric_main.calc_metric("fid1k", G=LinearG(res=8), metric_data=path, detector_path=toy_detector,
                                **NO_WORKERS)
    assert "\n" not in str(info.value)
    with pytest.raises(metric_utils.MetricError, match="unknown metric"):
        metric_main.calc_metric("fid", G=LinearG(res=8))


def test_ppl_is_zero_for_a_constant_generator_and_positive_otherwise(toy_detector):
    opts = metric_utils.MetricOptions(G=LinearG(res=8, constant=True), vgg16_path=toy_detector, device="cpu")
    assert compute_ppl(opts, num_samples=20, space="w", sampling="end") == 0
    for space, sampling in [("z", "full"), ("w", "end")]:
        opts = metric_utils.MetricOptions(G=LinearG(res=8), vgg16_path=toy_detector, device="cpu")
        value = compute_ppl(opts, num_samples=20, space=space, sampling=sampling, crop=True)
        assert np.isfinite(value) and value > 0


def test_ppl_draws_fresh_noise_buffers_per_batch_on_a_private_copy(toy_detector, monkeypatch, pure_pytorch_ops):
    from training.networks import Generator
    torch.manual_seed(0)
    G = Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=3,
                  mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=64, channel_max=4))
    original = {name: buf.clone() for name, buf in G.named_buffers() if name.endswith(".noise_const")}
    seen = []
    synthesis = type(G.synthesis).forward

    def spy(self, ws, **kwargs):
        assert kwargs["noise_mode"] == "const"
        seen.append({"synthesis." + name: buf.clone() for name, buf in self.named_buffers()
                     if name.endswith(".noise_const")})
        return synthesis(self, ws, **kwargs)

    monkeypatch.setattr(type(G.synthesis), "forward", spy)
    opts = lambda: metric_utils.MetricOptions(G=G, vgg16_path=toy_detector, device="cpu")  # noqa: E731
    first = compute_ppl(opts(), num_samples=6, space="w", sampling="full", batch_size=2)
    assert len(seen) == 3 and len(original) > 0
    for name, buf in original.items():
        assert torch.equal(G.state_dict()[name], buf)  # the caller's G keeps its buffers
        draws = [batch[name] for batch in seen]
        assert not any(torch.equal(draw, buf) for draw in draws)
        assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert compute_ppl(opts(), num_samples=6, space="w", sampling="full", batch_size=2) == first  # seeded


def test_slerp_endpoints_and_unit_norm():
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    unit = lambda v: v / v.norm(dim=-1, keepdim=True)  # noqa: E731
    assert torch.allclose(slerp(a, b, torch.zeros(5, 1, dtype=torch.float64)), unit(a))
    assert torch.allclose(slerp(a, b, torch.ones(5, 1, dtype=torch.float64)), unit(b))
    half = slerp(a, b, torch.full([5, 1], 0.5, dtype=torch.float64))
    assert torch.allclose(half, unit(unit(a) + unit(b)))


# ---- Real-image statistics cache.

def test_stats_cache_is_reused_and_invalidated_by_a_changed_image(tmp_path, toy_detector, monkeypatch):
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "cache"))
    path, images = make_images(tmp_path / "d", 20)
    calls = []
    real_run = metric_utils.run_detector
    monkeypatch.setattr(metric_utils, "run_detector", lambda *a, **k: calls.append(1) or real_run(*a, **k))

    def stats():
        opts = metric_utils.MetricOptions(dataset_kwargs=dataset_kwargs(path), batch_size=8,
                                          inception_path=toy_detector, **NO_WORKERS)
        return metric_utils.compute_feature_stats_for_dataset(opts, opts.detector("inception"), dict(
            return_features=True), "fid", capture_all=True, capture_mean_cov=True).get_all()

    first = stats()
    assert len(calls) == 3 and len(os.listdir(tmp_path / "cache" / "gan-metrics")) == 1
    assert np.allclose(first, _features(toy_detector, images), atol=1e-5)
    assert np.array_equal(stats(), first) and len(calls) == 3  # served from the cache
    changed = images[7].transpose(1, 2, 0).copy()
    changed[0, 0, 0] ^= 1
    PIL.Image.fromarray(changed).save(os.path.join(path, "img0007.png"))
    second = stats()
    assert len(calls) == 6 and len(os.listdir(tmp_path / "cache" / "gan-metrics")) == 2
    assert not np.array_equal(second[7], first[7]) and np.array_equal(second[:7], first[:7])


def test_unreadable_stats_cache_is_recomputed_and_replaced(tmp_path, toy_detector, monkeypatch):
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "cache"))
    path, images = make_images(tmp_path / "d", 6)
    opts = lambda: metric_utils.MetricOptions(dataset_kwargs=dataset_kwargs(path), batch_size=8,  # noqa: E731
                                              inception_path=toy_detector, **NO_WORKERS)

    def stats():
        return metric_utils.compute_feature_stats_for_dataset(opts(), opts().detector("inception"), dict(
            return_features=True), "fid", capture_all=True).get_all()

    first = stats()
    cache_dir = tmp_path / "cache" / "gan-metrics"
    (cache_file,) = os.listdir(cache_dir)
    for garbage in (b"", b"PK\x03\x04 truncated", (cache_dir / cache_file).read_bytes()[:100]):
        (cache_dir / cache_file).write_bytes(garbage)
        with pytest.warns(RuntimeWarning, match=f"unreadable metric cache file .*{cache_file}.*recomputing"):
            again = stats()
        assert np.array_equal(again, first)
        assert np.array_equal(metric_utils.FeatureStats.load(cache_dir / cache_file).get_all(), first)


def test_content_hash_ignores_location_but_not_bytes(tmp_path):
    path_a, _ = make_images(tmp_path / "a", 3)
    path_b, _ = make_images(tmp_path / "b", 3)
    assert metric_utils.dataset_content_hash(path_a) == metric_utils.dataset_content_hash(path_b)
    with open(os.path.join(path_b, "dataset.json"), "a") as f:
        f.write(" ")
    assert metric_utils.dataset_content_hash(path_a) != metric_utils.dataset_content_hash(path_b)


# ---- Two processes.

def _gather_worker(rank, port, out_dir, detector_file, data_path):
    torch.set_num_threads(1)
    with gloo_group(rank, port):
        opts = metric_utils.MetricOptions(G=LinearG(res=8), dataset_kwargs=dataset_kwargs(data_path), num_gpus=2,
                                          rank=rank, batch_size=8, cache=False, inception_path=detector_file,
                                          **NO_WORKERS)
        detector = opts.detector("inception")
        gen = metric_utils.compute_feature_stats_for_generator(opts, detector, dict(return_features=True), 21,
                                                               capture_all=True).get_all()
        real = metric_utils.compute_feature_stats_for_dataset(opts, detector, dict(return_features=True), "fid",
                                                              capture_mean_cov=True, capture_all=True)
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), gen=gen, real=real.get_all(), mean=real.mean)


def test_two_gloo_processes_gather_the_single_process_result(tmp_path, toy_detector):
    path, _ = make_images(tmp_path / "d", 13)
    run_workers(_gather_worker, nprocs=2, args=(free_port(), str(tmp_path), toy_detector, path), timeout=120)
    opts = metric_utils.MetricOptions(G=LinearG(res=8), dataset_kwargs=dataset_kwargs(path), batch_size=8,
                                      cache=False, inception_path=toy_detector, **NO_WORKERS)
    detector = opts.detector("inception")
    gen = metric_utils.compute_feature_stats_for_generator(opts, detector, dict(return_features=True), 21,
                                                           capture_all=True).get_all()
    real = metric_utils.compute_feature_stats_for_dataset(opts, detector, dict(return_features=True), "fid",
                                                          capture_all=True).get_all()
    for rank in (0, 1):
        with np.load(tmp_path / f"rank{rank}.npz") as out:
            assert out["gen"].shape == (21, 16) and np.allclose(out["gen"], gen, atol=1e-6)
            assert np.allclose(out["real"], real, atol=1e-6)
            assert np.allclose(out["mean"], real.astype(np.float64).mean(0), atol=1e-6)


def _cache_worker(rank, port, out_dir, detector_file, data_path):
    torch.set_num_threads(1)
    os.environ["DNNLIB_CACHE_DIR"] = os.path.join(out_dir, "cache")
    hashed = []
    real_hash = metric_utils.dataset_content_hash
    metric_utils.dataset_content_hash = lambda path: hashed.append(path) or real_hash(path)
    with gloo_group(rank, port):
        opts = metric_utils.MetricOptions(dataset_kwargs=dataset_kwargs(data_path), num_gpus=2, rank=rank,
                                          batch_size=4, inception_path=detector_file, **NO_WORKERS)
        runs = [metric_utils.compute_feature_stats_for_dataset(opts, opts.detector("inception"), dict(
            return_features=True), "fid", capture_all=True).get_all() for _ in range(2)]
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), first=runs[0], second=runs[1], hashed=len(hashed))


def test_two_processes_share_the_stats_cache_and_only_rank0_hashes_the_dataset(tmp_path, toy_detector):
    path, images = make_images(tmp_path / "d", 9)
    run_workers(_cache_worker, nprocs=2, args=(free_port(), str(tmp_path), toy_detector, path), timeout=120)
    expected = _features(toy_detector, images)
    outs = [np.load(tmp_path / f"rank{rank}.npz") for rank in (0, 1)]
    assert int(outs[0]["hashed"]) == 2 and int(outs[1]["hashed"]) == 0
    for out in outs:
        assert np.allclose(out["first"], expected, atol=1e-5) and np.array_equal(out["second"], out["first"])
    assert len(os.listdir(tmp_path / "cache" / "gan-metrics")) == 1


def test_content_hash_follows_symlinked_image_folders_and_ignores_non_images(tmp_path):
    """Two datasets whose images sit behind symlinked folders hash apart; a stray non-image file changes nothing."""
    src_a, _ = make_images(tmp_path / "src_a", 3)
    src_b, _ = make_images(tmp_path / "src_b", 3, seed=5)
    hashes = []
    for name, src in (("a", src_a), ("b", src_b)):
        root = tmp_path / f"link_{name}"
        root.mkdir()
        os.symlink(src, root / "images")
        hashes.append(metric_utils.dataset_content_hash(str(root)))
    assert hashes[0] != hashes[1]
    before = metric_utils.dataset_content_hash(src_a)
    (tmp_path / "src_a" / "notes.txt").write_text("not an image")
    assert metric_utils.dataset_content_hash(src_a) == before
