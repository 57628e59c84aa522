"""CLIP's pooled embeddings without the work the pooled token never reads.

CLIP pools one token per input: the image tower's class token (position 0), the text tower's
first end-of-text token (position ``p``). Two facts make most of a forward pass unneeded when
only that pooled state is wanted:

- In the last layer, only the pooled token's query, attention output and MLP matter (every
  token's key and value still do): ``12 d²`` per token become ``2 d²``, plus ``10 d²`` once.
- The text tower is causal: position ``p`` attends to positions ``≤ p`` only, so the padding
  after a caption's end never reaches the pooled state. The linear layers run on the packed
  tokens ``0..p`` of every caption (about 60 % of the padded ones for the default captions);
  only attention sees them padded, with the same causal and padding masks as transformers.

The result is the same function as the transformers forward (float rounding aside); the
module's weights are used as they are, so LoRA adapters and frozen layers work unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel


def supports_pooled_shortcut(clip: nn.Module) -> bool:
    """True when :func:`image_pooled`/:func:`text_pooled` compute exactly what CLIP's own
    forward would: a CLIPModel without attention dropout in training or gradient checkpointing."""
    if not isinstance(clip, CLIPModel):
        return False
    for tower in (clip.vision_model, clip.text_model):
        if tower.encoder.gradient_checkpointing:
            return False
        layers = tower.encoder.layers
        if tower.config.attention_dropout and any(layer.self_attn.training for layer in layers):
            return False
    return True


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, D) -> (B, heads, N, D/heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _mlp_block(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + layer.mlp(layer.layer_norm2(x))


def _pooled_layer(
    layer: nn.Module, x: torch.Tensor, at: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """The last encoder layer's output at one position per row: ``x`` (B, N, D) states,
    ``at`` (B,) positions, ``key_mask`` (B, N) bool of the keys the pooled token may attend
    to (None: all). Returns (B, D)."""
    attn = layer.self_attn
    rows = torch.arange(x.shape[0], device=x.device)
    normed = layer.layer_norm1(x)
    query = _heads(attn.q_proj(normed[rows, at]).unsqueeze(1), attn.num_heads)
    keys = _heads(attn.k_proj(normed), attn.num_heads)
    values = _heads(attn.v_proj(normed), attn.num_heads)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=attn.scale)
    pooled = x[rows, at] + attn.out_proj(out.transpose(1, 2).flatten(1))
    return _mlp_block(layer, pooled)


def image_pooled(clip: CLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP's ``vision_model(pixel_values).pooler_output`` (post-LayerNorm class token), (B, width)."""
    vision = clip.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    *first, last = vision.encoder.layers
    for layer in first:
        hidden = layer(hidden, None)
    at = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
    return vision.post_layernorm(_pooled_layer(last, hidden, at, None))


def pooled_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The position CLIP's text tower pools per caption: the first ``eos_token_id`` (the
    largest token id for old configs whose ``eos_token_id`` is 2, as transformers does)."""
    if eos_token_id == 2:
        return input_ids.argmax(dim=-1)
    return (input_ids == eos_token_id).int().argmax(dim=-1)


def text_pooled(
    clip: CLIPModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """CLIP's ``text_model(input_ids, attention_mask).pooler_output`` (final-LayerNorm state at
    the end-of-text token), (B, width), computing only positions up to each caption's end."""
    text = clip.text_model
    length = text.embeddings.position_embedding.num_embeddings
    if input_ids.shape[-1] > length:
        raise ValueError(f"{input_ids.shape[-1]} tokens per caption; the text tower holds {length}")
    at = pooled_positions(input_ids, text.eos_token_id)
    span = int(at.max()) + 1  # the longest caption; later positions are never read
    hidden = text.embeddings(input_ids=input_ids[:, :span])
    batch, _, width = hidden.shape
    positions = torch.arange(span, device=hidden.device)
    keep = positions <= at[:, None]  # (B, span): the tokens the pooled one can reach
    key_mask = keep if attention_mask is None else keep & attention_mask[:, :span].bool()
    *first, last = text.encoder.layers
    if first:
        # (B, 1, span, span): causal, and no attention to masked keys (as transformers); the
        # padding rows, whose output is dropped, may attend anywhere (no all-masked row, no NaN)
        mask = (positions[:, None] >= positions[None, :]) & key_mask[:, None, None, :]
        mask |= ~keep[:, None, :, None]
        index = keep.flatten().nonzero().squeeze(1)  # packed token -> row of (B * span)
        packed = hidden.reshape(batch * span, width).index_select(0, index)
        for layer in first:
            packed = _packed_layer(layer, packed, index, batch, span, mask)
        hidden = packed.new_zeros(batch * span, width).index_copy(0, index, packed)
        hidden = hidden.view(batch, span, width)
    return text.final_layer_norm(_pooled_layer(last, hidden, at, key_mask))


def _packed_layer(
    layer: nn.Module,
    packed: torch.Tensor,
    index: torch.Tensor,
    batch: int,
    span: int,
    mask: torch.Tensor,
) -> torch.Tensor:
    """One encoder layer on packed tokens (N, D) whose rows of the padded (B * span) grid are
    ``index``; attention runs on the padded grid under ``mask``."""
    attn = layer.self_attn
    width = packed.shape[1]
    normed = layer.layer_norm1(packed)
    qkv = torch.cat([attn.q_proj(normed), attn.k_proj(normed), attn.v_proj(normed)], dim=1)
    grid = qkv.new_zeros(batch * span, 3 * width).index_copy(0, index, qkv)
    query, keys, values = (
        _heads(t, attn.num_heads) for t in grid.view(batch, span, -1).chunk(3, -1)
    )
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=attn.scale)
    out = out.transpose(1, 2).reshape(batch * span, width).index_select(0, index)
    return _mlp_block(layer, packed + attn.out_proj(out))
