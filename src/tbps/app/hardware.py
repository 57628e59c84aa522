"""Settings that depend on the machine: ``auto`` precision and loader workers, CUDA defaults."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from tbps.errors import ConfigError

log = logging.getLogger(__name__)

#: loader workers per GPU with loader.num_workers=auto (the published recipes use 8)
MAX_WORKERS_PER_GPU = 8
#: precisions that keep the weights (and so the optimizer's state) in half precision
HALF_WEIGHTS = ("16-true", "bf16-true", "16", "bf16", "half")


def trains_on_cuda(trainer: Mapping[str, Any]) -> bool:
    """Whether the Lightning trainer settings put the model on a CUDA GPU here."""
    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def devices_per_node(trainer: Mapping[str, Any]) -> int:
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    if str(devices).isdigit():
        return max(1, int(devices))
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def resolve_precision(trainer: Mapping[str, Any]) -> str:
    """``trainer.precision``, with ``auto`` = ``bf16-mixed`` on a CUDA GPU that has bf16,
    ``16-mixed`` (fp16 with loss scaling) on an older one, ``32-true`` on the CPU."""
    precision = str(trainer.get("precision", "32-true"))
    if precision != "auto":
        return precision
    if not trains_on_cuda(trainer):
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def resolve_num_workers(value: int | str, on_cuda: bool, devices: int = 1) -> int:
    """``loader.num_workers``, with ``auto`` = 0 on the CPU (decoding would take cores from
    the model) and min(8, CPUs / GPUs) per process on CUDA."""
    if value != "auto":
        return int(value)
    if not on_cuda:
        return 0
    return max(1, min(MAX_WORKERS_PER_GPU, (os.cpu_count() or 2) // max(1, devices)))


def check_precision_and_optimizer(precision: str, optimizer: str) -> None:
    """Refuse half-precision weights with Adam/AdamW: their moment estimates would be half
    precision too, and updates below the weights' resolution vanish."""
    if precision in HALF_WEIGHTS and optimizer in ("adamw", "adam"):
        raise ConfigError(
            f"trainer.precision={precision} keeps the weights and {optimizer}'s moment "
            "estimates in half precision (about 3 significant digits): small updates vanish "
            f"and training stalls; use trainer.precision={precision.split('-')[0]}-mixed "
            "(float32 weights, half-precision compute)"
        )


def use_cuda_defaults() -> None:
    """TF32 matrix products on CUDA (``torch.set_float32_matmul_precision("high")``): float32
    layers that autocast leaves alone run on tensor cores."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        log.info("CUDA: float32 matmul precision 'high' (TF32)")
