"""Triplet alignment loss (TAL, RDE): a log-sum-exp hardest-negative triplet on cosines."""

from __future__ import annotations

import torch

from tbps.losses.common import float32_loss, normalized, same_identity, weighted_mean


def _tal_rows(sim: torch.Tensor, positives: torch.Tensor, margin: float, tau: float):
    """Per-row hinge [m - S+_i + tau * log sum_{j neg} exp(S_ij / tau)]_+ of one direction."""
    scaled = sim / tau
    with torch.no_grad():  # alpha_ij = softmax over the positives of S_ij / tau, detached
        alpha = torch.softmax(scaled.masked_fill(~positives, float("-inf")), dim=1)
    positive = (alpha * sim).sum(dim=1)
    negatives = ~positives
    has_negative = negatives.any(dim=1)
    # rows without negatives (all pids equal) get a finite dummy and then no loss
    neg_logits = scaled.masked_fill(~negatives, float("-inf"))
    neg_logits = torch.where(has_negative[:, None], neg_logits, torch.zeros_like(neg_logits))
    hinge = (margin - positive + tau * torch.logsumexp(neg_logits, dim=1)).clamp(min=0)
    return torch.where(has_negative, hinge, torch.zeros_like(hinge))


@float32_loss
def tal(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    margin: float = 0.1,
    tau: float = 0.015,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triplet Alignment Loss (RDE) on cosine similarities S = f g^T (no logit scale).

    For each row i: S+_i = sum_{j: y_ij=1} alpha_ij S_ij with alpha = softmax of S/tau over the
    positives (detached), and L_i = [m - S+_i + tau * log sum_{j: y_ij=0} exp(S_ij / tau)]_+.
    L = mean_i (L_i image-to-text + L_i text-to-image): directions summed, mean over the batch.
    A row with no negative (every pid equal) contributes 0.
    """
    sim = normalized(image_feats) @ normalized(text_feats).t()
    positives = same_identity(pids)
    per_pair = _tal_rows(sim, positives, margin, tau) + _tal_rows(sim.t(), positives, margin, tau)
    return weighted_mean(per_pair, weights)
