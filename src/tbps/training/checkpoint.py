"""Read tbps Lightning checkpoints back into a model and its tokenizer."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tbps.data.tokenization import tokenizer_from_json
from tbps.errors import DataError
from tbps.model.tbps import TBPSModel


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


def load_checkpoint(path: str | os.PathLike) -> tuple[TBPSModel, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) from a checkpoint written by ``tbps train``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad files
        raise DataError(f"cannot read checkpoint {path}: {e}") from e
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "model_spec" not in hparams or "state_dict" not in ckpt:
        raise DataError(f"{path} is not a tbps training checkpoint (no model_spec / state_dict)")
    if "tbps_tokenizer" not in ckpt:
        raise DataError(f"{path} has no tokenizer (tbps_tokenizer); was it written by tbps train?")
    model = TBPSModel.from_spec(hparams["model_spec"])
    state = {
        k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
    }
    model.load_state_dict(state)
    return model.eval(), tokenizer_from_state(ckpt["tbps_tokenizer"])
