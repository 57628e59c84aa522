"""RDE's token selection embedding (TSE): the retrieval head that a model may carry."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from tbps.model.tbps import TBPSModel, TowerOutput


class TokenSelectionEmbedding(nn.Module):
    """RDE's token selection embedding (TSE) for one modality.

    The ``ratio`` most important tokens of each sample (importance = the pooled token's attention
    to them in the tower's last layer, see :func:`pooled_token_attention`) are L2-normalised,
    embedded by ``linear(x) + mlp(x)`` and max-pooled into one (B, embed_dim) vector.
    A sample with n selectable tokens keeps max(1, floor(ratio * n)) of them.
    """

    def __init__(self, token_width: int, embed_dim: int, ratio: float = 0.3) -> None:
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"token selection ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.linear = nn.Linear(token_width, embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(token_width, embed_dim // 2),
            nn.ReLU(inplace=True),
            nn.Linear(embed_dim // 2, embed_dim),
        )

    def select(self, scores: torch.Tensor, selectable: torch.Tensor):
        """(indices (B, K), keep (B, K) bool) of the top tokens by score among the selectable.

        K is the largest kept count of the batch; while exporting (ONNX, torch.export) it is
        every token (N), since K depends on the data: the kept rows, and so the result, are
        the same.
        """
        counts = selectable.sum(dim=1)
        keep_counts = (counts.float() * self.ratio).floor().long().clamp(min=1)
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            top = scores.shape[1]
        else:
            if bool((counts == 0).any()):
                raise ValueError("token selection: a sample has no selectable token")
            top = int(keep_counts.max())
        masked = scores.float().masked_fill(~selectable, float("-inf"))
        indices = masked.topk(top, dim=1).indices
        keep = torch.arange(top, device=scores.device)[None, :] < keep_counts[:, None]
        return indices, keep

    def forward(
        self, tokens: torch.Tensor, scores: torch.Tensor, selectable: torch.Tensor
    ) -> torch.Tensor:
        """tokens (B, N, W), importance scores (B, N), selectable (B, N) bool -> (B, embed_dim)."""
        indices, keep = self.select(scores, selectable.bool())
        picked = tokens.gather(1, indices[..., None].expand(-1, -1, tokens.shape[-1]))
        picked = F.normalize(picked, dim=-1)
        embedded = self.linear(picked) + self.mlp(picked)
        embedded = embedded.masked_fill(~keep[..., None], float("-inf"))
        return embedded.max(dim=1).values


def pooled_token_attention(
    attention: nn.Module,
    hidden_states: torch.Tensor,
    query_index: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one query token per sample to every token, averaged over heads: (B, N).

    Recomputed from the layer's own q/k projections (``q_proj``, ``k_proj``, ``num_heads``,
    ``head_dim``, ``scale``: the Hugging Face CLIP/SigLIP attention layout) on the hidden
    states that entered the attention, because SDPA attention returns no weights.
    ``key_mask`` (B, N), 1 = the token may be attended to (padding and causal future excluded).
    """
    batch = hidden_states.shape[0]
    rows = torch.arange(batch, device=hidden_states.device)
    query_states = hidden_states[rows, query_index]  # (B, W)
    heads, head_dim = attention.num_heads, attention.head_dim
    q = attention.q_proj(query_states).view(batch, heads, 1, head_dim)
    k = attention.k_proj(hidden_states).view(batch, -1, heads, head_dim).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)).squeeze(2).float() * attention.scale  # (B, H, N)
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask.bool()[:, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)


