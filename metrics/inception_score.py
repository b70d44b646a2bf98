"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

Class probabilities come from the TF-ported Inception's 1008-way softmax (called with
`no_output_bias=True`, as StyleGAN2-ADA does). IS runs on fakes only.
"""

import numpy as np
import scipy.special

from metrics import metric_utils

INCEPTION_PROBS = dict(no_output_bias=True)


def inception_score(probs, num_splits=10):
    """(mean, std) of IS over `num_splits` consecutive splits of class probabilities `[N, K]`.

    Within a split, p(y) is the split's mean prediction; xlogy makes 0 * log 0 = 0, so one-hot
    predictions are fine.
    """
    probs = np.asarray(probs, np.float64)
    if len(probs) < num_splits:
        raise metric_utils.MetricError(f"IS with {num_splits} splits needs at least {num_splits} images, "
                                       f"got {len(probs)}")
    scores = []
    for split in range(num_splits):
        part = probs[split * len(probs) // num_splits:(split + 1) * len(probs) // num_splits]
        marginal = part.mean(axis=0, keepdims=True)
        kl = (scipy.special.xlogy(part, part) - scipy.special.xlogy(part, marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def compute_is(opts, num_gen, num_splits=10):
    """(IS mean, IS std) of `num_gen` fakes."""
    detector = opts.detector("inception")
    probs = metric_utils.compute_feature_stats_for_generator(
        opts, detector, INCEPTION_PROBS, num_gen=num_gen, capture_all=True, desc="is fakes").get_all()
    return inception_score(probs, num_splits)
