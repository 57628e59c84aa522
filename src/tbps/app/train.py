"""`tbps train` (application layer): data -> tokenizer -> model -> Lightning fit -> test (best
and last) -> run folder, metrics.json, report."""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from omegaconf import DictConfig, OmegaConf, open_dict

from tbps.app.hardware import (
    check_precision_and_optimizer,
    devices_per_node,
    resolve_num_workers,
    resolve_precision,
    trains_on_cuda,
    use_cuda_defaults,
)
from tbps.app.report import OVERRIDES_FILE  # the command's key=value words
from tbps.data.datamodule import TBPSDataModule
from tbps.data.images import check_images
from tbps.data.records import DatasetSplits
from tbps.data.sources import load_dataset_section
from tbps.data.text_augment import TextAugmentOptions
from tbps.data.tokenization import train_caption_tokenizer
from tbps.data.transforms import preset_interpolation
from tbps.data.views import DataViews, required_views
from tbps.errors import ConfigError, NothingToDo
from tbps.evaluation.failures import find_failures, log_wandb_failures, write_failure_report
from tbps.evaluation.retrieval import format_table
from tbps.losses import resolve_objectives, tse_settings
from tbps.model.factory import (
    PRETRAINED_TYPES,
    check_backbone_type,
    pretrained_model,
    scratch_model_spec,
)
from tbps.model.finetune import count_parameters, finetune_settings
from tbps.model.pretrained import read_config, resolve_backbone_path, weight_files
from tbps.training.boosting import HardSampleBoosting
from tbps.training.checkpoint import (
    AtomicCheckpointIO,
    RNGState,
    WallClock,
    check_compatible,
    tokenizer_state,
)
from tbps.training.distributed import (
    RankAgreement,
    files_digest,
    launched_rank_zero,
    text_digest,
)
from tbps.training.loggers import build_loggers, provenance
from tbps.training.module import TBPSLightningModule

log = logging.getLogger(__name__)


def resolve_run_dir(
    run_dir: str | None, runs_dir: str, name: str, check_empty: bool = True
) -> Path:
    """The run folder: ``run_dir`` if given (must be absent or empty), else a new timestamped one.

    ``check_empty=False`` for the ranks other than 0 of a DDP launch: rank 0 may already have
    filled ``run_dir``; their timestamped name is provisional (see :class:`RankAgreement`).
    """
    if run_dir:
        path = Path(run_dir).expanduser()
        if check_empty and path.exists() and any(not _attempt_record(p) for p in path.iterdir()):
            if not failed_start(path):
                raise ConfigError(
                    f"run folder {path} exists and is not empty; choose another run_dir"
                )
            log.warning("%s holds a start that failed before any checkpoint: reusing it", path)
            if (path / "logs").is_dir():  # keep the failed start's metrics
                n = 1
                while (path / f"logs-failed-{n}").exists():
                    n += 1
                (path / "logs").rename(path / f"logs-failed-{n}")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(runs_dir).expanduser() / name / stamp
        suffix = 1
        while path.exists():
            path = path.with_name(f"{stamp}-{suffix}")
            suffix += 1
    return path


def _attempt_record(path: Path) -> bool:
    """``failed.json`` / ``failed-<n>.json``: a sweep's record of an earlier attempt at this run
    (kept beside the new one; not a run's content)."""
    return re.fullmatch(r"failed(-\d+)?\.json", path.name) is not None


def failed_start(path: Path) -> bool:
    """A run folder whose start failed before its first checkpoint (nothing to resume or
    lose but its log, which a new start appends to)."""
    return (
        (path / "config.yaml").is_file()
        and not (path / "metrics.json").exists()
        and not any((path / "checkpoints").glob("*.ckpt"))
    )


