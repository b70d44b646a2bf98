"""Frechet Inception Distance (Heusel et al. 2017): the Frechet distance of two Gaussians fitted to Inception features.

FID = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)), with 2048-d pool features of the
TF-ported Inception and biased (1/N) covariances, as StyleGAN2-ADA computes them.
"""

import numpy as np
import scipy.linalg

from metrics import metric_utils

INCEPTION_FEATURES = dict(return_features=True)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2); mu `[D]`, sigma `[D, D]` (symmetric PSD).

    tr((S1 S2)^(1/2)) equals tr((S1^(1/2) S2 S1^(1/2))^(1/2)), and the inner matrix is symmetric
    PSD, so two symmetric eigendecompositions replace a general matrix square root: faster, real by
    construction, and stable for the rank-deficient covariances of small sample counts.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    eigval1, eigvec1 = scipy.linalg.eigh(sigma1)
    root1 = (eigvec1 * np.sqrt(np.clip(eigval1, 0, None))) @ eigvec1.T
    inner = root1 @ sigma2 @ root1
    inner = (inner + inner.T) / 2  # remove rounding asymmetry before the symmetric solver
    trace_sqrt = np.sqrt(np.clip(scipy.linalg.eigvalsh(inner), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def compute_fid(opts, max_real, num_gen):
    """FID between the reference set (first `max_real` items; None = all) and `num_gen` fakes."""
    detector = opts.detector("inception")
    mu_real, sigma_real = metric_utils.compute_feature_stats_for_dataset(
        opts, detector, INCEPTION_FEATURES, stats_name="fid", capture_mean_cov=True, max_items=max_real).get_mean_cov()
    mu_gen, sigma_gen = metric_utils.compute_feature_stats_for_generator(
        opts, detector, INCEPTION_FEATURES, num_gen=num_gen, capture_mean_cov=True, desc="fid fakes").get_mean_cov()
    return frechet_distance(mu_real, sigma_real, mu_gen, sigma_gen)
