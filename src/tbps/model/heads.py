"""Training heads: ID classifier, MLM cross-modal head, SimCLR projector, token selection (TSE)."""

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


class IdentityClassifier(nn.Module):
    """One linear classifier over person ids, shared by the image and text embeddings.

    Weights start at N(0, 0.001^2) and the bias at 0, so early logits are near uniform.
    """

    def __init__(self, embed_dim: int, num_classes: int, init_std: float = 0.001) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"the ID classifier needs at least one class, got {num_classes}")
        self.linear = nn.Linear(embed_dim, num_classes)
        nn.init.normal_(self.linear.weight, std=init_std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """(B, D) raw embeddings -> (B, num_classes) logits."""
        return self.linear(embeds)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation of CLIP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def attention_heads(width: int, head_width: int = 64) -> int:
    """width / 64 heads (at least 1), lowered to the nearest count that divides ``width``."""
    heads = max(1, width // head_width)
    while width % heads:
        heads -= 1
    return heads


class MLMHead(nn.Module):
    """IRRA's implicit relation reasoning head: masked caption tokens reason over image tokens.

    text tokens -> linear to D -> cross-attention (queries: text, keys/values: image tokens,
    padding masks on the keys) -> ``layers``-layer transformer of width D with D/64 heads (text
    padding masked) -> LayerNorm -> dense -> QuickGELU -> LayerNorm -> vocabulary logits.
    The tower token states of any width are first mapped to D by their own linear layers.
    """

    def __init__(
        self,
        text_width: int,
        vision_width: int,
        embed_dim: int,
        vocab_size: int,
        layers: int = 4,
        heads: int | None = None,
    ) -> None:
        super().__init__()
        heads = heads or attention_heads(embed_dim)
        self.text_in = nn.Linear(text_width, embed_dim)
        self.image_in = nn.Linear(vision_width, embed_dim)
        self.norm_text = nn.LayerNorm(embed_dim)
        self.norm_image = nn.LayerNorm(embed_dim)
        self.cross_attn = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
        layer = nn.TransformerEncoderLayer(
            embed_dim,
            heads,
            dim_feedforward=4 * embed_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(embed_dim)
        self.predictor = nn.Sequential(
            nn.Linear(embed_dim, embed_dim),
            QuickGELU(),
            nn.LayerNorm(embed_dim),
            nn.Linear(embed_dim, vocab_size),
        )

    def forward(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        image_tokens: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Vocabulary logits of the caption positions.

        text_tokens (B, L, Wt) and text_mask (B, L) (1 = real token); image_tokens (B, N, Wv)
        and optional image_mask (B, N). With ``positions`` (B, L) bool, only those positions
        are predicted: (M, V) in row-major order (what MLM needs: labels[positions]);
        otherwise (B, L, V).
        """
        text_pad = ~text_mask.bool()
        image_pad = None if image_mask is None else ~image_mask.bool()
        queries = self.norm_text(self.text_in(text_tokens))
        keys = self.norm_image(self.image_in(image_tokens))
        x, _ = self.cross_attn(queries, keys, keys, key_padding_mask=image_pad, need_weights=False)
        x = self.transformer(x, src_key_padding_mask=text_pad)
        x = self.norm_out(x)
        if positions is not None:
            x = x[positions.bool()]
        return self.predictor(x)


class SimCLRProjector(nn.Module):
    """The SimCLR MLP on image embeddings: D -> D -> D (Linear, ReLU, Linear)."""

    def __init__(self, embed_dim: int, hidden_dim: int | None = None, out_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or embed_dim
        self.net = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim or embed_dim),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.net(embeds)


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
        """(indices (B, K), keep (B, K) bool) of the top tokens by score among the selectable."""
        counts = selectable.sum(dim=1)
        if bool((counts == 0).any()):
            raise ValueError("token selection: a sample has no selectable token")
        keep_counts = (counts.float() * self.ratio).floor().long().clamp(min=1)
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
        selectable = real & ~torch.isin(input_ids, special)
        empty = ~selectable.any(dim=1)  # an empty caption: fall back to its real tokens
        selectable = torch.where(empty[:, None], real, selectable)
        return out, self.text(out.tokens, scores, selectable)


def fused_embedding(global_embeds: torch.Tensor, tse_embeds: torch.Tensor) -> torch.Tensor:
    """[f, f_tse] / sqrt(2) with both parts L2-normalised: a unit vector whose dot products are
    the fused similarity (cos_global + cos_tse) / 2 that RDE ranks with."""
    return torch.cat(
        [F.normalize(global_embeds.float(), dim=-1), F.normalize(tse_embeds.float(), dim=-1)],
        dim=-1,
    ) / math.sqrt(2.0)


class TrainingHeads(nn.Module):
    """The heads that the enabled objectives need; the others stay None.

    ``id_classifier`` (``num_classes`` > 0), ``mlm`` (``mlm_layers`` set), ``ss_projector``
    (``ss``), ``tse`` (``tse_ratio`` set; width ``tse_dim`` or ``embed_dim``).
    """

    def __init__(
        self,
        embed_dim: int,
        vision_width: int,
        text_width: int,
        vocab_size: int,
        num_classes: int = 0,
        mlm_layers: int | None = None,
        ss: bool = False,
        tse_ratio: float | None = None,
        tse_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.id_classifier = IdentityClassifier(embed_dim, num_classes) if num_classes else None
        self.mlm = (
            MLMHead(text_width, vision_width, embed_dim, vocab_size, layers=mlm_layers)
            if mlm_layers
            else None
        )
        self.ss_projector = SimCLRProjector(embed_dim) if ss else None
        self.tse = (
            TokenSelectionHead(vision_width, text_width, tse_dim or embed_dim, tse_ratio)
            if tse_ratio
            else None
        )
