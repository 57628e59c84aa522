"""TBPSModel: a dual encoder with L2-normalised image and text embeddings."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel

from tbps.data.transforms import CLIP_MEAN, CLIP_STD
from tbps.model.backbone import NonSquareCLIPVisionEmbeddings, build_clip

MODEL_FILE = "model.safetensors"
SPEC_FILE = "tbps_model.json"
MAX_LOGIT_SCALE = 100.0


@dataclass
class TowerOutput:
    """One tower's output: projected pooled embedding (B, D), unnormalised, and optionally the
    last hidden states (B, N, width) that token-level heads (MLM, token selection) use."""

    embeds: torch.Tensor
    tokens: torch.Tensor | None = None


class TBPSModel(nn.Module):
    """Image and text towers of a CLIP backbone mapped to one embedding space.

    ``image_embeddings``/``text_embeddings`` return the projected, unnormalised embeddings
    (what the objectives take); ``encode_image``/``encode_text`` L2-normalise them.
    ``logit_scale()`` is the contrastive multiplier s: ``1/temperature`` when a fixed
    temperature is set, else the backbone's learnable ``exp(logit_scale)`` clamped at 100.
    """

    def __init__(
        self,
        backbone: CLIPModel,
        temperature: float | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        if not isinstance(backbone.vision_model.embeddings, NonSquareCLIPVisionEmbeddings):
            raise TypeError(
                "backbone needs its image size set (tbps.model.backbone.set_image_size)"
            )
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.backbone = backbone
        self.temperature = temperature
        self.image_mean = tuple(float(x) for x in image_mean)  # preprocessing the model expects
        self.image_std = tuple(float(x) for x in image_std)

    # -- embeddings ---------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        return self.backbone.vision_model.embeddings.image_hw

    @property
    def text_length(self) -> int:
        return self.backbone.config.text_config.max_position_embeddings

    @property
    def embed_dim(self) -> int:
        return self.backbone.config.projection_dim

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone.vision_model(pixel_values=images).pooler_output
        return self.backbone.visual_projection(pooled)

    def text_embeddings(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        pooled = self.backbone.text_model(
            input_ids=input_ids, attention_mask=attention_mask
        ).pooler_output
        return self.backbone.text_projection(pooled)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings, (B, D)."""
        return nn.functional.normalize(self.image_embeddings(images), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings, (B, D)."""
        return nn.functional.normalize(self.text_embeddings(input_ids, attention_mask), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        if self.temperature is not None:
            return torch.tensor(1.0 / self.temperature, device=self.backbone.logit_scale.device)
        return self.backbone.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    # -- persistence --------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this architecture (weights excluded), JSON-serialisable."""
        return {
            "backbone_type": "clip",
            "backbone_config": self.backbone.config.to_dict(),
            "image_size": list(self.image_size),
            "temperature": self.temperature,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TBPSModel:
        """A model with the architecture of ``spec`` and random weights."""
        if spec.get("backbone_type") != "clip":
            raise ValueError(f"unsupported backbone_type {spec.get('backbone_type')!r}")
        config = CLIPConfig.from_dict(spec["backbone_config"])
        return cls(
            build_clip(config, spec["image_size"]),
            temperature=spec.get("temperature"),
            image_mean=spec.get("image_mean", CLIP_MEAN),
            image_std=spec.get("image_std", CLIP_STD),
        )

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``tbps_model.json`` + ``model.safetensors`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SPEC_FILE).write_text(json.dumps(self.spec(), indent=2))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / MODEL_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> TBPSModel:
        directory = Path(directory)
        model = cls.from_spec(json.loads((directory / SPEC_FILE).read_text()))
        model.load_state_dict(load_file(str(directory / MODEL_FILE)))
        return model
