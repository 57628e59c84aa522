"""Shared pieces of the objectives: float32 math, cosine logits, identity targets, weighting."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import torch
import torch.nn.functional as F

#: what a logit scale (multiplier s) or bias may be: a Python number or a 0-dim tensor
Scalar = float | torch.Tensor

_P = ParamSpec("_P")
_R = TypeVar("_R")


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs (autocast) are promoted to float32: losses need the range."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of targets for logits of ``dtype``: at least float32 (float64 stays)."""
    return torch.promote_types(dtype, torch.float32)


@contextmanager
def float32_region(device: torch.device | str) -> Iterator[None]:
    """Autocast off on ``device``: the loss math runs in its inputs' dtype, not bf16/fp16.

    Under ``bf16-mixed``/``16-mixed`` autocast casts every matmul back to half precision,
    however its inputs were promoted; inside this region logits and targets stay float32.
    """
    device_type = torch.device(device).type
    if not (
        torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    ):
        yield
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def _promoted(value: Any) -> Any:
    return as_float(value) if isinstance(value, torch.Tensor) else value


def float32_loss(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator of the loss functions: half tensor arguments promoted, run in a float32 region."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        args = tuple(_promoted(a) for a in args)
        kwargs = {k: _promoted(v) for k, v in kwargs.items()}
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        if not tensors:
            return fn(*args, **kwargs)
        with float32_region(tensors[0].device):
            return fn(*args, **kwargs)

    return wrapper


def normalized(x: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 normalisation, in at least float32."""
    return F.normalize(as_float(x), dim=-1)


def cosine_logits(
    image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: Scalar, logit_bias: Scalar = 0
) -> torch.Tensor:
    """S = s * f g^T + b, with f, g the L2-normalised image and text embeddings (image rows)."""
    logits = logit_scale * normalized(image_feats) @ normalized(text_feats).t()
    return logits + logit_bias if not _is_zero(logit_bias) else logits


def _is_zero(x: Scalar) -> bool:
    return not isinstance(x, torch.Tensor) and x == 0


def detached(x: Scalar) -> Scalar:
    return x.detach() if isinstance(x, torch.Tensor) else x


def same_identity(pids: torch.Tensor) -> torch.Tensor:
    """y_ij = 1[pid_i = pid_j] as a boolean (B, B) matrix."""
    pids = pids.reshape(-1)
    return pids[:, None] == pids[None, :]


def identity_targets(pids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q = row-normalised same-identity matrix, q_ij = y_ij / sum_k y_ik (symmetric).

    Built in at least float32 (a half ``dtype`` is promoted): 1/n_i and log(q + eps) need it.
    """
    same = same_identity(pids).to(loss_dtype(dtype))
    return same / same.sum(dim=1, keepdim=True)


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """mean_i w_i * l_i (plain mean without weights): a weight of 1.6 counts a sample 1.6 times.

    The sum is divided by the batch size, not by sum(w), so up-weighting hard samples adds to
    the loss rather than taking from the easy ones.
    """
    if weights is None:
        return per_sample.mean()
    weights = weights.reshape(-1).to(per_sample.dtype)
    if weights.shape != per_sample.shape:
        raise ValueError(
            f"per-sample weights have shape {tuple(weights.shape)}, "
            f"expected {tuple(per_sample.shape)}"
        )
    return (weights * per_sample).mean()


def kl_to_targets(logits: torch.Tensor, log_targets: torch.Tensor) -> torch.Tensor:
    """Per row sum_j p_ij (log p_ij - log_targets_ij), p = softmax_row(logits): shape (B,)."""
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * (log_p - log_targets)).sum(dim=1)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row -sum_j T_ij log softmax_row(logits)_ij: shape (B,)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)
