"""The one encode loop: gallery images and query captions -> unit-norm embeddings on a device.

Validation during training, ``tbps eval``, boosting and the gallery index all encode through
:func:`encode_images_batch` / :func:`encode_texts_batch`; whole splits through
:func:`encode_split`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from tbps.errors import ConfigError

#: precision= values -> autocast dtype (None: full fp32)
PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "16": torch.float16,
}


class Encoder(Protocol):
    """What the loop needs: a :class:`tbps.model.tbps.TBPSModel` (or anything alike)."""

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def encode_texts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor: ...


@dataclass
class SplitEmbeddings:
    """Embeddings of a split's gallery (one row per image) and queries (one per caption)."""

    images: torch.Tensor
    image_pids: torch.Tensor
    texts: torch.Tensor
    text_pids: torch.Tensor


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when available, else CPU; ``cuda`` / ``cuda:N`` checked to exist."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device={device!r}; expected auto, cpu, cuda or cuda:N") from e
    if resolved.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"device={device} but this machine has no CUDA GPU; use device=cpu")
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(
                f"device={device} but this machine has {count} GPU(s): cuda:0..{count - 1}"
            )
    elif resolved.type not in ("cpu", "mps"):
        raise ConfigError(f"device={device!r}; expected auto, cpu, cuda or cuda:N")
    return resolved


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: fp32)."""
    precision = str(precision).removesuffix("-mixed").removesuffix("-true")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}; valid: 32, bf16, fp16")
    dtype = PRECISIONS[precision]
    if dtype is torch.float16 and device.type != "cuda":
        raise ConfigError(f"precision={precision} (fp16) needs a CUDA device, got {device}")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``; a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def encode_images_batch(
    model: Encoder, batch: dict, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """float32 (B, D) embeddings of a batch's ``images``."""
    with autocast(device, dtype):
        feats = model.encode_images(batch["images"].to(device, non_blocking=True))
    return feats.float()


def encode_texts_batch(
    model: Encoder, batch: dict, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """float32 (B, D) embeddings of a batch's ``input_ids`` / ``attention_mask``."""
    ids = batch["input_ids"].to(device, non_blocking=True)
    mask = batch["attention_mask"].to(device, non_blocking=True)
    with autocast(device, dtype):
        feats = model.encode_texts(ids, mask)
    return feats.float()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside the block, each put back as it was after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


@torch.no_grad()
def encode_split(
    model: Encoder,
    gallery_loader: Iterable[dict],
    query_loader: Iterable[dict],
    device: str | torch.device | None = None,
    precision: str = "32",
    progress: bool = True,
) -> SplitEmbeddings:
    """Encode every gallery image and every query caption; embeddings stay on ``device``
    (default: the model's), where the metrics are then computed."""
    device = torch.device(device) if device is not None else _model_device(model)
    dtype = check_precision(precision, device)
    images, image_pids, texts, text_pids = [], [], [], []
    context = eval_mode(model) if isinstance(model, torch.nn.Module) else contextlib.nullcontext()
    with context:
        for batch in tqdm(gallery_loader, desc="gallery", disable=not progress, leave=False):
            images.append(encode_images_batch(model, batch, device, dtype))
            image_pids.append(batch["pids"])
        for batch in tqdm(query_loader, desc="queries", disable=not progress, leave=False):
            texts.append(encode_texts_batch(model, batch, device, dtype))
            text_pids.append(batch["pids"])
    if not images or not texts:
        raise ValueError("the gallery or the query loader produced no batch")
    return SplitEmbeddings(
        torch.cat(images),
        torch.cat(image_pids).to(device),
        torch.cat(texts),
        torch.cat(text_pids).to(device),
    )


def _model_device(model: Encoder) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(model, torch.nn.Module):
        return next(model.parameters()).device
    return torch.device("cpu")
