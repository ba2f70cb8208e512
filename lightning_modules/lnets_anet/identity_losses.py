"""Identity supervision of ANet (sec. 4): the identity softmax loss, the similarity loss that pulls
features of one identity together, and the identity-retrieval measures of the pre-trained features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def identity_softmax_loss(logits: torch.Tensor, identities: torch.Tensor,
                          known_identities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 4: softmax cross-entropy over ANet's training identities (``known_identities``, sorted)
    -> (loss, the class index of every sample)."""
    target = torch.searchsorted(known_identities, identities)
    return F.cross_entropy(logits, target), target


def similarity_loss(features: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
    """Sec. 4: pull features of the same identity together, mean over same-identity pairs of the
    batch of ``1/2 ||f_i - f_j||^2`` (zero when the batch has no such pair)."""
    same = torch.triu(identities[:, None] == identities[None, :], diagonal=1)
    if not same.any():
        return features.sum() * 0.0
    d2 = (features[:, None, :] - features[None, :, :]).pow(2).sum(-1)
    return 0.5 * d2[same].mean()


def identity_retrieval(features: torch.Tensor, identities: torch.Tensor) -> dict[str, float]:
    """Identity measures on unseen identities: leave-one-out 1-NN accuracy (cosine similarity, over
    samples whose identity has another sample) and same/different verification AUROC over all pairs."""
    from torchmetrics.functional.classification import binary_auroc

    f = F.normalize(features.float(), dim=1)
    sim = f @ f.t()
    same = identities[:, None] == identities[None, :]
    sim_nn = sim.clone().fill_diagonal_(-math.inf)
    has_mate = (same.sum(1) > 1)
    nn_hit = identities[sim_nn.argmax(1)] == identities
    pairs = torch.triu(torch.ones_like(same), diagonal=1)
    out = {"nn_accuracy": float(nn_hit[has_mate].float().mean()) if has_mate.any() else math.nan}
    labels = same[pairs]
    out["verification_auroc"] = float(binary_auroc(sim[pairs], labels.long())) if 0 < labels.sum() < labels.numel() else math.nan
    return out
