"""Export a TBPSModel: the backbone as a stock transformers folder, or ONNX encoders.

HF folders and non-square position tables: a stock ``CLIPModel`` / ``SiglipModel`` only knows
square position grids, so the exported ``model.safetensors`` holds the table resized to the
square grid of ``vision_config.image_size`` (the backbone's native size; for a scratch model
the larger input side) and ``transformers.AutoModel.from_pretrained`` loads it as it is. The
exact trained (H/p) x (W/p) table is kept beside it in ``tbps_positions.safetensors``:
``tbps train backbone.path=DIR`` (and :func:`tbps.model.factory.pretrained_model`) start from
that table, so a model exported at 384x128 and trained again at 384x128 starts from exactly
the weights it was exported with.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPModel, SiglipModel

from tbps.errors import ConfigError, DataError
from tbps.model.backbone import Backbone, resize_vision_positions, set_image_size
from tbps.model.tbps import CONFIG_FILE, TBPSModel

log = logging.getLogger(__name__)

POSITIONS_FILE = "tbps_positions.safetensors"
IMAGE_ONNX = "image_encoder.onnx"
TEXT_ONNX = "text_encoder.onnx"
FORMATS = ("tbps", "hf", "onnx")
ONNX_TOLERANCE = 1e-4


def export_hf(model: TBPSModel, out: str | os.PathLike) -> Path:
    """Write the fine-tuned backbone (LoRA merged) and the tokenizer as a transformers folder
    that ``AutoModel.from_pretrained(out)`` loads (see the module docstring for positions)."""
    out = Path(out)
    model = copy.deepcopy(model).merge_lora()
    hf = model.hf
    embeddings = hf.vision_model.embeddings
    patch, (height, width) = embeddings.patch_size, model.image_size
    config = copy.deepcopy(hf.config)
    side = int(config.vision_config.image_size)
    if side <= patch or side % patch:  # a scratch model's placeholder size
        side = max(height, width)
    config.vision_config.image_size = side
    grid = (side // patch, side // patch)
    exact = embeddings.position_embedding.weight.detach().clone()
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    key = "vision_model.embeddings.position_embedding.weight"
    state[key] = resize_vision_positions(exact, embeddings.grid, grid, embeddings.prefix_rows)
    stock = (CLIPModel if model.kind == "clip" else SiglipModel)(config)
    missing, unexpected = stock.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(
            f"HF export: state does not fit {type(stock).__name__}: {missing[:3]} {unexpected[:3]}"
        )
    stock.save_pretrained(str(out))
    save_file(
        {"position_embedding": exact.contiguous()},
        str(out / POSITIONS_FILE),
        metadata={"image_size": f"{height},{width}", "patch_size": str(patch)},
    )
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    log.info("HF folder written to %s (square grid %dx%d for stock transformers)", out, *grid)
    return out


def restore_exact_positions(backbone: Backbone, folder: Path) -> tuple[int, int] | None:
    """If ``folder`` was written by :func:`export_hf`, give ``backbone`` (just loaded from it)
    the exact non-square position table it was exported with; returns that (H, W) or None."""
    path = folder / POSITIONS_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    try:
        height, width = (int(x) for x in meta["image_size"].split(","))
        table = load_file(str(path))["position_embedding"]
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: not a tbps position table ({e})") from e
    set_image_size(backbone, (height, width))
    weight = backbone.vision_model.embeddings.position_embedding.weight
    if tuple(weight.shape) != tuple(table.shape):
        raise DataError(
            f"{path}: table of shape {tuple(table.shape)} does not fit the {height}x{width} "
            f"grid of config.json ({tuple(weight.shape)})"
        )
    with torch.no_grad():
        weight.copy_(table)
    return height, width


class ImageEncoder(nn.Module):
    """``pixel_values`` (B, 3, H, W) -> unit-norm retrieval embeddings (B, D)."""

    def __init__(self, model: TBPSModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(pixel_values)


class TextEncoder(nn.Module):
    """``input_ids``, ``attention_mask`` (B, L) int64 -> unit-norm retrieval embeddings (B, D)."""

    def __init__(self, model: TBPSModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_texts(input_ids, attention_mask)


def _example_inputs(model: TBPSModel, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pixels and caption ids of realistic lengths (padding included)."""
    generator = torch.Generator().manual_seed(seed)
    height, width = model.image_size
    config = model.hf.config.text_config
    length, vocab = model.text_length, model.vocab_size
    special = {config.bos_token_id, config.eos_token_id, config.pad_token_id}
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    for bad in special - {None}:
        ids[ids == bad] = next(i for i in range(vocab) if i not in special)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for i in range(batch):
        n = int(torch.randint(3, length + 1, (1,), generator=generator))
        if config.bos_token_id is not None:
            ids[i, 0] = config.bos_token_id
        ids[i, n - 1] = config.eos_token_id
        if config.pad_token_id is not None:
            ids[i, n:] = config.pad_token_id
        mask[i, :n] = 1
    return {
        "pixel_values": torch.randn(batch, 3, height, width, generator=generator),
        "input_ids": ids,
        "attention_mask": mask,
    }


