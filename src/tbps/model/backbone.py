"""Dual-encoder backbones on stock `transformers` CLIP and SigLIP: build, resize, mask token."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPModel,
    PreTrainedTokenizerBase,
    SiglipConfig,
    SiglipModel,
)
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings
from transformers.models.siglip.modeling_siglip import SiglipVisionEmbeddings

from tbps.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("clip", "siglip")
MASK_TOKEN = "<|mask|>"
Backbone = CLIPModel | SiglipModel


def backbone_kind(model: nn.Module) -> str:
    """``"clip"`` or ``"siglip"`` for a transformers dual encoder; TypeError otherwise."""
    if isinstance(model, CLIPModel):
        return "clip"
    if isinstance(model, SiglipModel):
        return "siglip"
    raise TypeError(
        f"unsupported backbone {type(model).__name__}; expected CLIPModel or SiglipModel"
    )


def _store_grid(embeddings: nn.Module, image_size: Sequence[int]) -> None:
    """Give vision ``embeddings`` the (H/p) x (W/p) grid of ``image_size`` and a fresh position
    table of ``prefix_rows`` + grid rows (weights are loaded or resized afterwards)."""
    if len(image_size) != 2:
        raise ConfigError(f"image size must be [height, width], got {list(image_size)}")
    height, width = (int(s) for s in image_size)
    patch = embeddings.patch_size
    if height % patch or width % patch or min(height, width) < patch:
        raise ConfigError(f"image size {height}x{width} is not divisible by the patch size {patch}")
    embeddings.image_hw, embeddings.grid = (height, width), (height // patch, width // patch)
    embeddings.num_patches = embeddings.grid[0] * embeddings.grid[1]
    embeddings.num_positions = embeddings.num_patches + embeddings.prefix_rows
    embeddings.position_embedding = nn.Embedding(embeddings.num_positions, embeddings.embed_dim)
    embeddings.position_ids = nn.Buffer(
        torch.arange(embeddings.num_positions).expand((1, -1)), persistent=False
    )


def _check_input(pixel_values: torch.Tensor, image_hw: tuple[int, int]) -> None:
    height, width = pixel_values.shape[-2:]
    if (height, width) != image_hw:
        raise ValueError(
            f"input image size {height}x{width} does not match the model's "
            f"{image_hw[0]}x{image_hw[1]} (H x W)"
        )


class NonSquareCLIPVisionEmbeddings(CLIPVisionEmbeddings):
    """CLIP class + patch + position embeddings with a stored (H/p) x (W/p) position grid.

    Stock CLIP keeps a square table and refuses other input sizes; this subclass stores the
    grid of the target (H, W) so a 384x128 input costs no per-call interpolation.
    """

    prefix_rows = 1  # the class token's position row

    def __init__(self, config, image_size: Sequence[int]) -> None:
        super().__init__(config)
        _store_grid(self, image_size)

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        _check_input(pixel_values, self.image_hw)
        patches = self.patch_embedding(pixel_values.to(dtype=self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(pixel_values.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(self.position_ids)


class NonSquareSiglipVisionEmbeddings(SiglipVisionEmbeddings):
    """SigLIP patch + position embeddings with a stored (H/p) x (W/p) grid (no class token).

    Stock SigLIP indexes a square table and does no size check; this subclass stores the
    target grid and refuses inputs of another size instead of silently mis-adding positions.
    """

    prefix_rows = 0

    def __init__(self, config, image_size: Sequence[int]) -> None:
        super().__init__(config)
        _store_grid(self, image_size)

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        _check_input(pixel_values, self.image_hw)
        patches = self.patch_embedding(pixel_values.to(dtype=self.patch_embedding.weight.dtype))
        return patches.flatten(2).transpose(1, 2) + self.position_embedding(self.position_ids)


NON_SQUARE = {"clip": NonSquareCLIPVisionEmbeddings, "siglip": NonSquareSiglipVisionEmbeddings}


def square_grid(num_patches: int) -> tuple[int, int]:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patch positions do not form a square grid")
    return side, side


def resize_vision_positions(
    table: torch.Tensor,
    old_grid: Sequence[int],
    new_grid: Sequence[int],
    prefix_rows: int = 1,
) -> torch.Tensor:
    """Resize a (prefix + gh*gw, D) position table to a new grid, bilinearly.

    The first ``prefix_rows`` rows (CLIP's class token: 1; SigLIP: 0) are kept apart and
    copied; the grid rows are interpolated as a 2-D image (``align_corners=False``). Returns
    an unchanged copy when the grids are equal.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if table.shape[0] != prefix_rows + old_grid[0] * old_grid[1]:
        raise ValueError(
            f"position table has {table.shape[0]} rows, expected "
            f"{prefix_rows} + {old_grid[0]}x{old_grid[1]}"
        )
    if old_grid == new_grid:
        return table.clone()
    prefix, grid = table[:prefix_rows], table[prefix_rows:]
    dim = table.shape[1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], dim).to(table.dtype)
    return torch.cat([prefix, grid], dim=0)


