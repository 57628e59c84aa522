"""Read the retrieval model out of a ``tbps train`` checkpoint file (Lightning not needed)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tbps.data.tokenization import tokenizer_from_json
from tbps.errors import DataError
from tbps.model.pretrained import load_state_strictly
from tbps.model.tbps import TBPSModel
from tbps.model.token_selection import reject_legacy_layout

#: state-dict prefixes renamed since tbps 0.1 wrote its first checkpoints (old -> new)
_RENAMED_PREFIXES = {"heads.tse.": "model.token_selection."}


def tokenizer_state(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The tokenizer as stored in a checkpoint: the bytes of its ``save_pretrained`` files.

    Works for fast (BPE) and SentencePiece tokenizers alike, added tokens included.
    """
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
    return {"files": files}


def tokenizer_from_state(state: dict[str, Any]) -> PreTrainedTokenizerBase:
    """Rebuild a tokenizer stored by :func:`tokenizer_state` (or the older JSON form)."""
    if "files" not in state:
        return tokenizer_from_json(state["json"], state["special_tokens"])
    with tempfile.TemporaryDirectory() as folder:
        for name, data in state["files"].items():
            (Path(folder) / Path(name).name).write_bytes(data)
        return AutoTokenizer.from_pretrained(folder)


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A ``tbps train`` checkpoint as a dict (weights-only loading), checked for what tbps needs."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad files
        raise DataError(
            f"cannot read checkpoint {path} (not a tbps training checkpoint?): {e}"
        ) from e
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "model_spec" not in hparams or "state_dict" not in ckpt:
        raise DataError(
            f"{path} is not a tbps training checkpoint (no model_spec / state_dict); a model "
            "folder is loaded with model=DIR instead"
        )
    if "tbps_tokenizer" not in ckpt:
        raise DataError(f"{path} has no tokenizer (tbps_tokenizer); was it written by tbps train?")
    return ckpt


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of older checkpoints to today's (e.g. the token-selection head that
    moved from the training heads onto the model)."""
    out = {}
    for key, value in state.items():
        for old, new in _RENAMED_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    return out


def checkpoint_model_spec(hparams: dict[str, Any]) -> dict[str, Any]:
    """The model spec of a checkpoint, completed for checkpoints written before the spec held
    the token-selection settings and the eval interpolation."""
    spec = dict(hparams["model_spec"])
    if "token_selection" not in spec:
        from tbps.losses import resolve_objectives, tse_settings

        tse = tse_settings(resolve_objectives(hparams.get("objectives") or {}))
        spec["token_selection"] = None if tse is None else {"ratio": tse[0], "dim": tse[1]}
    if "interpolation" not in spec:
        from tbps.data.transforms import PRESETS

        preset = hparams.get("augment_preset", "none")
        spec["interpolation"] = PRESETS.get(preset, PRESETS["none"])[1].value
    return spec


def model_from_checkpoint(path: str | os.PathLike) -> TBPSModel:
    """The retrieval model (towers, token selection, tokenizer, eval preprocessing) of a
    checkpoint written by ``tbps train``, in eval mode; training-only heads are left out."""
    ckpt = read_training_checkpoint(path)
    spec = checkpoint_model_spec(ckpt["hyper_parameters"])
    model = TBPSModel.from_spec(spec, tokenizer=tokenizer_from_state(ckpt["tbps_tokenizer"]))
    state = {
        k.removeprefix("model."): v
        for k, v in upgrade_state_dict(ckpt["state_dict"]).items()
        if k.startswith("model.")
    }
    reject_legacy_layout(state, str(path))
    load_state_strictly(model, state, str(path))
    model.info = checkpoint_info(Path(path))
    return model.eval()


def checkpoint_info(path: Path) -> dict[str, Any]:
    """Provenance of a checkpoint: its run folder and, from the run's ``config.yaml``, the
    data section it was trained on (what ``tbps eval`` defaults to)."""
    run_dir = path.expanduser().absolute().parents[1]
    info: dict[str, Any] = {"checkpoint": str(path), "run_dir": str(run_dir)}
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        try:
            data = (yaml.safe_load(config.read_text()) or {}).get("data")
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict):
            info["data"] = data
    return info
