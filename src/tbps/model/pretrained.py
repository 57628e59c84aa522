"""Load pretrained CLIP/SigLIP weights and tokenizers from a Hugging Face folder or hub id."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tbps.errors import DataError
from tbps.model.backbone import KINDS, Backbone, backbone_config

log = logging.getLogger(__name__)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _fetch_hint(repo: str) -> str:
    local = repo.split("/")[-1]
    return (
        f"on a machine with network access run `hf download {repo} --local-dir {local}` "
        f'(or python -c "from huggingface_hub import snapshot_download; '
        f"snapshot_download('{repo}', local_dir='{local}')\"), copy the folder here and set "
        f"backbone.path=/path/to/{local}"
    )


def resolve_backbone_path(path: str | os.PathLike) -> Path:
    """A local folder for ``path``: the folder itself, or a hub id downloaded (when online).

    Offline, a hub id that is not in the local Hugging Face cache raises a DataError saying
    how to fetch the folder on another machine.
    """
    text = str(path)
    local = Path(text).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise DataError(
            f"backbone.path={text} is a file; expected a Hugging Face folder (config.json + "
            "model.safetensors or pytorch_model.bin). OpenAI / open_clip checkpoints: "
            f"tbps convert src={text} out=DIR, then backbone.path=DIR"
        )
    if not _HUB_ID.match(text):
        raise DataError(f"backbone folder {text} does not exist")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id=text, allow_patterns=HUB_FILES))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth, network errors
        raise DataError(
            f"backbone.path={text} is not a local folder and could not be fetched from the "
            f"Hugging Face hub ({type(e).__name__}); {_fetch_hint(text)}"
        ) from e
    log.info("backbone %s resolved to %s", text, folder)
    return folder


def read_config(folder: Path, kind: str):
    """The transformers config of ``folder`` (config.json), checked to be of ``kind``."""
    path = folder / "config.json"
    if not path.is_file():
        raise DataError(f"{folder} has no config.json; expected a Hugging Face model folder")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    model_type = raw.get("model_type")
    if model_type not in KINDS:
        raise DataError(
            f"{path}: model_type {model_type!r} is not supported; valid: {', '.join(KINDS)}"
        )
    if model_type != kind:
        raise DataError(
            f"{path}: model_type is {model_type!r} but backbone.type expects {kind!r}; "
            f"use backbone.type={model_type} (or a {model_type} backbone config)"
        )
    config = backbone_config(kind, raw)
    for sub in (config, config.text_config, config.vision_config):
        sub.dtype = torch.float32  # train and evaluate in fp32 whatever the file's dtype
    return config


def weight_files(folder: Path) -> list[Path]:
    """The weight file(s) of ``folder``: safetensors first, then .bin; sharded indexes resolved."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise DataError(f"cannot read the shard index {path}: {e}") from e
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise DataError(f"{path} lists shard(s) missing from {folder}: {', '.join(missing)}")
        return [folder / s for s in shards]
    raise DataError(
        f"{folder} has no weights: expected one of {', '.join(WEIGHT_FILES)} next to config.json"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one weight file (safetensors, or a pickled state dict read weights-only)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, SafetensorError, ValueError) as e:
        raise DataError(f"cannot read weights {path}: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path} is not a state dict of tensors")
    return state


def load_weights(model: Backbone, folder: Path) -> None:
    """Load the folder's weights into ``model``, strictly: every key and shape must fit.

    Keys of non-persistent buffers (``position_ids`` of older transformers) are ignored.
    """
    files = weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(read_state_dict(path))
    source = files[0] if len(files) == 1 else files[0].parent
    buffers = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    load_state_strictly(model, {k: v for k, v in state.items() if k not in buffers}, str(source))


def load_state_strictly(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str
) -> None:
    """Load ``state`` into ``model``: every key and shape must fit, else one DataError naming
    ``source`` and the first key or shape that does not (weights of another architecture)."""
    expected = model.state_dict()
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise DataError(
                f"{source}: weight {key!r} has shape {tuple(value.shape)} but config.json "
                f"expects {tuple(expected[key].shape)}; the weights do not fit the config"
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        raise DataError(f"{source}: weights do not fit the model config: {', '.join(parts)}")
    model.load_state_dict(state, strict=True)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``folder`` (CLIP BPE or SigLIP SentencePiece)."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(
            f"{folder} has no tokenizer: expected tokenizer.json or vocab.json + merges.txt "
            "(CLIP), or spiece.model (SigLIP)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - transformers raises many types for bad folders
        raise DataError(f"cannot load the tokenizer in {folder}: {e}") from e


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, config, kind: str, folder: Path) -> None:
    """The tokenizer must fit the text tower: same vocabulary size, special ids in range."""
    vocab = config.text_config.vocab_size
    if len(tokenizer) != vocab:
        raise DataError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but config.json "
            f"text_config.vocab_size is {vocab}; tokenizer and weights must come from one model"
        )
    needed = ("bos", "eos", "pad") if kind == "clip" else ("eos", "pad")
    for name in needed:
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is None or not 0 <= token_id < vocab:
            raise DataError(f"{folder}: the tokenizer's {name} token id {token_id} is not valid")


def align_special_tokens(config, tokenizer: PreTrainedTokenizerBase) -> None:
    """Write the tokenizer's bos/eos/pad ids (None where it has none) into the text config.

    CLIP pools at eos: older CLIP configs carry ``eos_token_id=2``, which makes transformers
    pool at the largest token id; the real ids pool at the first end-of-text token, which also
    holds once a mask token is added after the vocabulary. SigLIP configs often keep CLIP's
    default ids, outside their vocabulary.
    """
    text = config.text_config
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    changed = {k: v for k, v in ids.items() if getattr(text, k, None) != v}
    for key, value in changed.items():
        setattr(text, key, value)
    if changed:
        log.info("text config special-token ids set from the tokenizer: %s", changed)
