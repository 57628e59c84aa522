"""`tbps train resume=RUN_DIR`: the saved configuration of a run, ready to continue it."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from tbps.errors import ConfigError

log = logging.getLogger(__name__)


def resume_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """The run's ``config.yaml`` with ``resume`` set and ``key=value`` overrides applied.

    Overrides may only change keys the saved config has (e.g. ``loader.num_workers=2``); the
    run folder, the data, the model and the schedule come from the run itself.
    """
    run_dir = Path(run_dir).expanduser()
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"cannot resume {run_dir}: no config.yaml (not a tbps run folder)")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise ConfigError(f"cannot resume {run_dir}: no checkpoints/last.ckpt in it")
    cfg = OmegaConf.load(config_file)
    OmegaConf.set_struct(cfg, False)
    cfg.resume = str(run_dir)
    cfg.run_dir = str(run_dir)
    OmegaConf.set_struct(cfg, True)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not key=value")
        if key in ("run_dir", "resume") or key.split(".")[0] in (
            "data",
            "backbone",
            "objectives",
            "optim",
        ):
            raise ConfigError(
                f"{key} cannot change when resuming (it is fixed by {config_file}); start a new run"
            )
        if key == "resume_finished":  # not in the config.yaml of runs from tbps 0.1
            with open_dict(cfg):
                cfg.resume_finished = bool(yaml.safe_load(value))
            continue
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"unknown config key {key!r} in {config_file}")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
        log.warning("resuming with %s (the run was started with a different value)", override)
    return cfg
