"""Load the model a command names: ``model=DIR`` (a model folder) or ``ckpt_path=FILE``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tbps.errors import ConfigError
from tbps.model.tbps import TBPSModel


def model_source(cfg) -> tuple[str, str]:
    """``("model", DIR)`` or ``("ckpt_path", FILE)``; exactly one must be given."""
    folder, ckpt = cfg.get("model"), cfg.get("ckpt_path")
    if bool(folder) == bool(ckpt):
        raise ConfigError(
            "give exactly one of model=DIR (a model folder from tbps export) or "
            "ckpt_path=RUN/checkpoints/best.ckpt (a tbps train checkpoint)"
            + ("" if not folder else f"; got both model={folder} and ckpt_path={ckpt}")
        )
    return ("model", str(folder)) if folder else ("ckpt_path", str(ckpt))


def load_model(cfg) -> TBPSModel:
    """The TBPSModel (eval mode, CPU) of ``cfg.model`` or ``cfg.ckpt_path``."""
    key, path = model_source(cfg)
    if key == "model":
        return TBPSModel.from_pretrained(path)
    from tbps.model.checkpoint import model_from_checkpoint

    return model_from_checkpoint(path)


def model_info(cfg) -> dict[str, Any]:
    """The provenance a model records (``info`` of its folder's config.json, or the run folder
    of a checkpoint), read without loading any weights; {} when there is none."""
    key, path = model_source(cfg)
    if key == "ckpt_path":
        from tbps.model.checkpoint import checkpoint_info

        return checkpoint_info(Path(path))
    config = Path(path).expanduser() / "config.json"
    try:
        return dict(json.loads(config.read_text()).get("info") or {})
    except (OSError, ValueError, AttributeError):
        return {}  # loading the folder reports what is wrong with it
