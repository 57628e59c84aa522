"""TBPSModel: a dual encoder with L2-normalised image and text embeddings."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from tbps.data.transforms import CLIP_MEAN, CLIP_STD
from tbps.model.backbone import (
    NON_SQUARE,
    Backbone,
    add_mask_token,
    backbone_kind,
    build_backbone,
)
from tbps.model.finetune import (
    DEFAULT_FINETUNE,
    apply_finetuning,
    finetune_settings,
    merge_lora,
    unwrap,
)

MODEL_FILE = "model.safetensors"
SPEC_FILE = "tbps_model.json"
MAX_LOGIT_SCALE = 100.0


@dataclass
class TowerOutput:
    """One tower's output: projected pooled embedding (B, D), unnormalised, and optionally the
    last hidden states (B, N, width), after the tower's final LayerNorm, that token-level heads
    (MLM, token selection) use."""

    embeds: torch.Tensor
    tokens: torch.Tensor | None = None


class TBPSModel(nn.Module):
    """Image and text towers of a CLIP or SigLIP backbone mapped to one embedding space.

    Image embedding: CLIP's post-LayerNorm class token then ``visual_projection``; SigLIP's
    attention-pooling head. Text embedding: CLIP's end-of-text token then ``text_projection``;
    SigLIP's last token then its text head. ``image_embeddings``/``text_embeddings`` return
    these unnormalised (what the objectives take); ``encode_image``/``encode_text``
    L2-normalise them. ``logit_scale()`` is the multiplier s: ``1/temperature`` when a fixed
    temperature is set, else ``exp(logit_scale)`` of the backbone (clamped at 100 for CLIP);
    ``logit_bias()`` is b (0 for CLIP, SigLIP's learnable bias). ``text_attention_mask=False``
    runs the text tower without the padding mask (SigLIP was pre-trained that way).
    ``finetune`` selects what trains (see :func:`tbps.model.finetune.finetune_settings`).
    """

    def __init__(
        self,
        backbone: Backbone,
        temperature: float | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        text_attention_mask: bool = True,
        finetune: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        kind = backbone_kind(unwrap(backbone))
        if not isinstance(unwrap(backbone).vision_model.embeddings, NON_SQUARE[kind]):
            raise TypeError(
                "backbone needs its image size set (tbps.model.backbone.set_image_size)"
            )
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.kind = kind
        self.temperature = temperature
        self.image_mean = tuple(float(x) for x in image_mean)  # preprocessing the model expects
        self.image_std = tuple(float(x) for x in image_std)
        self.text_attention_mask = bool(text_attention_mask)
        self.finetune = finetune_settings(finetune)
        self.backbone = apply_finetuning(
            backbone, kind, self.finetune, train_logit_scale=temperature is None
        )
        if (
            self.kind == "siglip"
            and self.vision_width != self.hf.config.text_config.projection_size
        ):
            raise ValueError(
                "SigLIP text head width (text_config.projection_size) must equal the vision "
                f"width: {self.hf.config.text_config.projection_size} vs {self.vision_width}"
            )

    # -- architecture -------------------------------------------------------------------------
    @property
    def hf(self) -> Backbone:
        """The transformers model (inside the peft wrapper when LoRA is on)."""
        return unwrap(self.backbone)

    @property
    def is_sigmoid(self) -> bool:
        """True for sigmoid-loss backbones (SigLIP), False for softmax ones (CLIP)."""
        return self.kind == "siglip"

    @property
    def image_size(self) -> tuple[int, int]:
        return self.hf.vision_model.embeddings.image_hw

    @property
    def text_length(self) -> int:
        return self.hf.config.text_config.max_position_embeddings

    @property
    def embed_dim(self) -> int:
        if self.kind == "clip":
            return self.hf.config.projection_dim
        return self.vision_width

    @property
    def vision_width(self) -> int:
        """Width of the image token states (``TowerOutput.tokens``)."""
        return self.hf.config.vision_config.hidden_size

    @property
    def text_width(self) -> int:
        """Width of the text token states (``TowerOutput.tokens``)."""
        return self.hf.config.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.hf.text_model.embeddings.token_embedding.num_embeddings

    # -- embeddings ---------------------------------------------------------------------------
    def image_forward(self, images: torch.Tensor, tokens: bool = False) -> TowerOutput:
        """Pooled (projected) image embedding; with ``tokens``, the final-LayerNorm token states."""
        hf = self.hf
        out = hf.vision_model(pixel_values=images)
        if self.kind == "clip":
            embeds = hf.visual_projection(out.pooler_output)
            states = hf.vision_model.post_layernorm(out.last_hidden_state) if tokens else None
        else:
            embeds = out.pooler_output
            states = out.last_hidden_state if tokens else None
        return TowerOutput(embeds, states)

    def text_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: bool = False
    ) -> TowerOutput:
        """Pooled (projected) text embedding; with ``tokens``, the final-LayerNorm token states."""
        hf = self.hf
        mask = attention_mask if self.text_attention_mask else None
        out = hf.text_model(input_ids=input_ids, attention_mask=mask)
        embeds = out.pooler_output  # SigLIP's text head is applied inside its text model
        if self.kind == "clip":
            embeds = hf.text_projection(embeds)
        return TowerOutput(embeds, out.last_hidden_state if tokens else None)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_forward(images).embeds

    def text_embeddings(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.text_forward(input_ids, attention_mask).embeds

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings, (B, D)."""
        return nn.functional.normalize(self.image_embeddings(images), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings, (B, D)."""
        return nn.functional.normalize(self.text_embeddings(input_ids, attention_mask), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        """The similarity multiplier s (0-dim tensor)."""
        learned = self.hf.logit_scale
        if self.temperature is not None:
            return torch.tensor(1.0 / self.temperature, device=learned.device)
        scale = learned.exp().reshape(())
        # SigLIP is left unclamped: clamping would freeze a pre-trained scale above 100
        return scale.clamp(max=MAX_LOGIT_SCALE) if self.kind == "clip" else scale

    def logit_bias(self) -> torch.Tensor:
        """The similarity offset b (0-dim tensor): 0 for CLIP, learnable for SigLIP."""
        if self.kind == "siglip":
            return self.hf.logit_bias.reshape(())
        return torch.zeros((), device=self.hf.logit_scale.device)

    def add_mask_token(self, tokenizer: PreTrainedTokenizerBase) -> int:
        """Give ``tokenizer`` a mask token the text tower can embed (see
        :func:`tbps.model.backbone.add_mask_token`); returns its id. Save both afterwards."""
        return add_mask_token(self.hf, tokenizer)

    def merge_lora(self) -> TBPSModel:
        """Fold LoRA adapters into the weights (for export), in place; no-op without LoRA."""
        self.backbone = merge_lora(self.backbone)
        self.finetune = finetune_settings({**self.finetune, "mode": "full"})
        return self

    # -- persistence --------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this architecture (weights excluded), JSON-serialisable."""
        return {
            "backbone_type": self.kind,
            "backbone_config": self.hf.config.to_dict(),
            "image_size": list(self.image_size),
            "temperature": self.temperature,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "text_attention_mask": self.text_attention_mask,
            "finetune": self.finetune,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TBPSModel:
        """A model with the architecture of ``spec`` and random weights (LoRA layers included)."""
        backbone = build_backbone(
            spec.get("backbone_type"), spec["backbone_config"], spec["image_size"]
        )
        return cls(
            backbone,
            temperature=spec.get("temperature"),
            image_mean=spec.get("image_mean", CLIP_MEAN),
            image_std=spec.get("image_std", CLIP_STD),
            text_attention_mask=spec.get("text_attention_mask", True),
            finetune=spec.get("finetune", DEFAULT_FINETUNE),
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
