"""Published models of other methods as tbps model folders: IRRA's released ``best.pth``.

IRRA's file is ``{"model", "optimizer", "scheduler", "num_epoch", "iteration", "epoch"}``; its
backbone keys are ``base_model.`` + OpenAI CLIP names (``module.`` may lead), linear weights in
fp16 and the rest in fp32; the visual position table is stored already resized to the
training image size. The temperature and the image size are only in the ``configs.yaml``
written beside it (a ``yaml.dump`` of argparse arguments, tuples tagged ``!!python/tuple``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import CLIPModel

from tbps.data.transforms import CLIP_MEAN, CLIP_STD
from tbps.errors import ConfigError, DataError
from tbps.model.backbone import set_image_size
from tbps.model.convert import (
    clip_bpe_tokenizer,
    clip_config_from_openai,
    default_bpe_path,
    load_converted_weights,
    openai_to_hf_state_dict,
)
from tbps.model.tbps import TBPSModel

log = logging.getLogger(__name__)

METHODS = ("irra",)
RUN_CONFIG = "configs.yaml"
#: IRRA's training-only modules, dropped on import (their size depends on the dataset)
IRRA_HEADS = (
    "classifier",
    "cross_attn",
    "cross_modal_transformer",
    "ln_pre_t",
    "ln_pre_i",
    "ln_post",
    "mlm_head",
)
IRRA_DEFAULTS = {"img_size": (384, 128), "stride_size": 16, "temperature": 0.02}
POSITIONS = "visual.positional_embedding"


class _RunArgsLoader(yaml.SafeLoader):
    """Safe YAML plus ``!!python/tuple`` (as a tuple); every other Python tag is refused."""


_RunArgsLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple",
    lambda loader, node: tuple(loader.construct_sequence(node)),
)


def read_run_args(path: str | os.PathLike) -> dict[str, Any]:
    """The arguments a method saved beside its checkpoint (``configs.yaml``), read without
    executing anything."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RunArgsLoader)  # noqa: S506
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    except yaml.YAMLError as e:
        reason = str(e).splitlines()[0]
        raise DataError(f"{path}: not plain run arguments ({reason}); nothing was executed") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of run arguments")
    return data


