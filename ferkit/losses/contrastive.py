"""DeepID2's verification signal (Sun et al. 2014, "Deep Learning Face Representation by Joint
Identification-Verification", eq. 2), used to pre-train TFE-JL's identity branch.

For two DeepID2 features f_i, f_j and y_ij = 1 when they show the same person::

    Verif(f_i, f_j, y_ij) = 1/2 ||f_i - f_j||^2                      if y_ij = 1
                            1/2 max(0, m - ||f_i - f_j||)^2           if y_ij = -1

i.e. the contrastive loss: same-identity features are pulled together, different-identity ones
pushed at least ``m`` apart. DeepID2 trains with ``Ident + lambda * Verif`` (their lambda = 0.05).

DeepID2 draws random pairs; here every pair inside a mini-batch is used (with a batch of 128 over
a few hundred identities that is ~25 positive and ~8,000 negative pairs per batch, at no extra
forward cost). Positive and negative terms are averaged separately and then added, so the
thousands of negative pairs do not drown the few positive ones.
"""
from __future__ import annotations

import torch


def pair_verification_terms(features: torch.Tensor, labels: torch.Tensor,
                            margin: float) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-pair DeepID2 terms over all unordered pairs of the batch.

    Returns (sum of positive terms, sum of negative terms, number of positive pairs, number of
    negative pairs). Kept separate from the reduction so tests can check the equation pair by pair.
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features [B, D] and labels [B] expected, got {tuple(features.shape)} and {tuple(labels.shape)}")
    n = features.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=features.device)
    diff = features[iu[0]] - features[iu[1]]
    sq = (diff * diff).sum(dim=1)
    same = labels[iu[0]] == labels[iu[1]]
    # sqrt only where needed; the clamp keeps the gradient finite for identical features
    dist = torch.sqrt(sq.clamp_min(1e-12))
    pos = 0.5 * sq[same]
    neg = 0.5 * torch.clamp(margin - dist[~same], min=0.0) ** 2
    return pos.sum(), neg.sum(), int(same.sum()), int((~same).sum())


def verification_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean positive-pair term + mean negative-pair term of the DeepID2 verification signal.

    A batch with no positive (or no negative) pair contributes 0 for that half.
    """
    pos_sum, neg_sum, n_pos, n_neg = pair_verification_terms(features, labels, margin)
    loss = features.new_zeros(())
    if n_pos:
        loss = loss + pos_sum / n_pos
    if n_neg:
        loss = loss + neg_sum / n_neg
    return loss


@torch.no_grad()
def median_negative_distance(features: torch.Tensor, labels: torch.Tensor) -> float:
    """The median distance between features of different identities (1.0 without such a pair): a
    contrastive margin on the features' own scale (DeepID2 adapts m to the distance statistics)."""
    d = torch.cdist(features, features)
    diff = labels[:, None] != labels[None, :]
    return float(d[diff].median()) if diff.any() else 1.0

