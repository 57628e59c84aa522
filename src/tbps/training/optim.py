"""Optimizer with decay/no-decay parameter groups, and the per-step warm-up + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tbps.errors import ConfigError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and undecayed (biases, 1-D) groups."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    betas: Sequence[float] = (0.9, 0.98),
    eps: float = 1e-6,
) -> torch.optim.AdamW:
    if lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {lr}")
    return torch.optim.AdamW(
        parameter_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps
    )


def warmup_cosine_factor(
    step: int, total_steps: int, warmup_steps: int, warmup_start: float = 0.01, end: float = 0.01
) -> float:
    """LR multiplier at optimizer step ``step``.

    Warm-up: linear from ``warmup_start`` to 1 over ``warmup_steps``; then cosine from 1 to
    ``end``: end + (1 - end) * 1/2 (1 + cos(pi u)), u = (t - W) / (T - W).
    """
    if step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    u = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * u))


def build_warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    warmup_start: float = 0.01,
    end: float = 0.01,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR applying :func:`warmup_cosine_factor` to every group's base lr."""
    if total_steps < 1:
        raise ConfigError(f"the schedule needs at least one optimizer step, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine_factor(step, total_steps, warmup_steps, warmup_start, end),
    )
