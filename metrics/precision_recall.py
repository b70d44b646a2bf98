"""Improved precision and recall (Kynkaanniemi et al. 2019) with VGG16 features and k-nearest-neighbour balls.

Each point of a "manifold" set gets a ball whose radius is the distance to its k-th nearest
neighbour within the set. Precision = share of fakes inside some ball of the reals; recall =
share of reals inside some ball of the fakes. k = 3 for pr*k3. Distances run in row/column
batches on the metric device, on every rank (each rank returns the result).
"""

import torch

from metrics import metric_utils

VGG16_FEATURES = dict(return_features=True)


def _pairwise(rows, cols, col_batch_size):
    """Euclidean distances `[R, C]` of rows `[R, D]` to cols `[C, D]`, in column batches."""
    return torch.cat([torch.cdist(rows.unsqueeze(0), part.unsqueeze(0)).squeeze(0)
                      for part in cols.split(col_batch_size)], dim=1)


def knn_radii(manifold, nhood_size=3, row_batch_size=5000, col_batch_size=10000):
    """Distance of each row of `[M, D]` to its `nhood_size`-th nearest other row: `[M]`."""
    if len(manifold) <= nhood_size:
        raise metric_utils.MetricError(f"precision/recall with k={nhood_size} needs more than {nhood_size} images "
                                       f"per set, got {len(manifold)}")
    # The (k+1)-th smallest distance, because each row's smallest distance is 0 to itself.
    return torch.cat([_pairwise(rows, manifold, col_batch_size).kthvalue(nhood_size + 1, dim=1).values
                      for rows in manifold.split(row_batch_size)])


def share_inside(manifold, radii, probes, row_batch_size=5000, col_batch_size=10000):
    """Share of probe rows `[P, D]` within radii `[M]` of at least one manifold row `[M, D]`."""
    inside = [(_pairwise(rows, manifold, col_batch_size) <= radii.unsqueeze(0)).any(dim=1)
              for rows in probes.split(row_batch_size)]
    return float(torch.cat(inside).to(torch.float64).mean())


def precision_recall(real_features, gen_features, nhood_size=3, row_batch_size=5000, col_batch_size=10000):
    """(precision, recall) of fakes `[N_g, D]` against reals `[N_r, D]` (tensors on one device)."""
    real, gen = real_features.to(torch.float32), gen_features.to(torch.float32)
    batches = dict(row_batch_size=row_batch_size, col_batch_size=col_batch_size)
    precision = share_inside(real, knn_radii(real, nhood_size, **batches), gen, **batches)
    recall = share_inside(gen, knn_radii(gen, nhood_size, **batches), real, **batches)
    return precision, recall


def compute_pr(opts, max_real, num_gen, nhood_size=3, row_batch_size=5000, col_batch_size=10000):
    """(precision, recall) of `num_gen` fakes against the reference set (first `max_real` items; None = all)."""
    detector = opts.detector("vgg16")
    real = metric_utils.compute_feature_stats_for_dataset(
        opts, detector, VGG16_FEATURES, stats_name="pr", capture_all=True, max_items=max_real).get_all()
    gen = metric_utils.compute_feature_stats_for_generator(
        opts, detector, VGG16_FEATURES, num_gen=num_gen, capture_all=True, desc="pr fakes").get_all()
    real, gen = torch.from_numpy(real).to(opts.device), torch.from_numpy(gen).to(opts.device)
    return precision_recall(real, gen, nhood_size, row_batch_size, col_batch_size)
