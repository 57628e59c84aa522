"""Score embeddings: text-to-image and image-to-text metrics, and the result table."""

from __future__ import annotations

import torch

from tbps.evaluation.metrics import retrieval_metrics_from_embeddings

METRIC_NAMES = ("R1", "R5", "R10", "mAP", "mINP")


def evaluate_embeddings(
    image_feats: torch.Tensor,
    image_pids: torch.Tensor,
    text_feats: torch.Tensor,
    text_pids: torch.Tensor,
) -> dict[str, dict[str, float | int]]:
    """``{"t2i": metrics, "i2t": metrics}`` from L2-normalised embeddings (cosine similarity),
    computed on the embeddings' device, a chunk of queries at a time."""
    return {
        "t2i": retrieval_metrics_from_embeddings(text_feats, image_feats, text_pids, image_pids),
        "i2t": retrieval_metrics_from_embeddings(image_feats, text_feats, image_pids, text_pids),
    }


def format_table(results: dict[str, dict[str, dict[str, float | int]]]) -> str:
    """Text table of ``{row_name: {"t2i": m, "i2t": m}}``."""
    width = max([len(r) for r in results] + [4]) + 2
    header = f"{'':<{width}}{'task':<6}" + "".join(f"{c:>8}" for c in METRIC_NAMES)
    lines = [header + f"{'queries':>9}"]
    for row, by_task in results.items():
        for task, m in by_task.items():
            values = "".join(f"{float(m[c]):8.2f}" for c in METRIC_NAMES)
            lines.append(f"{row:<{width}}{task:<6}{values}{int(m['num_queries']):>9}")
    return "\n".join(lines)