def resize_text_positions(table: torch.Tensor, length: int) -> torch.Tensor:
    """Resize an (L, D) text position table to ``length`` rows.

    Row 0 (start of text) and row L-1 (the last position) are kept; the L-2 middle rows are
    interpolated linearly to ``length``-2 rows with ``align_corners=True``, so the first and
    last middle rows are kept too. Returns an unchanged copy when ``length == L``.
    """
    old = table.shape[0]
    if length == old:
        return table.clone()
    if length < 2 or old < 3:
        raise ConfigError(f"cannot resize a text position table of {old} rows to {length}")
    if length == 2:
        return torch.stack([table[0], table[-1]])
    middle = table[1:-1].t().unsqueeze(0).float()  # (1, D, L-2)
    middle = F.interpolate(middle, size=length - 2, mode="linear", align_corners=True)
    middle = middle.squeeze(0).t().to(table.dtype)
    return torch.cat([table[:1], middle, table[-1:]], dim=0)


def _vision_grid(embeddings: nn.Module) -> tuple[int, int]:
    if isinstance(embeddings, tuple(NON_SQUARE.values())):
        return embeddings.grid
    return square_grid(embeddings.num_patches)


def set_image_size(model: Backbone, image_size: Sequence[int]) -> Backbone:
    """Give a CLIP or SigLIP model a stored position grid for ``image_size`` = (H, W), in place.

    Patch (and CLIP class) embeddings are kept; the position table is resized bilinearly as
    a 2-D grid (CLIP's class row apart), which is the identity when the grid does not change.
    """
    kind = backbone_kind(model)
    old = model.vision_model.embeddings
    new = NON_SQUARE[kind](model.config.vision_config, image_size)
    with torch.no_grad():
        if kind == "clip":
            new.class_embedding.copy_(old.class_embedding)
        new.patch_embedding.load_state_dict(old.patch_embedding.state_dict())
        new.position_embedding.weight.copy_(
            resize_vision_positions(
                old.position_embedding.weight, _vision_grid(old), new.grid, new.prefix_rows
            )
        )
    new.to(old.patch_embedding.weight.device)
    model.vision_model.embeddings = new
    return model


def _text_configs(model: Backbone) -> list[Any]:
    """The text config objects a change must reach (the model's and its text tower's)."""
    configs = [model.config.text_config, model.text_model.config]
    return [c for i, c in enumerate(configs) if all(c is not d for d in configs[:i])]


def set_text_length(model: Backbone, length: int) -> Backbone:
    """Resize the text position table to ``length`` (see :func:`resize_text_positions`)."""
    embeddings = model.text_model.embeddings
    old = embeddings.position_embedding.weight
    if old.shape[0] == length:
        return model
    table = resize_text_positions(old.detach(), length)
    embeddings.position_embedding = nn.Embedding(length, old.shape[1]).to(old.device)
    with torch.no_grad():
        embeddings.position_embedding.weight.copy_(table)
    embeddings.position_embedding.weight.requires_grad_(old.requires_grad)
    embeddings.position_ids = nn.Buffer(
        torch.arange(length, device=old.device).expand((1, -1)), persistent=False
    )
    for config in _text_configs(model):
        config.max_position_embeddings = length
    return model


