"""Image self-supervision between two augmented views (SimCLR NT-Xent)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tbps.losses.common import float32_loss, normalized


@float32_loss
def simclr(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent over the 2B projected views (normalised inside).

    z = [z1; z2] L2-normalised, S = z z^T / temperature with the diagonal removed; anchor k's
    positive is the other view of the same image and its 2B - 1 candidates are every other view;
    L = mean over the 2B anchors of CE (both directions: view 1 -> 2 and 2 -> 1).
    """
    if z1.shape != z2.shape:
        raise ValueError(f"views have different shapes {tuple(z1.shape)} and {tuple(z2.shape)}")
    batch = z1.shape[0]
    z = torch.cat([normalized(z1), normalized(z2)])
    sim = z @ z.t() / temperature
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(sim, targets)
