"""Build the architecture spec of a TBPSModel from backbone settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from tbps.data.transforms import CLIP_MEAN, CLIP_STD
from tbps.errors import ConfigError
from tbps.model.backbone import scratch_clip_config

BACKBONE_TYPES = ("clip_scratch",)


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
    }
