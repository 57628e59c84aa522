"""`tbps eval`: score a checkpoint on one split of a dataset (no training split is built)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import DataLoader

from tbps.data.datasets import Collator, GalleryImages, QueryCaptions
from tbps.data.images import check_images
from tbps.data.records import gallery_and_queries
from tbps.evaluation.evaluator import encode_split, evaluate_embeddings, format_table
from tbps.evaluation.metrics import chance_level
from tbps.training.checkpoint import load_for_evaluation
from tbps.training.run import dataset_from_config

log = logging.getLogger(__name__)


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """Encode the split's gallery and queries with the checkpoint; print and return metrics."""
    module, tokenizer, transform = load_for_evaluation(cfg.ckpt_path)
    model = module.model
    dataset = dataset_from_config(cfg)
    images = check_images(dataset.split(cfg.split), cfg.data.on_bad_image, cfg.split)
    gallery, queries = gallery_and_queries(images)
    collate = Collator(tokenizer, model.text_length)
    loaders = [
        DataLoader(
            ds,
            batch_size=cfg.loader.eval_batch_size,
            num_workers=cfg.loader.num_workers,
            collate_fn=collate,
        )
        for ds in (GalleryImages(gallery, transform), QueryCaptions(queries))
    ]
    feats = encode_split(module, *loaders)
    results = evaluate_embeddings(*feats)
    chance = {
        "t2i": chance_level([p for p, _ in queries], [p for p, _ in gallery]),
        "i2t": chance_level([p for p, _ in gallery], [p for p, _ in queries]),
    }
    print(format_table({f"{dataset.name} {cfg.split}": results, "chance": chance}))
    out = {"checkpoint": str(cfg.ckpt_path), "dataset": dataset.name, "split": cfg.split, **results}
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(out, indent=2))
        log.info("metrics written to %s", cfg.out)
    return out
