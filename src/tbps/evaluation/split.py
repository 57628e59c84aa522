"""Evaluate a TBPSModel on one split of a dataset: encode, score, chance level."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from tbps.data.datasets import Collator, GalleryImages, QueryCaptions
from tbps.data.records import ImageRecord, gallery_and_queries
from tbps.evaluation.encode import SplitEmbeddings, encode_split
from tbps.evaluation.metrics import chance_level
from tbps.evaluation.retrieval import evaluate_embeddings
from tbps.model.tbps import TBPSModel

log = logging.getLogger(__name__)


@dataclass
class SplitEvaluation:
    """Metrics of one split (``results[task]``, task ``t2i`` / ``i2t``), the chance level of the
    same split, the embeddings, and the gallery paths and query captions in their order."""

    results: dict[str, dict[str, float | int]]
    chance: dict[str, dict[str, float | int]]
    embeddings: SplitEmbeddings
    gallery: list[tuple[int, str]] = field(repr=False)
    queries: list[tuple[int, str]] = field(repr=False)


#: above this share of unknown tokens the captions are likely in a language the tokenizer
#: never saw (e.g. a scratch model trained on English evaluated on Vietnamese)
UNKNOWN_TOKEN_WARNING = 0.05


def unknown_token_share(model: TBPSModel, captions: Sequence[str]) -> float:
    """Share of the captions' real tokens that the model's tokenizer maps to its unknown
    token (0.0 for tokenizers without one, e.g. byte-level BPE)."""
    tokenizer = model.tokenizer
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not captions:
        return 0.0
    ids = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids)
    return sum(x.count(unk) for x in ids) / total if total else 0.0


def split_loaders(
    model: TBPSModel,
    images: Sequence[ImageRecord],
    batch_size: int = 64,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader, list[tuple[int, str]], list[tuple[int, str]]]:
    """(gallery loader, query loader, gallery, queries) of a split, with the model's own
    preprocessing and tokenizer."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; it cannot encode captions")
    gallery, queries = gallery_and_queries(list(images))
    share = unknown_token_share(model, [c for _, c in queries])
    if share > UNKNOWN_TOKEN_WARNING:
        log.warning(
            "%.1f%% of the caption tokens are unknown to the model's tokenizer: are the captions "
            "in a language it was not trained on?",
            100 * share,
        )
    collate = Collator(model.tokenizer, model.text_length)
    loaders = [
        DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=pin_memory,
        )
        for dataset in (GalleryImages(gallery, model.image_transform), QueryCaptions(queries))
    ]
    return loaders[0], loaders[1], gallery, queries


def evaluate_split(
    model: TBPSModel,
    images: Sequence[ImageRecord],
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    precision: str = "32",
    progress: bool = True,
) -> SplitEvaluation:
    """Encode the split's gallery (each image once) and queries (every caption) with ``model``
    on ``device`` (default: where the model is) and score text-to-image and image-to-text."""
    device = torch.device(device) if device is not None else model.device
    model.to(device)
    gallery_loader, query_loader, gallery, queries = split_loaders(
        model, images, batch_size, num_workers, pin_memory=device.type == "cuda"
    )
    feats = encode_split(model, gallery_loader, query_loader, device, precision, progress)
    results = evaluate_embeddings(feats.images, feats.image_pids, feats.texts, feats.text_pids)
    gallery_pids = [p for p, _ in gallery]
    query_pids = [p for p, _ in queries]
    chance = {
        "t2i": chance_level(query_pids, gallery_pids),
        "i2t": chance_level(gallery_pids, query_pids),
    }
    return SplitEvaluation(results, chance, feats, gallery, queries)
