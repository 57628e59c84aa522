"""`tbps train`: data -> tokenizer -> model -> Lightning fit -> test (best and last) -> report."""

from __future__ import annotations

import json
import logging
import resource
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from tbps.data.datamodule import TBPSDataModule
from tbps.data.records import DatasetSplits
from tbps.data.sources import load_dataset
from tbps.data.tokenization import tokenizer_to_json, train_caption_tokenizer
from tbps.errors import ConfigError
from tbps.evaluation.evaluator import format_table
from tbps.evaluation.metrics import chance_level
from tbps.losses import objective_weights
from tbps.model.factory import BACKBONE_TYPES, scratch_model_spec
from tbps.training.module import TBPSLightningModule

log = logging.getLogger(__name__)


def resolve_run_dir(run_dir: str | None, runs_dir: str, name: str) -> Path:
    """The run folder: ``run_dir`` if given (must be absent or empty), else a new timestamped one."""
    if run_dir:
        path = Path(run_dir).expanduser()
        if path.exists() and any(path.iterdir()):
            raise ConfigError(f"run folder {path} exists and is not empty; choose another run_dir")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(runs_dir).expanduser() / name / stamp
        suffix = 1
        while path.exists():
            path = path.with_name(f"{stamp}-{suffix}")
            suffix += 1
    return path


def dataset_from_config(cfg: DictConfig, progress: bool = True) -> DatasetSplits:
    data = cfg.data
    synth = OmegaConf.to_container(data.synth) if "synth" in data else None
    return load_dataset(data.name, data.format, data.root, synth, cfg.cache_dir, progress=progress)


def _build_model_spec(cfg: DictConfig, train_captions: list[str]):
    backbone = cfg.backbone
    if backbone.type not in BACKBONE_TYPES:
        raise ConfigError(
            f"unknown backbone.type {backbone.type!r}; valid: {', '.join(BACKBONE_TYPES)}"
        )
    tokenizer = train_caption_tokenizer(
        train_captions, backbone.tokenizer.vocab_size, backbone.tokenizer.min_frequency
    )
    spec = scratch_model_spec(
        tokenizer,
        image_size=list(backbone.image_size),
        patch_size=backbone.patch_size,
        vision=backbone.vision,
        text=backbone.text,
        embed_dim=backbone.embed_dim,
        mlp_ratio=backbone.mlp_ratio,
        temperature=backbone.temperature,
        init_temperature=backbone.init_temperature,
        image_mean=list(cfg.augment.mean),
        image_std=list(cfg.augment.std),
    )
    return spec, tokenizer


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    return {k: v for k, v in kwargs.items() if v is not None}


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate every epoch, test the best and the last weights; returns metrics.json."""
    start = time.time()
    weights = objective_weights(OmegaConf.to_container(cfg.objectives))
    run_dir = resolve_run_dir(cfg.run_dir, cfg.runs_dir, cfg.name)
    dataset = dataset_from_config(cfg)  # fail on bad data before creating the run folder
    run_dir.mkdir(parents=True, exist_ok=True)
    file_log = logging.FileHandler(run_dir / "train.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(file_log)
    try:
        return _run(cfg, run_dir, dataset, weights, start)
    finally:
        logging.getLogger().removeHandler(file_log)
        file_log.close()


def _run(
    cfg: DictConfig, run_dir: Path, dataset: DatasetSplits, weights: dict[str, float], start: float
) -> dict[str, Any]:
    log.info("run folder: %s", run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_captions = [c for img in dataset.split("train") for c in img.captions]
    spec, tokenizer = _build_model_spec(cfg, train_captions)
    tokenizer.save_pretrained(run_dir / "tokenizer")
    tok_json, tok_special = tokenizer_to_json(tokenizer)

    datamodule = TBPSDataModule(
        dataset,
        tokenizer,
        image_size=spec["image_size"],
        text_length=cfg.backbone.text.length,
        augment=cfg.augment.preset,
        mean=spec["image_mean"],
        std=spec["image_std"],
        batch_size=cfg.loader.batch_size,
        eval_batch_size=cfg.loader.eval_batch_size,
        num_workers=cfg.loader.num_workers,
        val_split=cfg.data.val_split,
        test_split=cfg.data.test_split,
        on_bad_image=cfg.data.on_bad_image,
        seed=cfg.seed,
    )
    datamodule.build_train()  # fixes num_classes (train pids remapped to 0..N-1)
    module = TBPSLightningModule(
        model_spec=spec,
        objectives=weights,
        num_classes=datamodule.num_classes,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        warmup_epochs=cfg.optim.warmup_epochs,
        warmup_start_factor=cfg.optim.warmup_start_factor,
        end_lr_factor=cfg.optim.end_lr_factor,
        tokenizer_state={"json": tok_json, "special_tokens": tok_special},
    )
    n_params = sum(p.numel() for p in module.model.parameters())
    log.info("model: %s, %.2fM parameters", cfg.backbone.name, n_params / 1e6)

    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val/t2i/R1",
        mode="max",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    if cfg.logger.type != "csv":
        raise ConfigError(f"unknown logger.type {cfg.logger.type!r}; valid: csv")
    trainer = L.Trainer(
        default_root_dir=run_dir,
        logger=CSVLogger(save_dir=run_dir, name="logs", version=""),
        callbacks=[checkpoint, LearningRateMonitor(logging_interval="step")],
        num_sanity_val_steps=0,
        **_trainer_kwargs(cfg),
    )
    trainer.fit(module, datamodule=datamodule)

    results: dict[str, Any] = {}
    trainer.test(module, datamodule=datamodule, verbose=False)
    results["last"] = module.results.get("test")
    best_path = checkpoint.best_model_path
    if best_path:
        trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        results["best"] = module.results.get("test")

    gallery, queries = datamodule.build_eval(cfg.data.test_split)
    metrics = {
        "dataset": dataset.name,
        "data_root": dataset.root,
        "backbone": cfg.backbone.name,
        "run_dir": str(run_dir),
        "test": results,
        "best_val": {
            "val/t2i/R1": float(checkpoint.best_model_score)
            if checkpoint.best_model_score is not None
            else None,
            "checkpoint": best_path or None,
        },
        "last_checkpoint": checkpoint.last_model_path or None,
        "chance": {
            "t2i": chance_level([p for p, _ in queries.queries], [p for p, _ in gallery.gallery]),
            "i2t": chance_level([p for p, _ in gallery.gallery], [p for p, _ in queries.queries]),
        },
        "num_train_ids": datamodule.num_classes,
        "num_parameters": n_params,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_seconds": round(time.time() - start, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    rows = {f"test ({k})": v for k, v in results.items() if v}
    rows["chance"] = metrics["chance"]
    print(format_table(rows))
    print(
        f"run folder: {run_dir}  ({metrics['wall_seconds']} s, peak RSS {metrics['peak_rss_mib']} MiB)"
    )
    return metrics
