"""Build TBPSModels from backbone settings: a CLIP from scratch, or pretrained CLIP / SigLIP."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import CLIPModel, PreTrainedTokenizerBase, SiglipModel

from tbps.data.transforms import CLIP_MEAN, CLIP_STD
from tbps.errors import ConfigError
from tbps.model.backbone import add_mask_token, scratch_clip_config, set_image_size, set_text_length
from tbps.model.export import restore_exact_positions
from tbps.model.finetune import count_parameters, finetune_settings
from tbps.model.pretrained import (
    align_special_tokens,
    check_tokenizer,
    load_tokenizer,
    load_weights,
    read_config,
    resolve_backbone_path,
)
from tbps.model.tbps import TBPSModel

log = logging.getLogger(__name__)

# backbone.type -> what it builds: a CLIP trained from scratch, or a pretrained HF folder/hub id
BACKBONE_TYPES = ("clip_scratch", "clip", "siglip")
PRETRAINED_TYPES = ("clip", "siglip")


def check_backbone_type(backbone_type: str) -> None:
    if backbone_type not in BACKBONE_TYPES:
        raise ConfigError(
            f"unknown backbone.type {backbone_type!r}; valid: {', '.join(BACKBONE_TYPES)}"
        )


def scratch_model_spec(
    tokenizer: PreTrainedTokenizerBase,
    image_size: Sequence[int],
    patch_size: int,
    vision: Mapping[str, int],
    text: Mapping[str, int],
    embed_dim: int,
    mlp_ratio: float = 4.0,
    temperature: float | None = None,
    init_temperature: float = 0.07,
    image_mean: Sequence[float] = CLIP_MEAN,
    image_std: Sequence[float] = CLIP_STD,
    text_attention_mask: bool = True,
    finetune: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Spec of a from-scratch CLIP whose text tower matches ``tokenizer``."""
    if len(image_size) != 2:
        raise ConfigError(f"backbone.image_size must be [height, width], got {list(image_size)}")
    config = scratch_clip_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        patch_size=patch_size,
        vision_width=vision["width"],
        vision_layers=vision["layers"],
        vision_heads=vision["heads"],
        text_width=text["width"],
        text_layers=text["layers"],
        text_heads=text["heads"],
        text_length=text["length"],
        embed_dim=embed_dim,
        mlp_ratio=mlp_ratio,
        logit_scale_init=1.0 / init_temperature,
    )
    return {
        "backbone_type": "clip",
        "backbone_config": config.to_dict(),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "temperature": temperature,
        "image_mean": [float(x) for x in image_mean],
        "image_std": [float(x) for x in image_std],
        "text_attention_mask": bool(text_attention_mask),
        "finetune": finetune_settings(finetune),
    }


def pretrained_model(
    path: str | os.PathLike,
    kind: str,
    image_size: Sequence[int],
    text_length: int | None = None,
    temperature: float | None = None,
    image_mean: Sequence[float] = CLIP_MEAN,
    image_std: Sequence[float] = CLIP_STD,
    text_attention_mask: bool = True,
    finetune: Mapping[str, Any] | None = None,
    mask_token: bool = False,
    init_temperature: float | None = None,
    interpolation: str = "bilinear",
) -> tuple[TBPSModel, PreTrainedTokenizerBase]:
    """A TBPSModel on pretrained CLIP/SigLIP weights, and the tokenizer of the same folder.

    ``path`` is a Hugging Face folder (config.json + weights + tokenizer) or a hub id. The
    weights are checked key by key against config.json, the tokenizer against the text tower;
    then the vision position grid is resized to ``image_size``, the text positions to
    ``text_length`` (None keeps the checkpoint's), and with ``mask_token`` the tokenizer
    gets a mask token (the token embedding grows by one row when it had none).
    ``init_temperature`` re-initialises the learnable logit scale to 1/init_temperature
    (TBPS-CLIP: 0.07) instead of the checkpoint's; ``temperature`` fixes it instead.
    ``interpolation`` is the resize mode of the model's evaluation preprocessing.
    """
    if kind not in PRETRAINED_TYPES:
        raise ConfigError(
            f"backbone.type {kind!r} is not a pretrained type; valid: {', '.join(PRETRAINED_TYPES)}"
        )
    settings = finetune_settings(finetune)  # fail on bad settings before loading anything
    folder = resolve_backbone_path(path)
    config = read_config(folder, kind)
    tokenizer = load_tokenizer(folder)
    check_tokenizer(tokenizer, config, kind, folder)
    align_special_tokens(config, tokenizer)
    backbone = (CLIPModel if kind == "clip" else SiglipModel)(config).float()
    load_weights(backbone, folder)
    native = backbone.config.vision_config.image_size
    exported = restore_exact_positions(backbone, folder)  # a folder from tbps export format=hf
    if exported is not None:
        log.info("position table of the exported %dx%d model restored exactly", *exported)
    set_image_size(backbone, image_size)
    if text_length is not None:
        set_text_length(backbone, int(text_length))
    if mask_token:
        add_mask_token(backbone, tokenizer)
    if init_temperature is not None:
        if init_temperature <= 0:
            raise ConfigError(f"backbone.init_temperature must be positive, got {init_temperature}")
        with torch.no_grad():
            backbone.logit_scale.fill_(math.log(1.0 / init_temperature))
    model = TBPSModel(
        backbone,
        temperature=temperature,
        image_mean=image_mean,
        image_std=image_std,
        text_attention_mask=text_attention_mask,
        finetune=settings,
        interpolation=interpolation,
        tokenizer=tokenizer,
    )
    trainable, total = count_parameters(model)
    log.info(
        "loaded %s from %s: input %dx%d (pre-trained at %dx%d), text length %d, %.1fM parameters "
        "(%.2fM trainable)",
        kind,
        folder,
        *model.image_size,
        native,
        native,
        model.text_length,
        total / 1e6,
        trainable / 1e6,
    )
    return model, tokenizer
