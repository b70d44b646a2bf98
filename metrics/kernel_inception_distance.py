"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 of Inception features, cubic polynomial kernel.

k(x, y) = (x . y / D + 1)^3. The estimate is averaged over `num_subsets` random subsets of
m = min(max_subset_size, N_real, N_gen) rows drawn from each set without replacement.
"""

import numpy as np
import torch

from metrics import metric_utils

INCEPTION_FEATURES = dict(return_features=True)


def _cubic_kernel(a, b, dim):
    """(a . b / dim + 1)^3 for all row pairs: float32 product, float64 kernel `[len(a), len(b)]`."""
    return torch.mm(a, b.T).to(torch.float64).div_(dim).add_(1).pow_(3)


def kernel_distance(real_features, gen_features, num_subsets=100, max_subset_size=1000, seed=0, device="cpu"):
    """KID of `[N_r, D]` and `[N_g, D]` features (numpy or torch); 0 in expectation for one distribution."""
    real = torch.as_tensor(real_features).to(device, torch.float32)
    gen = torch.as_tensor(gen_features).to(device, torch.float32)
    dim = real.shape[1]
    m = min(len(real), len(gen), max_subset_size)
    if m < 2:
        raise metric_utils.MetricError(f"KID needs at least 2 real and 2 generated images, got {len(real)}, {len(gen)}")
    rnd = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = gen[torch.from_numpy(rnd.choice(len(gen), m, replace=False)).to(gen.device)]
        y = real[torch.from_numpy(rnd.choice(len(real), m, replace=False)).to(real.device)]
        k_xx, k_yy, k_xy = _cubic_kernel(x, x, dim), _cubic_kernel(y, y, dim), _cubic_kernel(x, y, dim)
        # Unbiased MMD^2: within-set sums skip the diagonal (i == j) terms.
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        total += float(within - 2 * k_xy.sum() / (m * m))
    return total / num_subsets


def compute_kid(opts, max_real, num_gen, num_subsets=100, max_subset_size=1000):
    """KID between the reference set (first `max_real` items; None = all) and `num_gen` fakes."""
    detector = opts.detector("inception")
    real = metric_utils.compute_feature_stats_for_dataset(
        opts, detector, INCEPTION_FEATURES, stats_name="kid", capture_all=True, max_items=max_real).get_all()
    gen = metric_utils.compute_feature_stats_for_generator(
        opts, detector, INCEPTION_FEATURES, num_gen=num_gen, capture_all=True, desc="kid fakes").get_all()
    return kernel_distance(real, gen, num_subsets=num_subsets, max_subset_size=max_subset_size, seed=opts.seed,
                           device=opts.device)
