"""Encode a gallery and its queries with a model, and score text-to-image / image-to-text."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from tbps.evaluation.metrics import retrieval_metrics


def evaluate_embeddings(
    image_feats: torch.Tensor,
    image_pids: torch.Tensor,
    text_feats: torch.Tensor,
    text_pids: torch.Tensor,
) -> dict[str, dict[str, float | int]]:
    """``{"t2i": metrics, "i2t": metrics}`` from L2-normalised embeddings (cosine similarity)."""
    sim = text_feats.float() @ image_feats.float().t()
    return {
        "t2i": retrieval_metrics(sim, text_pids, image_pids),
        "i2t": retrieval_metrics(sim.t(), image_pids, text_pids),
    }


@torch.no_grad()
def encode_split(
    model,
    gallery_loader: Iterable[dict],
    query_loader: Iterable[dict],
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image_feats, image_pids, text_feats, text_pids) of a gallery and query loader.

    ``model`` has ``encode_images(images)`` and ``encode_texts(input_ids, attention_mask)``
    returning unit-norm embeddings (a TBPSLightningModule).
    """
    was_training = model.training
    model.eval()
    images, image_pids, texts, text_pids = [], [], [], []
    for batch in tqdm(gallery_loader, desc="gallery", disable=not progress, leave=False):
        images.append(model.encode_images(batch["images"].to(device)).cpu())
        image_pids.append(batch["pids"])
    for batch in tqdm(query_loader, desc="queries", disable=not progress, leave=False):
        feats = model.encode_texts(
            batch["input_ids"].to(device), batch["attention_mask"].to(device)
        )
        texts.append(feats.cpu())
        text_pids.append(batch["pids"])
    model.train(was_training)
    return torch.cat(images), torch.cat(image_pids), torch.cat(texts), torch.cat(text_pids)


def format_table(results: dict[str, dict[str, dict[str, float | int]]]) -> str:
    """Text table of ``{row_name: {"t2i": m, "i2t": m}}``."""
    cols = ("R1", "R5", "R10", "mAP", "mINP")
    width = max([len(r) for r in results] + [4]) + 2
    lines = [f"{'':<{width}}{'task':<6}" + "".join(f"{c:>8}" for c in cols) + f"{'queries':>9}"]
    for row, by_task in results.items():
        for task, m in by_task.items():
            values = "".join(f"{float(m[c]):8.2f}" for c in cols)
            lines.append(f"{row:<{width}}{task:<6}{values}{int(m['num_queries']):>9}")
    return "\n".join(lines)
