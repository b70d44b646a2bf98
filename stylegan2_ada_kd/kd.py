"""KD-DLGAN's distillation losses and the KD baselines, as pure functions on tensors.

Notation (METHOD.md 2, 3, 6.7): B images per batch, E embedding dims, K prompts.
t_* [B, E] are the teacher's (CLIP) image embeddings, raw (not L2-normalised), constants;
s_* [B, E] the student's (D's projection head) embeddings; text_embeds [K, E] the teacher's
prompt embeddings. Real and fake batches are paired by index. Every function computes in fp32
and returns a scalar tensor; the plugin (kd_plugin.KDLoss) weights and sums them.

    agkd_loss       aggregated generative KD: four same/cross-domain feature distances
    cgkd_loss       correlated generative KD: row-normalised image-text correlation matching
    fitnets_loss    FitNets: mean squared L2 feature regression
    ld_loss         label distillation over the prompts (zero-shot soft labels), T = 4
    pkd_loss        probabilistic KD: KL between cosine-kernel neighbour distributions
    spkd_loss       similarity-preserving KD: row-normalised Gram matrices
    pairwise_diversity  optional generator-side term: mean cosine between correlation rows
"""

import torch
import torch.nn.functional as F

DISTANCES = ("l2", "l1")
CLIP_LOGIT_SCALE = 100.0  # CLIP's learned logit scale (exp of 4.6052), used by the zero-shot soft labels
LD_TEMPERATURE = 4.0
PKD_EPS = 1e-7
ROWNORM_EPS = 1e-12  # F.normalize's default, as the released code


def _check_pair(a, b, what):
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{what}: expected two [B, E] tensors of the same shape, got {list(a.shape)} and "
                         f"{list(b.shape)}; pair real and fake batches of equal size")


def sample_distance(a, b, dist="l2"):
    """a, b [B, E] -> [B]: per-sample L2 norm ||a_i - b_i||_2 ('l2', not squared) or mean |a_i - b_i| ('l1')."""
    _check_pair(a, b, "sample_distance")
    diff = a.float() - b.float()
    if dist == "l2":
        return diff.norm(dim=1)
    if dist == "l1":
        return diff.abs().mean(dim=1)
    raise ValueError(f"sample_distance: unknown dist {dist!r}; use one of {', '.join(DISTANCES)}")


def agkd_loss(t_real, s_real, t_fake, s_fake, dist="l2"):
    """AGKD: t_real, s_real, t_fake, s_fake [B, E] -> scalar.

    mean_i d(t_real_i, s_real_i) + mean_i d(t_real_i, s_fake_i)
    + mean_i d(t_fake_i, s_fake_i) + mean_i d(t_fake_i, s_real_i), d = `sample_distance`.
    The cross terms make D's feature of each image match the teacher feature of the other domain.
    """
    return (sample_distance(t_real, s_real, dist).mean() + sample_distance(t_real, s_fake, dist).mean()
            + sample_distance(t_fake, s_fake, dist).mean() + sample_distance(t_fake, s_real, dist).mean())


def correlation(feats, text_embeds):
    """feats [B, E], text_embeds [K, E] -> [B, K]: feats @ text_embeds.T with each row L2-normalised."""
    if feats.ndim != 2 or text_embeds.ndim != 2 or feats.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"correlation: expected [B, E] and [K, E], got {list(feats.shape)} and "
                         f"{list(text_embeds.shape)}; the head's output width must be the teacher's E")
    return F.normalize(feats.float() @ text_embeds.float().T, dim=1, eps=ROWNORM_EPS)


def cgkd_loss(t_feats, s_feats, text_embeds):
    """CGKD on one batch: t_feats, s_feats [B, E], text_embeds [K, E] -> scalar.

    The SUM over the B x K entries of (rownorm(t @ T^T) - rownorm(s @ T^T))^2 (released code; its
    scale grows with B). The plugin applies it to the real and the fake batch and adds the two.
    """
    _check_pair(t_feats, s_feats, "cgkd_loss")
    return (correlation(t_feats, text_embeds) - correlation(s_feats, text_embeds)).square().sum()


