"""Classification objectives: identity (ID) classification and masked language modelling."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tbps.losses.common import as_float, float32_loss, weighted_mean

IGNORE_INDEX = -100


@float32_loss
def id_loss(
    image_logits: torch.Tensor,
    text_logits: torch.Tensor,
    pids: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Identity classification with one shared classifier on both modalities.

    L = 1/2 [CE(W f_raw, pid) + CE(W g_raw, pid)] (logits of shape (B, num_classes)).
    """
    pids = pids.reshape(-1)
    image = F.cross_entropy(as_float(image_logits), pids, reduction="none")
    text = F.cross_entropy(as_float(text_logits), pids, reduction="none")
    return 0.5 * (weighted_mean(image, weights) + weighted_mean(text, weights))


@float32_loss
def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked language modelling: CE over the positions whose label is not -100.

    ``logits`` (..., V) and ``labels`` (...) of matching leading shape; mean over the masked
    positions. No masked position at all gives 0 (still attached to the graph), not NaN.
    """
    logits = as_float(logits).reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"MLM logits cover {logits.shape[0]} positions but labels {labels.shape[0]}"
        )
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)
