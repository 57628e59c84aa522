"""`tbps index`: embed a folder of gallery images into an index folder (incremental)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig

from tbps.app.models import load_model, model_source
from tbps.inference.backends import require_faiss
from tbps.inference.builder import IndexReport, build_index


def run_index(cfg: DictConfig) -> IndexReport:
    """Build or update ``cfg.out`` from ``cfg.images`` with the model; print what changed."""
    key, path = model_source(cfg)
    if cfg.backend == "faiss":
        require_faiss()  # before loading anything
    model = load_model(cfg)
    report = build_index(
        model,
        cfg.images,
        cfg.out,
        backend=cfg.backend,
        dtype=cfg.dtype,
        device=cfg.device,
        precision=str(cfg.precision),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        model_source={key: str(Path(path).expanduser().resolve())},
        overwrite=cfg.overwrite,
        progress=sys.stderr.isatty(),
    )
    s = report.summary()
    print(
        f"index {cfg.out}: {s['images']} images ({s['added']} added, {s['changed']} changed, "
        f"{s['removed']} removed, {s['skipped']} skipped), backend {cfg.backend}"
    )
    plan = report.backend
    if plan.get("name") == "faiss":
        breadth = (
            f"nprobe={plan['nprobe']} of nlist={plan['nlist']}"
            if plan["type"] == "ivf"
            else (f"M={plan['M']} efSearch={plan['ef_search']}")
        )
        print(
            f"faiss {plan['type']} ({breadth}): recall@10 {plan['recall_at_10']:.3f} against exact"
        )
    print(
        f'search it: tbps search index={cfg.out} query="a man in a red jacket"; tbps serve index={cfg.out}'
    )
    if cfg.format == "json":
        print(json.dumps(s))
    return report