def grow_token_embedding(
    model: Backbone, num_tokens: int, generator: torch.Generator | None = None
) -> Backbone:
    """Grow the text token embedding to ``num_tokens`` rows, in place.

    New rows are drawn from N(mean, std) of the existing matrix, per embedding dimension.
    """
    embeddings = model.text_model.embeddings
    old = embeddings.token_embedding.weight
    extra = num_tokens - old.shape[0]
    if extra < 0:
        raise ValueError(f"cannot shrink the token embedding from {old.shape[0]} to {num_tokens}")
    if extra == 0:
        return model
    with torch.no_grad():
        mean, std = old.float().mean(dim=0), old.float().std(dim=0)
        noise = torch.randn(extra, old.shape[1], generator=generator).to(old.device)
        rows = (mean + std * noise).to(old.dtype)
        grown = nn.Embedding(num_tokens, old.shape[1]).to(old.device, old.dtype)
        grown.weight.copy_(torch.cat([old, rows], dim=0))
    grown.weight.requires_grad_(old.requires_grad)
    embeddings.token_embedding = grown
    for config in _text_configs(model):
        config.vocab_size = num_tokens
    return model


def add_mask_token(
    model: Backbone, tokenizer: PreTrainedTokenizerBase, token: str = MASK_TOKEN
) -> int:
    """Make sure ``tokenizer`` has a mask token the model can embed; returns its id.

    A tokenizer without one gets ``token`` as its mask token, and the text token embedding
    grows by one row (see :func:`grow_token_embedding`). Tokenizer and model are changed in
    place, so both must be saved together afterwards.
    """
    if tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": token})
        log.info("added mask token %s (id %d) to the tokenizer", token, tokenizer.mask_token_id)
    rows = model.text_model.embeddings.token_embedding.num_embeddings
    if len(tokenizer) > rows:
        grow_token_embedding(model, len(tokenizer))
        log.info("text token embedding grown from %d to %d rows", rows, len(tokenizer))
    return int(tokenizer.mask_token_id)


def scratch_clip_config(
    vocab_size: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    patch_size: int = 16,
    vision_width: int = 256,
    vision_layers: int = 4,
    vision_heads: int = 4,
    text_width: int = 256,
    text_layers: int = 4,
    text_heads: int = 4,
    text_length: int = 32,
    embed_dim: int = 256,
    mlp_ratio: float = 4.0,
    logit_scale_init: float = 1 / 0.07,
) -> CLIPConfig:
    """A CLIP configuration for training from scratch with a tokenizer of ``vocab_size``."""
    if eos_token_id == 2:
        raise ConfigError("eos_token_id 2 makes transformers' CLIP pool at the largest token id")
    for name, width, heads in (
        ("vision", vision_width, vision_heads),
        ("text", text_width, text_heads),
    ):
        if width % heads:
            raise ConfigError(f"backbone.{name}.width={width} is not divisible by heads={heads}")
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=text_width,
            intermediate_size=int(text_width * mlp_ratio),
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            max_position_embeddings=text_length,
            projection_dim=embed_dim,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=int(vision_width * mlp_ratio),
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            image_size=patch_size,  # placeholder square size; the grid is set by set_image_size
            patch_size=patch_size,
            projection_dim=embed_dim,
        ),
        projection_dim=embed_dim,
        logit_scale_init_value=math.log(logit_scale_init),
    )


def build_clip(config: CLIPConfig, image_size: Sequence[int]) -> CLIPModel:
    """A randomly initialised CLIPModel with a non-square position grid for ``image_size``."""
    model = set_image_size(CLIPModel(config), image_size)
    vision = config.vision_config
    std = vision.initializer_range * vision.initializer_factor
    nn.init.normal_(model.vision_model.embeddings.position_embedding.weight, std=std)
    return model


def build_siglip(config: SiglipConfig, image_size: Sequence[int]) -> SiglipModel:
    """A randomly initialised SiglipModel with a non-square position grid for ``image_size``."""
    model = set_image_size(SiglipModel(config), image_size)
    std = 1.0 / math.sqrt(config.vision_config.hidden_size)
    nn.init.normal_(model.vision_model.embeddings.position_embedding.weight, std=std)
    return model


def backbone_config(kind: str, config: dict[str, Any]) -> CLIPConfig | SiglipConfig:
    """The transformers config of ``kind`` from its ``to_dict()`` form."""
    if kind == "clip":
        return CLIPConfig.from_dict(config)
    if kind == "siglip":
        return SiglipConfig.from_dict(config)
    raise ValueError(f"unsupported backbone_type {kind!r}; valid: {', '.join(KINDS)}")


def build_backbone(kind: str, config: dict[str, Any], image_size: Sequence[int]) -> Backbone:
    """A randomly initialised backbone of ``kind`` with a stored grid for ``image_size``."""
    hf_config = backbone_config(kind, config)
    build = build_clip if kind == "clip" else build_siglip
    return build(hf_config, image_size).float()