def absolute_paths(cfg: DictConfig) -> None:
    """Store the run's paths absolute, so ``resume=`` works from any working directory."""
    with open_dict(cfg):
        for key in ("data.root", "runs_dir", "cache_dir", "run_dir", "resume"):
            if OmegaConf.is_missing(cfg, key):
                continue
            value = OmegaConf.select(cfg, key)
            if isinstance(value, str) and value:
                OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(value)))


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``run_dir`` is where ``tbps train resume=`` continues it."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def dataset_from_config(
    cfg: DictConfig, progress: bool = True, generate: bool = True
) -> DatasetSplits:
    """The data section's dataset; ``generate=False`` waits for rank 0 to generate synthetic data."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return load_dataset_section(data, cfg.cache_dir, progress=progress, generate=generate)


def data_views_from_config(cfg: DictConfig) -> dict[str, Any]:
    """Datamodule view/augmentation arguments: the augment section, plus what objectives need."""
    aug = cfg.augment
    views = required_views(OmegaConf.to_container(cfg.objectives, resolve=True))
    views = views | DataViews(mvs=aug.mvs, ss=aug.ss, mlm=aug.mlm.enabled)
    if views.names():
        log.info("training batches carry extra views: %s", ", ".join(views.names()))
    text = OmegaConf.to_container(aug.text, resolve=True)
    text_on = text.pop("enabled")
    return {
        "mvs": views.mvs,
        "ss_views": views.ss,
        "mlm": views.mlm,
        "mlm_probability": aug.mlm.probability,
        "text_augment": TextAugmentOptions(**text) if text_on else None,
    }


def _needs_mask_token(cfg: DictConfig) -> bool:
    """MLM is on (objective or masked view): the tokenizer needs a mask token."""
    return bool(
        OmegaConf.select(cfg, "objectives.mlm.enabled", default=False)
        or OmegaConf.select(cfg, "augment.mlm.enabled", default=False)
    )


def _finetune_settings(backbone: DictConfig) -> dict[str, Any] | None:
    if "finetune" not in backbone:
        return None
    return finetune_settings(OmegaConf.to_container(backbone.finetune, resolve=True))


def _check_backbone(cfg: DictConfig) -> None:
    """Fail on a bad backbone (type, settings, folder, config, weights) before any work."""
    backbone = cfg.backbone
    check_backbone_type(backbone.type)
    _finetune_settings(backbone)
    if backbone.type in PRETRAINED_TYPES:
        if OmegaConf.is_missing(backbone, "path") or not backbone.get("path"):
            raise ConfigError(
                f"backbone.path is required for backbone.type={backbone.type}: a Hugging Face "
                "folder (config.json + weights + tokenizer) or a hub id"
            )
        folder = resolve_backbone_path(backbone.path)
        read_config(folder, backbone.type)
        weight_files(folder)


def _build_model_spec(cfg: DictConfig, train_captions: list[str]):
    """(spec, tokenizer, model): ``model`` is None for a scratch CLIP (built from the spec)."""
    backbone = cfg.backbone
    check_backbone_type(backbone.type)
    mean = backbone.get("image_mean") or cfg.augment.mean  # null: the augment preset's
    std = backbone.get("image_std") or cfg.augment.std
    finetune = _finetune_settings(backbone)
    text_mask = backbone.get("text_attention_mask", True)
    interpolation = preset_interpolation(cfg.augment.preset)  # of the eval transform
    tse = tse_settings(resolve_objectives(OmegaConf.to_container(cfg.objectives, resolve=True)))
    if backbone.type in PRETRAINED_TYPES:
        _check_backbone(cfg)
        model, tokenizer = pretrained_model(
            backbone.path,
            backbone.type,
            image_size=list(backbone.image_size),
            text_length=backbone.text.length,
            temperature=backbone.temperature,
            init_temperature=backbone.get("init_temperature"),
            image_mean=list(mean),
            image_std=list(std),
            text_attention_mask=text_mask,
            finetune=finetune,
            mask_token=_needs_mask_token(cfg),
            interpolation=interpolation,
        )
        if tse is not None:
            model.add_token_selection(*tse)
        return model.spec(), tokenizer, model
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
        image_mean=list(mean),
        image_std=list(std),
        text_attention_mask=text_mask,
        finetune=finetune,
    )
    spec["interpolation"] = interpolation
    spec["token_selection"] = None if tse is None else {"ratio": tse[0], "dim": tse[1]}
    return spec, tokenizer, None


class EpochProgressBar(TQDMProgressBar):
    """Lightning's bar, counting epochs as the log does: ``Epoch 2/2``, not ``Epoch 1``."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(
            f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        )


