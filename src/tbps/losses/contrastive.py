"""Batch-level cross-modal contrastive objectives (pure functions: tensors in, scalar out).

Notation: f_i, g_j are the L2-normalised image and text embeddings of a batch of B pairs,
s the logit scale (multiplier, e.g. 50 for tau = 0.02), S = s * f g^T (image rows),
y_ij = 1[pid_i = pid_j] and q_ij = y_ij / sum_k y_ik.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _similarity(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale) -> torch.Tensor:
    f = F.normalize(image_feats, dim=-1)
    g = F.normalize(text_feats, dim=-1)
    return logit_scale * f @ g.t()


def _identity_targets(pids: torch.Tensor) -> torch.Tensor:
    """q = row-normalised same-identity matrix."""
    pids = pids.reshape(-1)
    same = (pids[:, None] == pids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def itc(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale) -> torch.Tensor:
    """Image-text contrastive (InfoNCE) loss with diagonal targets.

    L = 1/2 [CE(S, I) + CE(S^T, I)].
    """
    logits = _similarity(image_feats, text_feats, logit_scale)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def sdm(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    logit_scale,
    epsilon: float = 1e-8,
) -> torch.Tensor:
    """Similarity Distribution Matching (IRRA): KL between the softmax of S and the id targets.

    p = softmax_row(S);  L_i2t = mean_i sum_j p_ij (log p_ij - log(q_ij + eps));
    L_t2i the same on S^T;  L = L_i2t + L_t2i (summed, not averaged).
    """
    logits = _similarity(image_feats, text_feats, logit_scale)
    log_q = torch.log(_identity_targets(pids).to(logits.dtype) + epsilon)
    total = logits.new_zeros(())
    for scores in (logits, logits.t()):  # q is symmetric: same-id is symmetric in i, j
        log_p = F.log_softmax(scores, dim=1)
        total = total + (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    return total
