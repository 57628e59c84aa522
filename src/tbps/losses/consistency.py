"""Cyclic consistency of the embedding geometry (C-ITC, from CyCLIP)."""

from __future__ import annotations

import torch

from tbps.losses.common import Scalar, float32_loss, normalized


@float32_loss
def citc(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    logit_scale: Scalar,
    inmodal_weight: float = 0.25,
    intermodal_weight: float = 0.25,
) -> torch.Tensor:
    """Cyclic image-text consistency: the two modalities should induce the same geometry.

    L = lambda_in * mean((f f^T - g g^T)^2) + lambda_inter * mean((f g^T - g f^T)^2),
    means over the B x B entries, f, g L2-normalised. The value does not depend on the
    logit scale (CyCLIP computes it on s-scaled similarities and divides by s^2); the argument
    keeps the contrastive signature uniform.
    """
    f, g = normalized(image_feats), normalized(text_feats)
    inmodal = (f @ f.t() - g @ g.t()).square().mean()
    cross = f @ g.t()
    intermodal = (cross - cross.t()).square().mean()
    return inmodal_weight * inmodal + intermodal_weight * intermodal
