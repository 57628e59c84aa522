"""TBPSModel: the deployable dual encoder (towers, token selection, tokenizer, preprocessing)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from tbps import __version__
from tbps.data.tokenization import tokenize
from tbps.data.transforms import CLIP_MEAN, CLIP_STD, Transform, eval_stages, eval_transform
from tbps.errors import ConfigError, DataError
from tbps.model.activations import use_fused_quick_gelu
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
from tbps.model.pooled import image_pooled, supports_pooled_shortcut, text_pooled
from tbps.model.pretrained import load_state_strictly
from tbps.model.token_selection import (
    TokenSelectionHead,
    fused_embedding,
    reject_legacy_layout,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
LEGACY_SPEC_FILE = "tbps_model.json"  # written by tbps 0.1 before the model folder had config.json
FOLDER_FORMAT = "tbps-model"
FORMAT_VERSION = 1
MAX_LOGIT_SCALE = 100.0
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")


@dataclass
class TowerOutput:
    """One tower's output: projected pooled embedding (B, D), unnormalised, and optionally the
    last hidden states (B, N, width), after the tower's final LayerNorm, that token-level heads
    (MLM, token selection) use."""

    embeds: torch.Tensor
    tokens: torch.Tensor | None = None


class TBPSModel(nn.Module):
    """The retrieval model: image and text towers of a CLIP or SigLIP backbone mapped to one
    embedding space, RDE's token-selection head when the model has one, the tokenizer and the
    evaluation image preprocessing.

    Image embedding: CLIP's post-LayerNorm class token then ``visual_projection``; SigLIP's
    attention-pooling head. Text embedding: CLIP's end-of-text token then ``text_projection``;
    SigLIP's last token then its text head. ``image_embeddings``/``text_embeddings`` return
    these unnormalised (what the objectives take). ``encode_images``/``encode_texts`` return
    the unit-norm retrieval embeddings: the global ones, or with token selection
    ``[g, t] / sqrt(2)`` of the L2-normalised global and TSE parts, so that
    ``texts @ images.T`` is the similarity evaluation ranks by.
    ``logit_scale()`` is the multiplier s: ``1/temperature`` when a fixed temperature is set,
    else ``exp(logit_scale)`` of the backbone (clamped at 100 for CLIP); ``logit_bias()`` is b
    (0 for CLIP, SigLIP's learnable bias). ``text_attention_mask=False`` runs the text tower
    without the padding mask (SigLIP was pre-trained that way). ``finetune`` selects what
    trains (see :func:`tbps.model.finetune.finetune_settings`). ``interpolation`` is the resize
    mode of the evaluation transform (``preprocess``).
    """

    def __init__(
        self,
        backbone: Backbone,
        temperature: float | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        text_attention_mask: bool = True,
        finetune: Mapping[str, Any] | None = None,
        token_selection: Mapping[str, Any] | None = None,
        interpolation: str = "bilinear",
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__()
        kind = backbone_kind(unwrap(backbone))
        if not isinstance(unwrap(backbone).vision_model.embeddings, NON_SQUARE[kind]):
            raise TypeError(
                "backbone needs its image size set (tbps.model.backbone.set_image_size)"
            )
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation={interpolation!r}; valid: {', '.join(INTERPOLATIONS)}"
            )
        self.kind = kind
        self.temperature = temperature
        self.image_mean = tuple(float(x) for x in image_mean)  # preprocessing the model expects
        self.image_std = tuple(float(x) for x in image_std)
        self.interpolation = interpolation
        self.text_attention_mask = bool(text_attention_mask)
        self.finetune = finetune_settings(finetune)
        use_fused_quick_gelu(backbone)  # same function, one kernel (tbps.model.activations)
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
        self.token_selection: TokenSelectionHead | None = None
        if token_selection:
            self.add_token_selection(token_selection["ratio"], token_selection.get("dim"))
        self.tokenizer = tokenizer
        #: compute pooled-only CLIP embeddings without the states they never read
        #: (:mod:`tbps.model.pooled`); export turns it off for a static-shape graph
        self.pooled_shortcut = True
        #: free-form provenance saved in config.json (e.g. ``data``: the training data section)
        self.info: dict[str, Any] = {}

    def add_token_selection(self, ratio: float, dim: int | None = None) -> TokenSelectionHead:
        """Give the model RDE's token-selection head (``dim`` None: the embedding width)."""
        if self.token_selection is not None:
            raise ValueError("the model already has a token-selection head")
        head = TokenSelectionHead(self.embed_dim, dim or self.embed_dim, ratio)
        self.token_selection = head.to(self.hf.logit_scale.device)
        return self.token_selection

    @property
    def token_selection_settings(self) -> dict[str, Any] | None:
        """``{"ratio", "dim"}`` of the token-selection head (None without one)."""
        if self.token_selection is None:
            return None
        head = self.token_selection
        return {"ratio": float(head.ratio), "dim": head.embed_dim}

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
        if not tokens and self._shortcut():
            return TowerOutput(hf.visual_projection(image_pooled(hf, images)))
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
        if not tokens and self._shortcut():
            return TowerOutput(hf.text_projection(text_pooled(hf, input_ids, mask)))
        out = hf.text_model(input_ids=input_ids, attention_mask=mask)
        embeds = out.pooler_output  # SigLIP's text head is applied inside its text model
        if self.kind == "clip":
            embeds = hf.text_projection(embeds)
        return TowerOutput(embeds, out.last_hidden_state if tokens else None)

    def _shortcut(self) -> bool:
        return self.pooled_shortcut and supports_pooled_shortcut(self.hf)

    def image_token_features(self, states: torch.Tensor) -> torch.Tensor:
        """Image token states (``TowerOutput.tokens``, any (..., width)) in the embedding space:
        CLIP's ``visual_projection`` (the class token's path); SigLIP's are already there."""
        return self.hf.visual_projection(states) if self.kind == "clip" else states

    def text_token_features(self, states: torch.Tensor) -> torch.Tensor:
        """Text token states in the embedding space: CLIP's ``text_projection``, SigLIP's text
        head (the pooled token's path)."""
        if self.kind == "clip":
            return self.hf.text_projection(states)
        return self.hf.text_model.head(states)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_forward(images).embeds

    def text_embeddings(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.text_forward(input_ids, attention_mask).embeds

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unit-norm retrieval embeddings of preprocessed images (B, 3, H, W) -> (B, D')."""
        if self.token_selection is None:
            return nn.functional.normalize(self.image_embeddings(pixel_values), dim=-1)
        out, tse = self.token_selection.encode_image(self, pixel_values)
        return fused_embedding(out.embeds, tse)

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm retrieval embeddings of tokenised captions (B, L) -> (B, D')."""
        if self.token_selection is None:
            return nn.functional.normalize(self.text_embeddings(input_ids, attention_mask), dim=-1)
        out, tse = self.token_selection.encode_text(self, input_ids, attention_mask)
        return fused_embedding(out.embeds, tse)

    @property
    def retrieval_dim(self) -> int:
        """Width D' of ``encode_images``/``encode_texts`` (embed_dim, plus the TSE width)."""
        if self.token_selection is None:
            return self.embed_dim
        return self.embed_dim + self.token_selection.embed_dim

    @property
    def device(self) -> torch.device:
        return self.hf.logit_scale.device

    # -- inputs -------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str] | str) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}`` (B, text_length) int64, as training tokenised:
        the model's tokenizer (its own normalisation, e.g. lower-casing), truncation that keeps
        the end-of-text token, padding to the text length."""
        if self.tokenizer is None:
            raise ConfigError(
                "this model has no tokenizer: load it with TBPSModel.from_pretrained(DIR) from a "
                "folder that holds the tokenizer files, or set model.tokenizer"
            )
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("tokenize expects a list of strings")
        tokens = tokenize(self.tokenizer, texts, self.text_length)
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    @property
    def image_transform(self) -> Transform:
        """The evaluation transform of one RGB image: resize to (H, W), to tensor, normalise."""
        from torchvision.transforms import InterpolationMode

        return eval_transform(
            self.image_size, self.image_mean, self.image_std, InterpolationMode(self.interpolation)
        )

    @property
    def image_stages(self) -> tuple[Transform, Transform]:
        """:attr:`image_transform` as (resize to uint8, normalise a batch): see
        :func:`tbps.data.transforms.eval_stages`."""
        from torchvision.transforms import InterpolationMode

        return eval_stages(
            self.image_size, self.image_mean, self.image_std, InterpolationMode(self.interpolation)
        )

    def preprocess(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """PIL images -> (B, 3, H, W) float32 pixel values (the evaluation transform)."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        if not images:
            raise ValueError("preprocess needs at least one image")
        transform = self.image_transform
        return torch.stack([transform(img.convert("RGB")) for img in images])

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
        """Everything needed to rebuild this architecture (weights and tokenizer excluded),
        JSON-serialisable."""
        return {
            "backbone_type": self.kind,
            "backbone_config": self.hf.config.to_dict(),
            "image_size": list(self.image_size),
            "temperature": self.temperature,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "interpolation": self.interpolation,
            "text_attention_mask": self.text_attention_mask,
            "finetune": self.finetune,
            "token_selection": self.token_selection_settings,
        }

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase | None = None
    ) -> TBPSModel:
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
            token_selection=spec.get("token_selection"),
            interpolation=spec.get("interpolation", "bilinear"),
            tokenizer=tokenizer,
        )

    def folder_config(self) -> dict[str, Any]:
        """The ``config.json`` of a model folder: the architecture (:meth:`spec`) plus what a
        user of the folder reads: text length, retrieval width, similarity scale, tokenizer."""
        tok = self.tokenizer
        return {
            "format": FOLDER_FORMAT,
            "format_version": FORMAT_VERSION,
            "tbps_version": __version__,
            **self.spec(),
            "text_length": self.text_length,
            "embed_dim": self.retrieval_dim,
            "logit_scale": float(self.logit_scale().detach()),
            "info": self.info,
            "tokenizer": None
            if tok is None
            else {
                "class": type(tok).__name__,
                "vocab_size": len(tok),
                "max_length": self.text_length,
                "padding": "max_length",
                "truncation": True,
                "do_lower_case": getattr(tok, "do_lower_case", None),
                "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id,
                "pad_token_id": tok.pad_token_id,
                "mask_token_id": tok.mask_token_id,
            },
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the model folder: ``config.json``, ``model.safetensors`` and the tokenizer
        files. LoRA adapters are kept as they are (``merge_lora()`` first to fold them)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))
        else:
            log.warning("%s: the model has no tokenizer; the folder will hold none", directory)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / MODEL_FILE), metadata={"format": "pt"})
        # config.json last: a folder with it is complete
        (directory / CONFIG_FILE).write_text(json.dumps(self.folder_config(), indent=2))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device | None = None
    ) -> TBPSModel:
        """Load a model folder written by :meth:`save_pretrained` (or ``tbps export``), in eval
        mode. Neither Lightning nor Hydra is imported."""
        directory = Path(directory).expanduser()
        spec = read_folder_config(directory)
        weights = directory / MODEL_FILE
        if not weights.is_file():
            raise DataError(
                f"{directory} has no {MODEL_FILE}; a tbps model folder holds {CONFIG_FILE}, "
                f"{MODEL_FILE} and the tokenizer files (write one with tbps export)"
            )
        tokenizer = _load_folder_tokenizer(directory)
        try:
            model = cls.from_spec(spec, tokenizer=tokenizer)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{directory / CONFIG_FILE}: cannot build the model: {e}") from e
        try:
            state = load_file(str(weights))
        except (OSError, SafetensorError) as e:
            raise DataError(f"cannot read weights {weights}: {e}") from e
        reject_legacy_layout(state, str(weights))
        load_state_strictly(model, state, str(weights))
        model.info = dict(spec.get("info") or {})
        if device is not None:
            model.to(device)
        return model.eval()