def require_onnx() -> None:
    """Raise a ConfigError naming the missing packages of the ``[onnx]`` extra."""
    import importlib.util

    missing = [
        m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise ConfigError(
            f"format=onnx needs {', '.join(missing)}: pip install 'tbps[onnx]' (or pip install "
            f"{' '.join(missing)})"
        )


def export_onnx(
    model: TBPSModel, out: str | os.PathLike, opset: int = 18, verify: bool = True
) -> dict[str, Any]:
    """Write ``image_encoder.onnx`` and ``text_encoder.onnx`` (dynamic batch axis), the model
    folder's ``config.json`` and the tokenizer files; with ``verify``, run both in onnxruntime
    on random inputs of another batch size and compare with torch (max |diff| <= 1e-4).
    Returns ``{"image_max_diff", "text_max_diff", "files"}``."""
    require_onnx()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).merge_lora().float().cpu().eval()
    model.pooled_shortcut = False  # the full forward: static shapes for the exporter
    example = _example_inputs(model, batch=2)
    batch = torch.export.Dim("batch", min=1, max=4096)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    external = parameters > 1.8 * 2**30  # protobuf's 2 GiB limit
    jobs = [
        (ImageEncoder(model), IMAGE_ONNX, (example["pixel_values"],), {"pixel_values": {0: batch}}),
        (
            TextEncoder(model),
            TEXT_ONNX,
            (example["input_ids"], example["attention_mask"]),
            {"input_ids": {0: batch}, "attention_mask": {0: batch}},
        ),
    ]
    names = {IMAGE_ONNX: ["pixel_values"], TEXT_ONNX: ["input_ids", "attention_mask"]}
    for wrapper, name, args, shapes in jobs:
        start = time.perf_counter()
        wrapper.eval()
        with torch.no_grad(), warnings.catch_warnings():
            # both encoders' inputs share the one batch axis; the exporter says so
            warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used")
            program = torch.onnx.export(
                wrapper,
                args,
                dynamo=True,
                input_names=names[name],
                output_names=["embeddings"],
                dynamic_shapes=shapes,
                opset_version=opset,
                external_data=external,
                verbose=False,
            )
        program.save(str(out / name), external_data=external)
        log.info("%s written in %.1f s", name, time.perf_counter() - start)
    (out / CONFIG_FILE).write_text(json.dumps(model.folder_config(), indent=2))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    report: dict[str, Any] = {"files": sorted(p.name for p in out.iterdir())}
    if verify:
        report.update(check_onnx_parity(model, out))
    return report


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU inference session (``threads``: intra-op threads, None = default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx_parity(model: TBPSModel, folder: Path, batch: int = 3) -> dict[str, float]:
    """Max |onnxruntime - torch| of both encoders on random inputs of ``batch`` rows; raises
    when either exceeds ``ONNX_TOLERANCE``."""
    inputs = _example_inputs(model, batch=batch, seed=1)
    with torch.no_grad():
        want_image = model.encode_images(inputs["pixel_values"]).numpy()
        want_text = model.encode_texts(inputs["input_ids"], inputs["attention_mask"]).numpy()
    image = onnx_session(folder / IMAGE_ONNX).run(
        None, {"pixel_values": inputs["pixel_values"].numpy()}
    )[0]
    text = onnx_session(folder / TEXT_ONNX).run(
        None,
        {
            "input_ids": inputs["input_ids"].numpy(),
            "attention_mask": inputs["attention_mask"].numpy(),
        },
    )[0]
    diffs = {
        "image_max_diff": float(np.abs(image - want_image).max()),
        "text_max_diff": float(np.abs(text - want_text).max()),
    }
    bad = {k: v for k, v in diffs.items() if not v <= ONNX_TOLERANCE}
    if bad:
        raise RuntimeError(f"ONNX export differs from torch beyond {ONNX_TOLERANCE}: {bad}")
    return diffs
