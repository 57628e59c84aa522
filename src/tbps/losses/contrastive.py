"""Batch-level cross-modal contrastive objectives (pure functions: tensors in, scalar out).

Notation: f_i, g_j are the L2-normalised image and text embeddings of a batch of B pairs,
s the logit scale (multiplier, e.g. 50 for tau = 0.02), b the logit bias (sigmoid losses),
S = s * f g^T (+ b) with image rows, y_ij = 1[pid_i = pid_j] and q_ij = y_ij / sum_k y_ik.

Every function takes raw (unnormalised) embeddings of shape (B, D). Those with ``weights``
accept per-sample weights w (B,): the row of pair i in each direction counts w_i times
(``mean_i w_i l_i``), which is how boosting re-weights hard samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tbps.losses.common import (
    Scalar,
    as_float,
    cosine_logits,
    detached,
    float32_loss,
    identity_targets,
    kl_to_targets,
    loss_dtype,
    normalized,
    same_identity,
    soft_cross_entropy,
    weighted_mean,
)


@float32_loss
def itc(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    logit_scale: Scalar,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image-text contrastive (InfoNCE) loss with diagonal targets.

    L = 1/2 [CE(S, I) + CE(S^T, I)].
    """
    logits = cosine_logits(image_feats, text_feats, logit_scale)
    labels = torch.arange(logits.shape[0], device=logits.device)
    per_row = [F.cross_entropy(m, labels, reduction="none") for m in (logits, logits.t())]
    return 0.5 * (weighted_mean(per_row[0], weights) + weighted_mean(per_row[1], weights))