def read_folder_config(directory: Path) -> dict[str, Any]:
    """The architecture spec in a model folder's ``config.json`` (or the older
    ``tbps_model.json``), with a clear error for a folder that is not a tbps model."""
    if not directory.is_dir():
        raise DataError(f"model folder {directory} does not exist")
    path = directory / CONFIG_FILE
    if not path.is_file() and (directory / LEGACY_SPEC_FILE).is_file():
        path = directory / LEGACY_SPEC_FILE
    if not path.is_file():
        raise DataError(
            f"{directory} has no {CONFIG_FILE}; expected a tbps model folder (tbps export "
            "ckpt_path=RUN/checkpoints/best.ckpt out=DIR writes one)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if path.name == CONFIG_FILE and config.get("format") != FOLDER_FORMAT:
        hint = (
            f"; it looks like a Hugging Face backbone: train on it with backbone.path={directory}"
            if "model_type" in config
            else ""
        )
        raise DataError(f'{path} is not a tbps model config (no "format": "{FOLDER_FORMAT}"){hint}')
    for key in ("backbone_config", "image_size"):
        if key not in config:
            raise DataError(f"{path}: missing key {key!r}")
    return config


def _load_folder_tokenizer(directory: Path) -> PreTrainedTokenizerBase | None:
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        log.warning("%s has no tokenizer files: model.tokenize() will not work", directory)
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 - transformers raises many types for bad folders
        raise DataError(f"cannot load the tokenizer in {directory}: {e}") from e