class AttentionInputCapture:
    """Keeps the hidden states entering an attention module during a ``capture()`` block.

    A forward pre-hook on the module (registered only inside the block) records its
    ``hidden_states`` argument, so the last layer's attention pattern can be recomputed.
    """

    def __init__(self, attention: nn.Module) -> None:
        self.attention = attention
        self.hidden_states: torch.Tensor | None = None

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    @contextlib.contextmanager
    def capture(self) -> Iterator[AttentionInputCapture]:
        self.hidden_states = None
        handle = self.attention.register_forward_pre_hook(self._hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    def take(self) -> torch.Tensor:
        if self.hidden_states is None:
            raise RuntimeError("the last attention layer did not run inside capture()")
        states, self.hidden_states = self.hidden_states, None
        return states


def _text_pooled_index(model: TBPSModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Position of the token the text tower pools (CLIP: first end-of-text; SigLIP: last)."""
    if model.kind == "siglip":
        return torch.full_like(input_ids[:, 0], input_ids.shape[1] - 1)
    eos = model.hf.config.text_config.eos_token_id
    if eos == 2:  # transformers' legacy CLIP pooling: the largest token id
        return input_ids.argmax(dim=-1)
    return (input_ids == eos).int().argmax(dim=-1)


def _special_ids(model: TBPSModel) -> list[int]:
    config = model.hf.config.text_config
    ids = (config.bos_token_id, config.eos_token_id, config.pad_token_id)
    return sorted({int(i) for i in ids if i is not None})


class TokenSelectionHead(nn.Module):
    """RDE's TSE for both towers of a :class:`TBPSModel`, with the importance scores it needs.

    Importance = attention of the pooled token to each token in the tower's last layer, averaged
    over heads. SDPA returns no attention weights, so the last layer's attention input is
    captured with a forward pre-hook and its q/k projections are re-applied for the pooled query
    only (cheap: one query row per sample, no gradient). SigLIP's image tower pools with an
    attention probe instead of a class token: its probe attention is the importance.
    Selectable tokens: image patches (not CLIP's class token); caption tokens that are real
    (attention mask) and not special (bos/eos/pad ids).
    """

    def __init__(
        self, vision_width: int, text_width: int, embed_dim: int, ratio: float = 0.3
    ) -> None:
        super().__init__()
        self.image = TokenSelectionEmbedding(vision_width, embed_dim, ratio)
        self.text = TokenSelectionEmbedding(text_width, embed_dim, ratio)

    def encode_image(
        self, model: TBPSModel, images: torch.Tensor
    ) -> tuple[TowerOutput, torch.Tensor]:
        """(tower output with token states, TSE embedding (B, embed_dim))."""
        hf = model.hf
        if model.kind == "siglip":
            out = model.image_forward(images, tokens=True)
            with torch.no_grad():
                head = hf.vision_model.head
                probe = head.probe.expand(out.tokens.shape[0], -1, -1)
                _, weights = head.attention(probe, out.tokens, out.tokens, need_weights=True)
            scores = weights[:, 0]
            selectable = torch.ones_like(scores, dtype=torch.bool)
        else:
            attention = hf.vision_model.encoder.layers[-1].self_attn
            capture = AttentionInputCapture(attention)
            with capture.capture():
                out = model.image_forward(images, tokens=True)
            hidden = capture.take()
            with torch.no_grad():
                query = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
                scores = pooled_token_attention(attention, hidden.detach(), query)
            selectable = torch.ones_like(scores, dtype=torch.bool)
            selectable[:, 0] = False  # the class token is what pools, not a part
        return out, self.image(out.tokens, scores, selectable)

    def encode_text(
        self, model: TBPSModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[TowerOutput, torch.Tensor]:
        """(tower output with token states, TSE embedding (B, embed_dim))."""
        attention = model.hf.text_model.encoder.layers[-1].self_attn
        capture = AttentionInputCapture(attention)
        with capture.capture():
            out = model.text_forward(input_ids, attention_mask, tokens=True)
        hidden = capture.take()
        pooled = _text_pooled_index(model, input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if model.kind == "siglip":  # bidirectional; padding attended unless the mask is used
            visible = attention_mask.bool() if model.text_attention_mask else None
        else:  # causal: the pooled token sees itself and what precedes it
            visible = positions[None, :] <= pooled[:, None]
            if model.text_attention_mask:
                visible = visible & attention_mask.bool()
        with torch.no_grad():
            scores = pooled_token_attention(attention, hidden.detach(), pooled, visible)
        special = torch.tensor(_special_ids(model), device=input_ids.device)
        real = attention_mask.bool()
        selectable = real & ~(input_ids[..., None] == special).any(-1)  # isin does not export
        empty = ~selectable.any(dim=1)  # an empty caption: fall back to its real tokens
        selectable = selectable | (empty[:, None] & real)  # bool Where does not run in ORT
        return out, self.text(out.tokens, scores, selectable)


def fused_embedding(global_embeds: torch.Tensor, tse_embeds: torch.Tensor) -> torch.Tensor:
    """[f, f_tse] / sqrt(2) with both parts L2-normalised: a unit vector whose dot products are
    the fused similarity (cos_global + cos_tse) / 2 that RDE ranks with."""
    return torch.cat(
        [F.normalize(global_embeds.float(), dim=-1), F.normalize(tse_embeds.float(), dim=-1)],
        dim=-1,
    ) / math.sqrt(2.0)
