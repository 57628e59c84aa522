"""`tbps eval`: score a model folder or a checkpoint on one split of a dataset, on any device."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from tbps.app.hardware import resolve_num_workers
from tbps.app.models import load_model, model_info, model_source
from tbps.data.images import check_images
from tbps.data.sources import load_dataset_section
from tbps.evaluation.encode import check_precision, resolve_device
from tbps.evaluation.failures import find_failures, write_failure_report
from tbps.evaluation.retrieval import format_table
from tbps.evaluation.split import SplitEvaluation, evaluate_split

log = logging.getLogger(__name__)


def with_training_data(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Without ``data=NAME`` on the command line, evaluate on the data the model was trained on
    (the run's data section: root, format, options, synthetic settings), with the command
    line's ``data.key=value`` overrides applied on top."""
    if any(o.split("=", 1)[0].lstrip("+~") == "data" for o in overrides):
        return cfg
    data = model_info(cfg).get("data")
    if not data:
        log.warning(
            "the model records no training data: evaluating on data=%s (pass data=NAME "
            "data.root=DIR to choose)",
            cfg.data.name,
        )
        return cfg
    with open_dict(cfg):
        cfg.data = OmegaConf.create(data)
        for override in overrides:
            key, _, value = override.lstrip("+").partition("=")
            if key.startswith("data."):
                OmegaConf.update(cfg, key, yaml.safe_load(value), merge=True)
    log.info("evaluating on the model's own training data: data=%s", cfg.data.name)
    return cfg


def split_label(dataset_name: str, split: str) -> str:
    """``cuhk_pedes test``; VN3K names its caption language: ``vn3k_vi test (captions: vi)``."""
    label = f"{dataset_name} {split}"
    language = {"vn3k_en": "en", "vn3k_vi": "vi", "vn3k_mixed": "en+vi"}.get(dataset_name)
    return f"{label} (captions: {language})" if language else label


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """Encode the split's gallery and queries with the model; print and return the metrics."""
    source = model_source(cfg)
    device = resolve_device(cfg.device)
    check_precision(cfg.precision, device)  # before any work
    progress = sys.stderr.isatty()
    model = load_model(cfg)  # a bad model folder or checkpoint fails before the data work
    data = OmegaConf.to_container(cfg.data, resolve=True)
    dataset = load_dataset_section(data, cfg.cache_dir, progress=progress)
    images = check_images(dataset.split(cfg.split), cfg.data.on_bad_image, cfg.split)
    log.info("evaluating %s=%s on %s %s (%s)", *source, dataset.name, cfg.split, device)
    evaluation = evaluate_split(
        model,
        images,
        batch_size=cfg.loader.eval_batch_size,
        num_workers=resolve_num_workers(cfg.loader.num_workers, device.type == "cuda"),
        device=device,
        precision=str(cfg.precision),
        progress=progress,
    )
    table = {split_label(dataset.name, cfg.split): evaluation.results, "chance": evaluation.chance}
    print(format_table(table))
    out = {
        source[0]: source[1],
        "dataset": dataset.name,
        "split": cfg.split,
        "device": str(device),
        "precision": str(cfg.precision),
        **evaluation.results,
    }
    if cfg.report.failures:
        out["failure_report"] = str(
            write_report(cfg, evaluation, split_label(dataset.name, cfg.split))
        )
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(out, indent=2))
        log.info("metrics written to %s", cfg.out)
    return out


def write_report(cfg: DictConfig, evaluation: SplitEvaluation, label: str) -> Path:
    """The failure report of an evaluation (e.g. a cross-domain check) at ``report.path``."""
    emb = evaluation.embeddings
    similarity = (emb.texts @ emb.images.t()).cpu()
    cases = find_failures(
        similarity, emb.text_pids.cpu(), emb.image_pids.cpu(), k=10, limit=cfg.report.failures
    )
    path = write_failure_report(
        cases,
        [c for _, c in evaluation.queries],
        [p for _, p in evaluation.gallery],
        Path(cfg.report.path).expanduser(),
        title=f"{label}: failures",
        metrics=evaluation.results,
    )
    print(f"failure report: {path} ({len(cases)} queries)")
    return path
