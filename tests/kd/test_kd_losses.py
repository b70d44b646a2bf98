"""stylegan2_ada_kd.kd: every loss against an explicit-loop reference computed here."""

import math

import pytest
import torch

from stylegan2_ada_kd import kd


def feats(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def norm(v):
    return math.sqrt(sum(float(x) ** 2 for x in v))


def rownorm_rows(mat):
    """List of rows of `mat` (list of lists) divided by their L2 norm."""
    return [[x / max(norm(row), 1e-12) for x in row] for row in mat]


def matmul_t(a, b):
    """a [B, E] @ b [K, E]^T as nested lists, by explicit loops."""
    return [[sum(float(a[i, e]) * float(b[k, e]) for e in range(a.shape[1])) for k in range(b.shape[0])]
            for i in range(a.shape[0])]


def cos(u, v):
    return sum(float(x) * float(y) for x, y in zip(u, v)) / (norm(u) * norm(v))


@pytest.mark.parametrize("dist", ["l2", "l1"])
def test_agkd_is_four_batch_mean_distances(dist):
    t_real, s_real, t_fake, s_fake = (feats(5, 7, seed=s) for s in range(4))

    def d(a, b):
        diffs = [float(x) - float(y) for x, y in zip(a, b)]
        return norm(diffs) if dist == "l2" else sum(abs(x) for x in diffs) / len(diffs)

    expected = sum(sum(d(t[i], s[i]) for i in range(5)) / 5
                   for t, s in ((t_real, s_real), (t_real, s_fake), (t_fake, s_fake), (t_fake, s_real)))
    assert float(kd.agkd_loss(t_real, s_real, t_fake, s_fake, dist=dist)) == pytest.approx(expected, rel=1e-5)


def test_agkd_rejects_unpaired_batches_and_unknown_distance():
    with pytest.raises(ValueError, match="same shape"):
        kd.agkd_loss(feats(4, 3), feats(4, 3), feats(3, 3), feats(3, 3))
    with pytest.raises(ValueError, match="unknown dist"):
        kd.agkd_loss(feats(4, 3), feats(4, 3), feats(4, 3), feats(4, 3), dist="cos")


def test_cgkd_sums_squared_differences_of_row_normalised_correlations():
    t, s, text = feats(4, 6, seed=1), feats(4, 6, seed=2), feats(3, 6, seed=3)
    c_t, c_s = rownorm_rows(matmul_t(t, text)), rownorm_rows(matmul_t(s, text))
    expected = sum((c_t[i][k] - c_s[i][k]) ** 2 for i in range(4) for k in range(3))
    assert float(kd.cgkd_loss(t, s, text)) == pytest.approx(expected, rel=1e-5)
    # Sum, not mean: duplicating the batch doubles it.
    doubled = kd.cgkd_loss(torch.cat([t, t]), torch.cat([s, s]), text)
    assert float(doubled) == pytest.approx(2 * expected, rel=1e-5)
    # Invariant to a positive per-row scale of either side (only directions over the prompts count).
    assert float(kd.cgkd_loss(t * 7, s * torch.linspace(0.5, 2, 4)[:, None], text)) == pytest.approx(expected, rel=1e-4)


def test_fitnets_is_mean_squared_l2():
    t, s = feats(3, 5, seed=4), feats(3, 5, seed=5)
    expected = sum(sum((float(s[i, e]) - float(t[i, e])) ** 2 for e in range(5)) for i in range(3)) / 3
    assert float(kd.fitnets_loss(t, s)) == pytest.approx(expected, rel=1e-5)


def test_ld_is_t_squared_kl_of_zero_shot_soft_labels():
    t, s, text = feats(3, 6, seed=6), feats(3, 6, seed=7), feats(4, 6, seed=8)
    temp = 4.0
    expected = 0.0
    for i in range(3):
        lt = [100 * cos(t[i], text[k]) / temp for k in range(4)]
        ls = [100 * cos(s[i], text[k]) / temp for k in range(4)]
        zt, zs = sum(math.exp(x) for x in lt), sum(math.exp(x) for x in ls)
        pt, ps = [math.exp(x) / zt for x in lt], [math.exp(x) / zs for x in ls]
        expected += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    expected = temp**2 * expected / 3
    assert float(kd.ld_loss(t, s, text)) == pytest.approx(expected, rel=1e-4)
    assert float(kd.ld_loss(t, t * 3, text)) == pytest.approx(0, abs=1e-5)  # same directions: no loss


def test_pkd_is_kl_of_cosine_kernel_neighbour_probabilities():
    t, s = feats(4, 5, seed=9), feats(4, 5, seed=10)
    num, eps = 4, 1e-7

    def probs(f):
        k = [[(cos(f[i], f[j]) + 1) / 2 for j in range(num)] for i in range(num)]
        return [[k[i][j] / sum(k[i][m] for m in range(num) if m != i) for j in range(num)] for i in range(num)]

    pt, ps = probs(t), probs(s)
    expected = sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
                   for i in range(num) for j in range(num) if j != i)
    assert float(kd.pkd_loss(t, s)) == pytest.approx(expected, rel=1e-4)
    assert float(kd.pkd_loss(t, 2 * t)) == pytest.approx(0, abs=1e-6)


def test_spkd_is_scaled_frobenius_distance_of_row_normalised_grams():
    t, s = feats(3, 4, seed=11), feats(3, 4, seed=12)
    g_t, g_s = rownorm_rows(matmul_t(t, t)), rownorm_rows(matmul_t(s, s))
    expected = sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert float(kd.spkd_loss(t, s)) == pytest.approx(expected, rel=1e-5)
    assert float(kd.spkd_loss(t, 5 * t)) == pytest.approx(0, abs=1e-6)  # scale-free


def test_pairwise_diversity_is_mean_off_diagonal_cosine_of_correlation_rows():
    t, text = feats(4, 6, seed=13), feats(5, 6, seed=14)
    c = matmul_t(t, text)
    expected = sum(cos(c[i], c[j]) for i in range(4) for j in range(4) if i != j) / 12
    assert float(kd.pairwise_diversity(t, text)) == pytest.approx(expected, rel=1e-5)
    same = kd.pairwise_diversity(t[:1].expand(3, -1), text)
    assert float(same) == pytest.approx(1.0, rel=1e-5)  # identical samples: no diversity
    with pytest.raises(ValueError, match="at least 2"):
        kd.pairwise_diversity(t[:1], text)


def test_losses_compute_in_fp32_and_differentiate_the_student_only():
    t = feats(4, 6, seed=15).half()
    s = feats(4, 6, seed=16).requires_grad_()
    text = feats(3, 6, seed=17).half()
    for value in (kd.agkd_loss(t, s, t, s), kd.cgkd_loss(t, s, text), kd.ld_loss(t, s, text), kd.pkd_loss(t, s),
                  kd.spkd_loss(t, s), kd.fitnets_loss(t, s)):
        assert value.dtype == torch.float32 and value.ndim == 0
        (grad,) = torch.autograd.grad(value, s)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
