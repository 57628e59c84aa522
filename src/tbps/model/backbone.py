"""Dual-encoder backbones on stock `transformers` CLIP: build, non-square inputs, resizing."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

from tbps.errors import ConfigError


class NonSquareCLIPVisionEmbeddings(CLIPVisionEmbeddings):
    """CLIP class + patch + position embeddings with a stored (H/p) x (W/p) position grid.

    Stock CLIP keeps a square table and refuses other input sizes; this subclass stores the
    grid of the target (H, W) so a 384x128 input costs no per-call interpolation.
    """

    def __init__(self, config, image_size: Sequence[int]) -> None:
        super().__init__(config)
        height, width = (int(s) for s in image_size)
        patch = self.patch_size
        if height % patch or width % patch:
            raise ConfigError(
                f"image size {height}x{width} is not divisible by the patch size {patch}"
            )
        self.image_hw = (height, width)
        self.grid = (height // patch, width // patch)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)
        self.position_ids = nn.Buffer(
            torch.arange(self.num_positions).expand((1, -1)), persistent=False
        )

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        batch, _, height, width = pixel_values.shape
        if (height, width) != self.image_hw:
            raise ValueError(
                f"input image size {height}x{width} does not match the model's "
                f"{self.image_hw[0]}x{self.image_hw[1]} (H x W)"
            )
        patches = self.patch_embedding(pixel_values.to(dtype=self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(batch, 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(self.position_ids)


def square_grid(num_patches: int) -> tuple[int, int]:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patch positions do not form a square grid")
    return side, side


def resize_vision_positions(
    table: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]
) -> torch.Tensor:
    """Resize a (1 + gh*gw, D) position table to a new grid: class row kept, grid bilinear.

    Returns the table unchanged (a copy) when the grids are equal.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if table.shape[0] != 1 + old_grid[0] * old_grid[1]:
        raise ValueError(
            f"position table has {table.shape[0]} rows, expected 1 + {old_grid[0]}x{old_grid[1]}"
        )
    if old_grid == new_grid:
        return table.clone()
    cls, grid = table[:1], table[1:]
    dim = table.shape[1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], dim).to(table.dtype)
    return torch.cat([cls, grid], dim=0)


def set_image_size(model: CLIPModel, image_size: Sequence[int]) -> CLIPModel:
    """Give a CLIP model a stored position grid for ``image_size`` = (H, W), in place.

    Class and patch embeddings are kept; the position table is resized bilinearly as a 2-D
    grid (class row apart), which is the identity when the grid does not change.
    """
    old = model.vision_model.embeddings
    new = NonSquareCLIPVisionEmbeddings(model.config.vision_config, image_size)
    old_grid = (
        old.grid if isinstance(old, NonSquareCLIPVisionEmbeddings) else square_grid(old.num_patches)
    )
    with torch.no_grad():
        new.class_embedding.copy_(old.class_embedding)
        new.patch_embedding.weight.copy_(old.patch_embedding.weight)
        new.position_embedding.weight.copy_(
            resize_vision_positions(old.position_embedding.weight, old_grid, new.grid)
        )
    new.to(old.class_embedding.device)
    model.vision_model.embeddings = new
    return model


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