def read_irra_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The OpenAI-layout backbone tensors (float32) of an IRRA ``best.pth`` and the names of
    the training heads it also holds (dropped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad files
        raise DataError(f"cannot read {path} as plain tensors (nothing executed): {e}") from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise DataError(f"{path}: not an IRRA best.pth (no 'model' state dict; found {keys})")
    state = {str(k).removeprefix("module."): v for k, v in checkpoint["model"].items()}
    backbone = {
        k.removeprefix("base_model."): v.float()
        for k, v in state.items()
        if k.startswith("base_model.")
    }
    others = sorted(k for k in state if not k.startswith("base_model."))
    if not backbone:
        raise DataError(
            f"{path}: no base_model.* keys, so not an IRRA checkpoint; its keys start with "
            f"{', '.join(others[:4])}"
        )
    unknown = [k for k in others if k.split(".")[0] not in IRRA_HEADS]
    if unknown:
        raise DataError(
            f"{path}: keys IRRA does not have: {', '.join(unknown[:4])}"
            + (f" (+{len(unknown) - 4} more)" if len(unknown) > 4 else "")
        )
    bad = [k for k, v in backbone.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(f"{path}: entry base_model.{bad[0]} is not a tensor")
    return backbone, others


def detect_method(path: str | os.PathLike) -> str | None:
    """``"irra"`` when ``path`` is a ``{"model": {"base_model.…": …}}`` checkpoint, else None
    (e.g. an OpenAI or open_clip file); reads the file lazily (memory-mapped)."""
    try:
        checkpoint = torch.load(
            Path(path).expanduser(), map_location="cpu", weights_only=True, mmap=True
        )
    except Exception:  # noqa: BLE001 - not a plain zip checkpoint: not one of ours to detect
        return None
    model = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if isinstance(model, dict) and any(
        str(k).removeprefix("module.").startswith("base_model.") for k in model
    ):
        return "irra"
    return None


def _irra_settings(src: Path, image_size) -> dict[str, Any]:
    """Image size, stride and temperature: ``configs.yaml`` beside ``src``, else IRRA's
    defaults; an explicit ``image_size`` wins over both."""
    settings = dict(IRRA_DEFAULTS)
    run_config = src.parent / RUN_CONFIG
    if run_config.is_file():
        args = read_run_args(run_config)
        settings.update({k: args[k] for k in IRRA_DEFAULTS if args.get(k) is not None})
        settings["from"] = str(run_config)
    else:
        log.warning(
            "%s has no %s beside it: assuming IRRA's defaults %s", src, RUN_CONFIG, IRRA_DEFAULTS
        )
    if image_size is not None:
        settings["img_size"] = tuple(image_size)
    size = settings["img_size"]
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise ConfigError(
            f"image size {size!r}: expected [H, W] (configs.yaml img_size or image_size=)"
        )
    settings["img_size"] = (int(size[0]), int(size[1]))
    return settings


def convert_irra(
    src: str | os.PathLike,
    out: str | os.PathLike,
    image_size: tuple[int, int] | None = None,
    bpe_path: str | os.PathLike | None = None,
) -> Path:
    """Write the model folder of IRRA's ``best.pth``: its CLIP backbone with the exact stored
    position table, temperature 1/s from ``configs.yaml`` (0.02), CLIP's BPE tokenizer, and
    IRRA's test transform (bilinear resize, CLIP mean/std). ``encode_texts @ encode_images.T``
    is then IRRA's test similarity: the cosine of the text's end-of-text feature and the
    image's class feature."""
    src = Path(src).expanduser()
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} exists and is not empty; choose another out")
    state, dropped = read_irra_checkpoint(src)
    settings = _irra_settings(src, image_size)
    height, width = settings["img_size"]
    patch = int(state["visual.conv1.weight"].shape[-1]) if "visual.conv1.weight" in state else 0
    if settings["stride_size"] != patch:
        raise ConfigError(
            f"{src}: stride_size {settings['stride_size']} differs from the patch size {patch}; "
            "overlapping patches are not supported"
        )
    if height % patch or width % patch:
        raise ConfigError(
            f"image size {height}x{width} is not a multiple of the patch size {patch}"
        )
    grid = (height // patch, width // patch)
    rows = state[POSITIONS].shape[0]
    if rows != grid[0] * grid[1] + 1:
        raise DataError(
            f"{src}: the position table has {rows} rows, a {height}x{width} image at patch "
            f"{patch} needs {grid[0] * grid[1] + 1}; pass image_size=[H,W] (configs.yaml: "
            f"{settings.get('from', 'absent')})"
        )
    config = clip_config_from_openai(state, source=str(src), grid=grid)
    backbone = set_image_size(CLIPModel(config), (height, width))  # the grid IRRA stored
    weights = openai_to_hf_state_dict(state, str(src))
    weights.setdefault("logit_scale", backbone.logit_scale.detach())
    load_converted_weights(backbone, weights, str(src))
    bpe = Path(bpe_path).expanduser() if bpe_path else default_bpe_path()
    if bpe is None:
        raise ConfigError(
            "IRRA uses CLIP's BPE tokenizer: pass bpe=PATH to bpe_simple_vocab_16e6.txt.gz "
            "(or pip install open_clip_torch, which ships it)"
        )
    tokenizer = clip_bpe_tokenizer(bpe)
    model = TBPSModel(
        backbone,
        temperature=float(settings["temperature"]),
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        interpolation="bilinear",
        tokenizer=tokenizer,
    ).eval()
    model.info = {
        "imported": {
            "method": "irra",
            "file": str(src),
            "dropped": sorted({k.split(".")[0] for k in dropped}),
        }
    }
    model.save_pretrained(out)
    log.info(
        "IRRA %s -> %s (%dx%d, temperature %s; dropped %s)",
        src,
        out,
        height,
        width,
        settings["temperature"],
        ", ".join(model.info["imported"]["dropped"]) or "nothing",
    )
    return out
