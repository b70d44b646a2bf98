"""Metric formulas on known features: FID, KID, IS, precision/recall, the TF-style resize, the registry."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from metrics import metric_main
from metrics.detectors import tf_style_resize
from metrics.frechet_inception_distance import frechet_distance
from metrics.inception_score import inception_score
from metrics.kernel_inception_distance import kernel_distance
from metrics.precision_recall import knn_radii, precision_recall


def _gaussian(n, dim, shift=0.0, seed=0):
    """n samples of one fixed correlated Gaussian in `dim` dims (the seed only changes the samples)."""
    mixing = np.random.RandomState(1234).randn(dim, dim) / np.sqrt(dim)
    return np.random.RandomState(seed).randn(n, dim) @ mixing + shift


def _mean_cov(x):
    return x.mean(axis=0), np.cov(x, rowvar=False, bias=True)


# ---- FID.

def test_fid_of_a_set_with_itself_is_zero():
    mu, sigma = _mean_cov(_gaussian(500, 16))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_fid_matches_scipy_sqrtm_on_gaussian_features():
    mu1, sigma1 = _mean_cov(_gaussian(400, 12, seed=1))
    mu2, sigma2 = _mean_cov(_gaussian(300, 12, shift=0.3, seed=2) * 1.5)
    root = scipy.linalg.sqrtm(sigma1 @ sigma2).real  # the textbook formula, independent of ours
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * root)
    assert expected > 1  # a real difference, not a degenerate case
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_fid_of_two_known_gaussians():
    # N(0, I) vs N(m, 4I) in D dims: |m|^2 + D(1 + 4 - 2 * 2) = |m|^2 + D.
    dim, m = 6, np.full(6, 0.5)
    assert frechet_distance(np.zeros(dim), np.eye(dim), m, 4 * np.eye(dim)) == pytest.approx(dim * 0.25 + dim)


def test_fid_is_real_for_rank_deficient_covariances():
    mu1, sigma1 = _mean_cov(_gaussian(5, 32, seed=3))  # 5 samples in 32 dims: singular covariances
    mu2, sigma2 = _mean_cov(_gaussian(5, 32, seed=4))
    value = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert np.isfinite(value) and value > 0


# ---- KID.

def _kid_reference(real, gen, m):
    """Unbiased MMD^2 of one subset pair with explicit loops over i != j."""
    kernel = lambda a, b: (a @ b / real.shape[1] + 1) ** 3  # noqa: E731
    xx = sum(kernel(gen[i], gen[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(kernel(real[i], real[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(kernel(gen[i], real[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_explicit_unbiased_mmd_when_the_subset_is_everything():
    real, gen = _gaussian(12, 5, seed=5), _gaussian(12, 5, shift=1.0, seed=6)
    # One subset of all 12 rows: a permutation of each set, which the statistic does not see.
    expected = _kid_reference(real, gen, 12)
    assert kernel_distance(real, gen, num_subsets=1, max_subset_size=1000) == pytest.approx(expected, rel=1e-5)


def test_kid_near_zero_for_one_distribution_and_positive_for_shifted():
    real, same = _gaussian(600, 16, seed=7), _gaussian(600, 16, seed=8)
    shifted = _gaussian(600, 16, shift=0.5, seed=9)
    kid_same = kernel_distance(real, same, num_subsets=20, max_subset_size=300)
    kid_shift = kernel_distance(real, shifted, num_subsets=20, max_subset_size=300)
    assert kid_shift > 0.05
    assert abs(kid_same) < 0.05 * kid_shift


def test_kid_subset_size_is_min_of_1000_and_set_sizes():
    real, gen = _gaussian(7, 4, seed=10), _gaussian(9, 4, shift=1, seed=11)
    # With m = 7 = len(real) every subset holds all reals; with one subset the result is the
    # explicit estimator on the chosen 7 fakes, which must be a subset of the 9.
    value = kernel_distance(real, gen, num_subsets=1, max_subset_size=1000, seed=3)
    picks = np.random.RandomState(3).choice(9, 7, replace=False)
    assert value == pytest.approx(_kid_reference(real, gen[picks], 7), rel=1e-5)


# ---- IS.

def test_is_is_one_when_every_image_gets_the_same_class():
    probs = np.zeros([100, 7])
    probs[:, 2] = 1
    assert inception_score(probs, num_splits=10) == (pytest.approx(1.0), pytest.approx(0.0))


@pytest.mark.parametrize("num_classes", [2, 5, 10])
def test_is_is_k_for_k_equally_used_confident_classes(num_classes):
    probs = np.eye(num_classes)[np.arange(num_classes * 20) % num_classes]
    mean, std = inception_score(probs, num_splits=10)
    assert mean == pytest.approx(num_classes) and std == pytest.approx(0, abs=1e-9)


def test_is_matches_explicit_kl_for_soft_predictions():
    rnd = np.random.RandomState(12)
    logits = rnd.randn(40, 4)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for part in np.split(probs, 4):
        marginal = part.mean(0)
        scores.append(np.exp(np.mean([sum(p[k] * np.log(p[k] / marginal[k]) for k in range(4)) for p in part])))
    assert inception_score(probs, num_splits=4) == (pytest.approx(np.mean(scores)), pytest.approx(np.std(scores)))


# ---- Precision and recall.

def test_pr_is_one_one_for_identical_sets():
    x = torch.from_numpy(_gaussian(80, 8, seed=13)).float()
    assert precision_recall(x, x.clone(), nhood_size=3, row_batch_size=16, col_batch_size=32) == (1.0, 1.0)


def test_knn_radii_match_sorted_distances():
    x = torch.from_numpy(_gaussian(30, 3, seed=14)).double()
    dist = torch.cdist(x, x)
    expected = dist.sort(dim=1).values[:, 3]  # index 0 is the point itself
    assert torch.allclose(knn_radii(x, 3, row_batch_size=7, col_batch_size=11), expected)


def test_pr_of_disjoint_sets_is_zero_and_of_a_covered_subset_is_asymmetric():
    real = torch.from_numpy(_gaussian(60, 4, seed=15)).float()
    far = real + 1000
    assert precision_recall(real, far) == (0.0, 0.0)
    # Fakes = a tight cluster around 8 reals: precise (inside real balls) but low recall.
    gen = real[:8].repeat(5, 1) + 1e-4 * torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    precision, recall = precision_recall(real, gen)
    assert precision == 1.0 and recall < 0.5


# ---- TF-style resize.

def test_tf_style_resize_samples_at_i_times_scale():
    x = torch.arange(4 * 5, dtype=torch.float64).view(1, 1, 4, 5) ** 1.5
    out = tf_style_resize(x, 6, 3)
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for i in range(6):
        for j in range(3):
            y, xx = i * 4 / 6, j * 5 / 3
            y0, x0 = int(np.floor(y)), int(np.floor(xx))
            y1, x1 = min(y0 + 1, 3), min(x0 + 1, 4)
            fy, fx = y - y0, xx - x0
            top = x[0, 0, y0, x0] * (1 - fx) + x[0, 0, y0, x1] * fx
            bottom = x[0, 0, y1, x0] * (1 - fx) + x[0, 0, y1, x1] * fx
            expected[i, j] = top * (1 - fy) + bottom * fy
    assert torch.allclose(out[0, 0], expected, atol=1e-9)


# ---- Registry.

def test_registry_has_the_reference_names_and_paper_protocols():
    names = set(metric_main.list_valid_metrics())
    assert {"fid50k_full", "kid50k_full", "pr50k3_full", "is50k", "ppl2_wend", "fid50k", "kid50k", "pr50k3",
            "ppl_zfull", "ppl_wfull", "ppl_zend", "ppl_wend"} <= names
    for protocol in metric_main.PAPER_PROTOCOLS.values():
        assert all(metric_main.is_valid_metric(name) for name in protocol.metrics)


@pytest.mark.parametrize("name, family, kwargs", [
    ("fid5k_full", "fid", dict(max_real=None, num_gen=5000, full=True)),
    ("fid10k", "fid", dict(max_real=10000, num_gen=10000, full=False)),
    ("kid7k_full", "kid", dict(max_real=1000000, num_gen=7000, full=True)),
    ("pr2k3", "pr", dict(max_real=2000, num_gen=2000, full=False)),
    ("pr2k3_full", "pr", dict(max_real=200000, num_gen=2000, full=True)),
    ("is10k", "is", dict(num_gen=10000)),
    ("ppl2_wend", "ppl", dict(num_samples=50000, space="w", sampling="end", crop=False)),
    ("ppl_zfull_3k", "ppl", dict(num_samples=3000, space="z", sampling="full", crop=True)),
])
def test_any_count_names_parse(name, family, kwargs):
    assert metric_main.is_valid_metric(name)
    assert metric_main.parse_metric_name(name) == (family, kwargs)


@pytest.mark.parametrize("name", ["fid0k", "fid50", "is10k_full", "pr50k_full", "ppl_xend", "ppl2_wend_0k",
                                  "FID50k", "", "kid-1k"])
def test_bad_names_are_rejected(name):
    assert not metric_main.is_valid_metric(name)


def test_report_metric_appends_json_lines(tmp_path):
    result = dict(results={"fid50k_full": 12.5}, metric="fid50k_full", total_time=3.2, total_time_str="3s",
                  num_gpus=1)
    pkl = tmp_path / "network-snapshot-000040.pkl"
    line = metric_main.report_metric(result, run_dir=str(tmp_path), snapshot_pkl=str(pkl))
    metric_main.report_metric(dict(result, results={"fid50k_full": 11.0}), run_dir=str(tmp_path),
                              snapshot_pkl=str(pkl))
    lines = (tmp_path / "metric-fid50k_full.jsonl").read_text().splitlines()
    assert lines[0] == line and len(lines) == 2
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert set(first) == {"results", "metric", "total_time", "total_time_str", "num_gpus", "snapshot_pkl",
                          "timestamp"}
    assert first["snapshot_pkl"] == "network-snapshot-000040.pkl" and first["results"] == {"fid50k_full": 12.5}
    assert second["results"] == {"fid50k_full": 11.0} and second["timestamp"] >= first["timestamp"]


def test_lpips_input_downsamples_by_the_full_resolution_factor():
    from metrics.perceptual_path_length import _to_lpips_input

    for res, crop, want in ((1024, True, 128), (1024, False, 256), (512, True, 128), (256, True, 128), (64, False, 64)):
        out = _to_lpips_input(torch.zeros([2, 3, res, res]), crop)
        assert tuple(out.shape) == (2, 3, want, want), (res, crop)
    img = torch.arange(16.0).reshape(1, 1, 4, 4) / 8 - 1  # grayscale -> 3 channels, [-1, 1] -> [0, 255]
    assert torch.allclose(_to_lpips_input(img, False)[0, 2], (img[0, 0] + 1) * 127.5)