def fitnets_loss(t_feats, s_feats):
    """FitNets on one batch: t_feats, s_feats [B, E] -> mean_i ||s_i - t_i||_2^2."""
    _check_pair(t_feats, s_feats, "fitnets_loss")
    return (s_feats.float() - t_feats.float()).square().sum(dim=1).mean()


def ld_loss(t_feats, s_feats, text_embeds, temperature=LD_TEMPERATURE, teacher_scale=CLIP_LOGIT_SCALE,
            student_scale=CLIP_LOGIT_SCALE):
    """Label distillation on one batch: t_feats, s_feats [B, E], text_embeds [K, E] -> scalar.

    p_T = softmax_k(teacher_scale * cos(t, tau_k) / T), p_S = softmax_k(student_scale * cos(s, tau_k) / T);
    loss = T^2 * mean_i KL(p_T,i || p_S,i). The student uses CLIP's logit scale too (T_s = T / 100 in
    METHOD.md 6.7's notation), so both distributions live on the same scale.
    """
    _check_pair(t_feats, s_feats, "ld_loss")
    text = F.normalize(text_embeds.float(), dim=1)
    t_logits = teacher_scale * (F.normalize(t_feats.float(), dim=1) @ text.T) / temperature  # [B, K]
    s_logits = student_scale * (F.normalize(s_feats.float(), dim=1) @ text.T) / temperature
    t_logp, s_logp = t_logits.log_softmax(dim=1), s_logits.log_softmax(dim=1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(dim=1)  # [B]
    return temperature**2 * kl.mean()


def _neighbour_probs(feats):
    """feats [B, E] -> [B, B]: P_{j|i} = K(f_i, f_j) / sum_{k != i} K(f_i, f_k), K = (cos + 1) / 2; 0 diagonal."""
    unit = F.normalize(feats.float(), dim=1)
    kernel = (unit @ unit.T + 1) / 2
    kernel = kernel * (1 - torch.eye(kernel.shape[0], device=kernel.device, dtype=kernel.dtype))
    return kernel / kernel.sum(dim=1, keepdim=True).clamp_min(PKD_EPS)


def pkd_loss(t_feats, s_feats, eps=PKD_EPS):
    """PKD on one batch: t_feats, s_feats [B, E] (B >= 2) -> sum_i sum_{j != i} P^T log((P^T + eps) / (P^S + eps))."""
    _check_pair(t_feats, s_feats, "pkd_loss")
    p_t, p_s = _neighbour_probs(t_feats), _neighbour_probs(s_feats)
    off_diag = 1 - torch.eye(p_t.shape[0], device=p_t.device, dtype=p_t.dtype)
    return (off_diag * p_t * torch.log((p_t + eps) / (p_s + eps))).sum()


def spkd_loss(t_feats, s_feats):
    """SPKD on one batch: t_feats, s_feats [B, E] -> (1 / B^2) ||rownorm(t t^T) - rownorm(s s^T)||_F^2."""
    _check_pair(t_feats, s_feats, "spkd_loss")
    t, s = t_feats.float(), s_feats.float()
    g_t = F.normalize(t @ t.T, dim=1, eps=ROWNORM_EPS)
    g_s = F.normalize(s @ s.T, dim=1, eps=ROWNORM_EPS)
    return (g_t - g_s).square().sum() / t.shape[0] ** 2


def pairwise_diversity(t_feats, text_embeds):
    """Optional G-side term: t_feats [B, E] (B >= 2), text_embeds [K, E] -> scalar.

    mean over i != j of cos(C_i, C_j), C = correlation(t_feats, text_embeds) (rows are unit vectors,
    so the cosine is their dot product). G minimises it to spread its samples over the prompts.
    """
    corr = correlation(t_feats, text_embeds)
    batch = corr.shape[0]
    if batch < 2:
        raise ValueError("pairwise_diversity: needs at least 2 images per batch; raise --batch-gpu")
    cos = corr @ corr.T
    return (cos.sum() - cos.diagonal().sum()) / (batch * (batch - 1))