def progress_bar_enabled(cfg: DictConfig) -> bool:
    """Bars only on a terminal: in files and SLURM logs their carriage returns glue to the
    output around them."""
    return bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stdout.isatty()


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs["enable_progress_bar"] = progress_bar_enabled(cfg)
    kwargs["precision"] = resolve_precision(cfg.trainer)
    return {k: v for k, v in kwargs.items() if v is not None}


def run_training(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train, validate every epoch, test the best and the last weights; returns metrics.json.

    ``overrides`` (the command line's ``key=value`` words) are kept in the run folder's
    ``overrides.yaml``, which ``tbps report`` shows and groups by.
    """
    # Under DDP rank 0 owns the run folder (files, train.log, report); the other ranks only train
    if not launched_rank_zero():
        tbps_log = logging.getLogger("tbps")
        level = tbps_log.level
        tbps_log.setLevel(logging.WARNING)  # rank 0 tells the story
        try:
            return _run_training(cfg, overrides, rank_zero=False)
        finally:
            tbps_log.setLevel(level)
    return _run_training(cfg, overrides, rank_zero=True)


def _run_training(cfg: DictConfig, overrides: Sequence[str], rank_zero: bool) -> dict[str, Any]:
    start = time.time()
    absolute_paths(cfg)
    objectives = resolve_objectives(OmegaConf.to_container(cfg.objectives, resolve=True))
    resume = _resume_checkpoint(cfg)
    run_dir = (
        resume.parents[1]
        if resume
        else resolve_run_dir(cfg.run_dir, cfg.runs_dir, cfg.name, check_empty=rank_zero)
    )
    check_devices(cfg.trainer, cfg.on_nonfinite_loss)
    check_precision_and_optimizer(resolve_precision(cfg.trainer), str(cfg.optim.name))
    _check_backbone(cfg)
    # fail on bad data (unknown folder, missing images) before creating the run folder
    dataset = dataset_from_config(cfg, progress=sys.stderr.isatty(), generate=rank_zero)
    check_split_images(cfg, dataset)
    if not rank_zero:
        return _run(cfg, run_dir, dataset, objectives, start, resume, rank_zero=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None:
        (run_dir / OVERRIDES_FILE).write_text(yaml.safe_dump(list(overrides)))
    file_log = logging.FileHandler(run_dir / "train.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(file_log)
    try:
        return _run(cfg, run_dir, dataset, objectives, start, resume)
    except KeyboardInterrupt as e:
        log.warning("interrupted; continue with: tbps train resume=%s", run_dir)
        raise RunInterrupted(run_dir) from e
    except BaseException as e:
        log.error("run failed: %s: %s", type(e).__name__, e)  # in train.log, not only stderr
        raise
    finally:
        _finish_wandb_run()
        logging.getLogger().removeHandler(file_log)
        file_log.close()


def _finish_wandb_run() -> None:
    """Close this run's W&B run: Lightning leaves it open, and the next run of a sweep in this
    process would log into it instead of starting its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _interruptible(trainer: L.Trainer, call, *args, **kwargs):
    """Run a Trainer entry point; Lightning turns Ctrl-C into ``sys.exit(1)`` (and leaves
    SIGINT ignored): turn it back into KeyboardInterrupt with the handler restored."""
    try:
        return call(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise


def check_split_images(cfg: DictConfig, dataset: DatasetSplits) -> None:
    """With ``data.on_bad_image=error``, every image of the train, val and test splits must
    exist (a cheap check now; unreadable files still fail when they are loaded)."""
    if cfg.data.on_bad_image != "error":
        return
    for split in dict.fromkeys(("train", cfg.data.val_split, cfg.data.test_split)):
        if split in dataset.splits:
            check_images(dataset.split(split), "error", split)


def _resume_checkpoint(cfg: DictConfig) -> Path | None:
    """``<resume>/checkpoints/last.ckpt`` when resuming (``resume=RUN_DIR``), else None."""
    resume = cfg.get("resume")
    if not resume:
        return None
    if (Path(resume).expanduser() / "metrics.json").is_file() and not cfg.get("resume_finished"):
        raise NothingToDo(
            f"{resume} is finished (metrics.json); nothing to do. Evaluate it with tbps eval "
            f"ckpt_path={Path(resume) / 'checkpoints' / 'best.ckpt'}, or re-test it with "
            "resume_finished=true"
        )
    ckpt = Path(resume).expanduser() / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise ConfigError(f"cannot resume {resume}: no checkpoints/last.ckpt in it")
    return ckpt


def check_devices(trainer: DictConfig, on_nonfinite_loss: str = "error") -> None:
    """Reject a device request this machine cannot serve, before any work."""
    devices = trainer.get("devices", 1)
    count = len(devices) if isinstance(devices, list | tuple) else devices
    count = int(count) if str(count).isdigit() else 1  # "auto": one device on a CPU
    several = trainer.get("num_nodes", 1) > 1 or count > 1
    if on_nonfinite_loss == "skip" and several:
        raise ConfigError(
            "on_nonfinite_loss=skip works on one device only (ranks would disagree on the "
            "skipped step); use on_nonfinite_loss=error with several devices"
        )
    accelerator = str(trainer.get("accelerator", "auto"))
    precision = str(trainer.get("precision", "32-true"))
    strategy = str(trainer.get("strategy", "auto"))
    if any(word in strategy for word in ("spawn", "fork", "notebook")):
        raise ConfigError(
            f"trainer.strategy={strategy} is not supported: tbps reads the test results in the "
            "process that trains; use trainer.strategy=ddp (Lightning then starts the other "
            "processes itself) or launch with torchrun / srun (docs/multi-gpu.md)"
        )
    gpus = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda"):
        if gpus == 0:
            raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU")
        if count > gpus:
            raise ConfigError(
                f"trainer.devices={devices} asks for {count} GPUs; this machine has {gpus}"
            )
    if precision.startswith("16") and (gpus == 0 or accelerator == "cpu"):
        raise ConfigError(
            f"trainer.precision={precision} (fp16 with loss scaling) needs a GPU; on CPU use "
            "32-true (bf16-mixed runs but is many times slower on CPUs without bf16 units)"
        )


def _callbacks(cfg: DictConfig, run_dir: Path, num_workers: int) -> tuple[ModelCheckpoint, list]:
    """(best-on-val checkpoint callback, all callbacks). ``last.ckpt`` has its own callback:
    Lightning's ``save_last`` only refreshes it when the best checkpoint changes, which would
    make a resume repeat epochs."""
    folder = run_dir / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=folder,
        filename="best",
        monitor="val/t2i/R1",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(
        dirpath=folder, filename="last", save_top_k=1, enable_version_counter=False
    )
    callbacks = [
        checkpoint,
        last,
        LearningRateMonitor(logging_interval="step"),
        RNGState(),
        WallClock(),
    ]
    if progress_bar_enabled(cfg):
        callbacks.append(EpochProgressBar())
    stop = cfg.early_stopping
    if stop.enabled:
        callbacks.append(
            EarlyStopping(
                monitor=stop.monitor,
                mode=stop.mode,
                patience=stop.patience,
                min_delta=stop.min_delta,
                verbose=True,
            )
        )
    return checkpoint, callbacks + _boosting_callbacks(cfg, num_workers)


def _loggers(cfg: DictConfig, run_dir: Path, resumed: bool) -> list:
    """Experiment loggers; a resumed run writes its CSV log into logs/resume-<n>/ so the first
    part's metrics.csv is never overwritten."""
    version = ""
    if resumed:
        n = 1
        while (run_dir / "logs" / f"resume-{n}").exists():
            n += 1
        version = f"resume-{n}"
    wandb = cfg.logger.get("wandb") or {}
    return build_loggers(
        list(cfg.logger.types),
        run_dir,
        cfg.name,
        csv_version=version,
        wandb_project=wandb.get("project", "tbps"),
        wandb_entity=wandb.get("entity"),
        wandb_mode=wandb.get("mode"),
        wandb_group=wandb.get("group"),
    )


def _failure_report(
    cfg: DictConfig,
    module: TBPSLightningModule,
    datamodule: TBPSDataModule,
    run_dir: Path,
    loggers: list,
) -> str | None:
    """failures.html in the run folder (and a W&B table when W&B logs) for the test split."""
    emb = module.embeddings.get("test")
    limit = cfg.report.failures
    if emb is None or not limit:
        return None
    gallery, queries = datamodule.build_eval(cfg.data.test_split)
    sim = emb["texts"] @ emb["images"].t()
    cases = find_failures(sim, emb["text_pids"], emb["image_pids"], k=10, limit=limit)
    captions = [c for _, c in queries.queries]
    paths = [p for _, p in gallery.gallery]
    out = write_failure_report(
        cases,
        captions,
        paths,
        run_dir / "failures.html",
        title=f"{cfg.name}: test failures",
        metrics=module.results.get("test"),
    )
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            log_wandb_failures(logger.experiment, cases, captions, paths)
    log.info("failure report: %s (%d queries)", out, len(cases))
    return str(out)


#: settings that may differ between nodes (where each finds its files), left out of the
#: configuration digest the ranks compare
NODE_LOCAL_KEYS = ("run_dir", "runs_dir", "cache_dir", "resume", "data.root", "backbone.path")


def config_digest(cfg: DictConfig) -> str:
    """A digest of the resolved configuration without the node-local paths."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in NODE_LOCAL_KEYS:
        *parents, leaf = key.split(".")
        node = plain
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return text_digest(json.dumps(plain, sort_keys=True, default=str))


def dataset_digest(dataset: DatasetSplits) -> str:
    """A digest of what the splits hold: per image its path below the root, pid and captions."""
    root = str(dataset.root)
    rows = [
        (split, os.path.relpath(r.image_path, root), r.pid, r.captions)
        for split in sorted(dataset.splits)
        for r in dataset.splits[split]
    ]
    return text_digest(json.dumps(rows))


def _boosting_callbacks(cfg: DictConfig, num_workers: int) -> list[HardSampleBoosting]:
    boost = cfg.boosting
    if not boost.enabled:
        return []
    return [
        HardSampleBoosting(
            every_n_epochs=boost.every_n_epochs,
            weight=boost.weight,
            top_k=boost.top_k,
            batch_size=cfg.loader.eval_batch_size,
            num_workers=num_workers,
        )
    ]


def _run(
    cfg: DictConfig,
    run_dir: Path,
    dataset: DatasetSplits,
    objectives: dict[str, dict[str, Any]],
    start: float,
    resume: Path | None = None,
    rank_zero: bool = True,
) -> dict[str, Any]:
    log.info("%s run folder: %s", "resuming in" if resume else "new", run_dir)
    if resume is None and rank_zero:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        (run_dir / "provenance.json").write_text(json.dumps(provenance(), indent=2))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_captions = [c for img in dataset.split("train") for c in img.captions]
    spec, tokenizer, model = _build_model_spec(cfg, train_captions)
    if rank_zero:
        tokenizer.save_pretrained(run_dir / "tokenizer")
    on_cuda = trains_on_cuda(cfg.trainer)
    if on_cuda:
        use_cuda_defaults()
    num_workers = resolve_num_workers(
        cfg.loader.num_workers, on_cuda, devices_per_node(cfg.trainer)
    )
    log.info(
        "precision %s, %d loader worker(s)%s",
        resolve_precision(cfg.trainer),
        num_workers,
        ", pinned memory" if on_cuda else "",
    )

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
        num_workers=num_workers,
        val_split=cfg.data.val_split,
        test_split=cfg.data.test_split,
        on_bad_image=cfg.data.on_bad_image,
        seed=cfg.seed,
        sampler=cfg.loader.sampler,
        num_instances=cfg.loader.num_instances,
        cache_images=cfg.loader.get("cache_images", "auto"),
        **data_views_from_config(cfg),
    )
    datamodule.build_train()  # fixes num_classes (train pids remapped to 0..N-1)
    module = TBPSLightningModule(
        model_spec=spec,
        objectives=objectives,
        num_classes=datamodule.num_classes,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        tokenizer_state=tokenizer_state(tokenizer),
        model=model,
        on_nonfinite=cfg.on_nonfinite_loss,
        augment_preset=cfg.augment.preset,
    )
    n_trainable, n_params = count_parameters(module)
    log.info(
        "model: %s, %.2fM parameters, %.2fM trainable (%.1f%%)",
        cfg.backbone.name,
        n_params / 1e6,
        n_trainable / 1e6,
        100.0 * n_trainable / max(n_params, 1),
    )

    checkpoint, callbacks = _callbacks(cfg, run_dir, num_workers)
    clock = next(c for c in callbacks if isinstance(c, WallClock))
    agreement = RankAgreement(
        run_dir,
        {
            "config": config_digest(cfg),
            "data": dataset_digest(dataset),
            "tokenizer": files_digest(module.tokenizer_state["files"]),
        },
    )
    callbacks.append(agreement)
    loggers = _loggers(cfg, run_dir, resumed=resume is not None)
    for logger in loggers:
        logger.log_hyperparams(
            {"config": OmegaConf.to_container(cfg, resolve=True), "provenance": provenance()}
        )
    trainer = L.Trainer(
        default_root_dir=run_dir,
        logger=loggers,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        **_trainer_kwargs(cfg),
    )
    if trainer.world_size > 1:
        log.info(
            "DDP: %d processes x loader.batch_size %d x %d accumulated = %d samples per step",
            trainer.world_size,
            cfg.loader.batch_size,
            trainer.accumulate_grad_batches,
            trainer.world_size * cfg.loader.batch_size * trainer.accumulate_grad_batches,
        )
    zero_shot = None
    if resume is not None:
        check_compatible(module, resume)
    elif cfg.validate_before_training:
        _interruptible(trainer, trainer.validate, module, datamodule=datamodule, verbose=False)
        zero_shot = module.results.get("val")
    _interruptible(
        trainer,
        trainer.fit,
        module,
        datamodule=datamodule,
        ckpt_path=str(resume) if resume else None,
    )

    run_dir = agreement.run_dir  # rank 0's folder on every rank
    results: dict[str, Any] = {}
    with warnings.catch_warnings():
        # under DDP the padded repeats of the eval sampler are de-duplicated by dataset index
        warnings.filterwarnings("ignore", message=r".*During `trainer.test\(\)`, it is recommended")
        module.test_label = "last"  # logged as test/last/t2i/R1 ...
        _interruptible(trainer, trainer.test, module, datamodule=datamodule, verbose=False)
        results["last"] = module.results.get("test")
        best_path = checkpoint.best_model_path
        if best_path:
            module.test_label = "best"
            _interruptible(
                trainer,
                trainer.test,
                module,
                datamodule=datamodule,
                ckpt_path=best_path,
                verbose=False,
            )
            results["best"] = module.results.get("test")

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
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "zero_shot_val": zero_shot,
        "resumed_from": str(resume) if resume else None,
        # over exactly what was scored (debug presets score a few batches of the split),
        # computed once by the module (rank 0's, broadcast)
        "chance": module.chance.get("test"),
        "num_train_ids": datamodule.num_classes,
        "num_parameters": n_params,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "world_size": trainer.world_size,
        "wall_seconds": round(clock.before + time.time() - start, 1),  # across resumes
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }
    if trainer.is_global_zero:
        metrics["failure_report"] = _failure_report(cfg, module, datamodule, run_dir, loggers)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        rows = {f"test ({k})": v for k, v in results.items() if v}
        if metrics["chance"]:
            rows["chance"] = metrics["chance"]
        sys.stderr.flush()  # progress output first: the table stands on lines of its own
        print("\n" + format_table(rows), flush=True)
        print(
            f"run folder: {run_dir}  ({metrics['wall_seconds']} s, peak RSS "
            f"{metrics['peak_rss_mib']} MiB)"
        )
    return metrics