@float32_loss
def sdm(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    logit_scale: Scalar,
    epsilon: float = 1e-8,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Similarity Distribution Matching (IRRA): KL between the softmax of S and the id targets.

    p = softmax_row(S);  L_i2t = mean_i sum_j p_ij (log p_ij - log(q_ij + eps));
    L_t2i the same on S^T;  L = L_i2t + L_t2i (summed, not averaged).
    """
    logits = cosine_logits(image_feats, text_feats, logit_scale)
    log_q = torch.log(identity_targets(pids, logits.dtype) + epsilon)
    # q is symmetric (same-id is symmetric in i, j), so both directions use the same targets
    return sum(weighted_mean(kl_to_targets(m, log_q), weights) for m in (logits, logits.t()))


CMPM_TARGET_NORMS = ("l2", "l1")


@float32_loss
def cmpm(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    epsilon: float = 1e-8,
    weights: torch.Tensor | None = None,
    target_norm: str = "l2",
) -> torch.Tensor:
    """Cross-Modal Projection Matching (Zhang & Lu, 2018).

    The raw embedding of one modality is projected on the normalised embedding of the other:
    p_ij = softmax_j(x_i . g_j) with x the raw image and g the normalised text embeddings
    (image-to-text), and the same with raw text against normalised images (text-to-image).
    L = sum over both directions of mean_i sum_j p_ij (log p_ij - log(q_ij + eps)).
    Targets from the same-identity matrix y: q_ij = y_ij / ||y_i||_2 = 1/sqrt(n_i) for the n_i
    items of i's identity (``target_norm="l2"``, as IRRA's and the original trainer's code
    compute it; not a distribution when n_i > 1), or q_ij = y_ij / ||y_i||_1 = 1/n_i
    (``"l1"``, the paper's formula). Both agree when every identity appears once.
    No logit scale: the norm of the raw embedding plays its part.
    """
    if target_norm not in CMPM_TARGET_NORMS:
        raise ValueError(f"cmpm target_norm={target_norm!r}; valid: {', '.join(CMPM_TARGET_NORMS)}")
    x, t = image_feats, text_feats
    i2t = as_float(x) @ normalized(t).t()
    t2i = as_float(t) @ normalized(x).t()
    if target_norm == "l1":
        q = identity_targets(pids, i2t.dtype)
    else:
        same = same_identity(pids).to(loss_dtype(i2t.dtype))
        q = same / same.norm(dim=1, keepdim=True)
    log_q = torch.log(q + epsilon)
    return weighted_mean(kl_to_targets(i2t, log_q), weights) + weighted_mean(
        kl_to_targets(t2i, log_q), weights
    )


@float32_loss
def nitc(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    logit_scale: Scalar,
    alpha: float = 0.0,
    image_feats_target: torch.Tensor | None = None,
    text_feats_target: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised image-text contrastive loss with soft labels (TBPS-CLIP).

    T = alpha * softmax_row(S_bar) + (1 - alpha) * q, where S_bar = s * f_bar g_bar^T is built
    from detached embeddings (``*_target`` when given, else the inputs themselves);
    L = 1/2 [mean_i -sum_j T_ij log softmax_row(S)_ij + the same for S^T with S_bar^T].
    With alpha = 0 and distinct pids this is ITC.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    logits = cosine_logits(image_feats, text_feats, logit_scale)
    q = identity_targets(pids, logits.dtype)
    if alpha > 0:
        f_bar = image_feats if image_feats_target is None else image_feats_target
        g_bar = text_feats if text_feats_target is None else text_feats_target
        with torch.no_grad():
            soft = cosine_logits(f_bar.detach(), g_bar.detach(), detached(logit_scale))
            soft = soft.to(logits.dtype)
        targets = (
            alpha * F.softmax(soft, dim=1) + (1 - alpha) * q,
            alpha * F.softmax(soft.t(), dim=1) + (1 - alpha) * q,
        )
    else:
        targets = (q, q)
    i2t = weighted_mean(soft_cross_entropy(logits, targets[0]), weights)
    t2i = weighted_mean(soft_cross_entropy(logits.t(), targets[1]), weights)
    return 0.5 * (i2t + t2i)


@float32_loss
def sigmoid_nitc(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    logit_scale: Scalar,
    logit_bias: Scalar,
    alpha: float = 0.0,
    image_feats_target: torch.Tensor | None = None,
    text_feats_target: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP pairwise sigmoid loss with every same-identity pair a positive.

    z_ij = +1 if pid_i = pid_j else -1;  L = mean_i -sum_j log sigma(z_ij * S_ij), S with bias.
    Soft-label form (alpha > 0): probabilities are mixed with probabilities,
    T = alpha * sigma(S_bar) + (1 - alpha) * y with S_bar from detached embeddings, and
    L = mean_i sum_j BCE(sigma(S_ij), T_ij); alpha = 0 gives exactly the form above.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    logits = cosine_logits(image_feats, text_feats, logit_scale, logit_bias)
    positives = same_identity(pids).to(loss_dtype(logits.dtype))
    if alpha > 0:
        f_bar = image_feats if image_feats_target is None else image_feats_target
        g_bar = text_feats if text_feats_target is None else text_feats_target
        with torch.no_grad():
            soft = cosine_logits(
                f_bar.detach(), g_bar.detach(), detached(logit_scale), detached(logit_bias)
            )
            targets = alpha * torch.sigmoid(soft.to(positives.dtype)) + (1 - alpha) * positives
        pair_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    else:
        signs = positives * 2 - 1
        pair_loss = -F.logsigmoid(signs * logits)
    return weighted_mean(pair_loss.sum(dim=1), weights)


@float32_loss
def ritc(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    pids: torch.Tensor,
    logit_scale: Scalar,
    eps: float = 0.01,
    logit_bias: Scalar | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reverse image-text contrastive loss (TBPS-CLIP): KL from the predicted to the id targets.

    Softmax form (``logit_bias`` None): per direction KL(P || Q) =
    mean_i sum_j P_ij (log P_ij - log(q_ij + eps)), P = softmax_row(S); averaged over the two
    directions.
    Sigmoid form (for sigmoid backbones, ``logit_bias`` given): each pair is a Bernoulli,
    P_ij = sigma(S_ij + b) against Q_ij = (1 - eps) y_ij + eps (1 - y_ij);
    L = mean_i sum_j [P log(P / Q) + (1 - P) log((1 - P) / (1 - Q))] (both directions are the
    same pairs).
    """
    if logit_bias is not None:
        logits = cosine_logits(image_feats, text_feats, logit_scale, logit_bias)
        y = same_identity(pids).to(loss_dtype(logits.dtype))  # bf16: 1 - 0.01 = 0.988, 1 - 1e-3 = 1
        q = (1 - eps) * y + eps * (1 - y)
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        pair_kl = log_p.exp() * (log_p - q.log()) + log_not_p.exp() * (log_not_p - (1 - q).log())
        return weighted_mean(pair_kl.sum(dim=1), weights)
    logits = cosine_logits(image_feats, text_feats, logit_scale)
    log_q = torch.log(identity_targets(pids, logits.dtype) + eps)
    i2t = weighted_mean(kl_to_targets(logits, log_q), weights)
    t2i = weighted_mean(kl_to_targets(logits.t(), log_q), weights)
    return 0.5 * (i2t + t2i)
