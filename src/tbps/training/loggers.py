"""Experiment loggers (CSV, TensorBoard, W&B) and the provenance logged with every run."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from tbps.errors import ConfigError

log = logging.getLogger(__name__)

LOGGERS = ("csv", "tensorboard", "wandb")
PACKAGES = (
    "tbps",
    "torch",
    "torchvision",
    "lightning",
    "transformers",
    "tokenizers",
    "hydra-core",
    "omegaconf",
    "safetensors",
    "peft",
    "numpy",
    "pillow",
    "wandb",
    "tensorboard",
)


def build_loggers(
    kinds: Sequence[str],
    run_dir: str | os.PathLike,
    name: str,
    csv_version: str = "",
    wandb_project: str = "tbps",
    wandb_entity: str | None = None,
    wandb_mode: str | None = None,
    wandb_group: str | None = None,
) -> list[Logger]:
    """Loggers writing under ``run_dir``: ``csv`` -> logs/<csv_version>/metrics.csv,
    ``tensorboard`` -> logs/tensorboard, ``wandb`` -> wandb/ (``wandb_mode="offline"`` needs no
    account; ``wandb_group`` gathers the runs of one sweep)."""
    unknown = [k for k in kinds if k not in LOGGERS]
    if unknown or not kinds:
        raise ConfigError(f"logger.types {list(kinds)}: valid entries are {', '.join(LOGGERS)}")
    run_dir = Path(run_dir)
    loggers: list[Logger] = []
    for kind in kinds:
        if kind == "csv":
            loggers.append(CSVLogger(save_dir=run_dir, name="logs", version=csv_version))
        elif kind == "tensorboard":
            try:
                loggers.append(
                    TensorBoardLogger(
                        save_dir=run_dir / "logs",
                        name="tensorboard",
                        version="",
                        default_hp_metric=False,
                    )
                )
            except ModuleNotFoundError as e:
                raise ConfigError(
                    "logger tensorboard needs `pip install 'tbps[tensorboard]'` (or pip install tensorboard)"
                ) from e
        else:
            try:
                import wandb  # noqa: F401
                from lightning.pytorch.loggers import WandbLogger
            except ModuleNotFoundError as e:
                raise ConfigError(
                    "logger wandb needs `pip install 'tbps[wandb]'` (or pip install wandb)"
                ) from e
            # the mode goes to this run's wandb.init only (not the process environment, which
            # would carry it into the next run of a sweep)
            mode = {"mode": wandb_mode} if wandb_mode else {}
            loggers.append(
                WandbLogger(
                    name=name,
                    save_dir=run_dir,
                    project=wandb_project,
                    entity=wandb_entity,
                    group=wandb_group,
                    offline=wandb_mode == "offline",
                    **mode,
                )
            )
    return loggers


def git_revision(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``path`` (or the cwd)."""
    cwd = Path(path) if path else Path.cwd()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance() -> dict[str, Any]:
    """What produced a run: code revision (of the tbps source and of the cwd), versions, host."""
    source = Path(__file__).resolve().parents[3]
    return {
        "tbps_source_git": git_revision(source),
        "cwd_git": git_revision(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
