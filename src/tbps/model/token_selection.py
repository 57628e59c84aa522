"""RDE's token selection embedding (TSE): the retrieval head that a model may carry."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tbps.errors import DataError

if TYPE_CHECKING:
    from tbps.model.tbps import TBPSModel, TowerOutput

#: a key only the token-selection head of tbps before RDE's exact layout had (no BatchNorm)
LEGACY_LAYOUT_KEY = "token_selection.image.mlp.0.weight"


def selection_size(ratio: float, slots: int) -> int:
    """k = int(ratio * slots), at least 1: RDE's fixed number of selected tokens (image: the
    patches, e.g. int(0.3 * 192) = 57; text: the context minus start and end, int(0.3 * 75) = 22)."""
    return max(1, int(ratio * slots))


class TokenMLP(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear on each token of (B, K, W); the BatchNorm sees the
    B*K tokens as one batch (RDE's MLP)."""

    def __init__(self, width: int, hidden: int, out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        hidden = self.bn(self.fc1(x).reshape(batch * tokens, -1)).relu()
        return self.fc2(hidden).reshape(batch, tokens, -1)


class TokenSelectionEmbedding(nn.Module):
    """One modality of RDE's TSE: ``max_k (linear(x_k) + mlp(x_k))`` over the selected tokens.

    x_k are the selected tokens, already in the embedding space (after the tower's final
    LayerNorm and projection) and L2-normalised here.
    """

    def __init__(self, token_width: int, embed_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(token_width, embed_dim)
        self.mlp = TokenMLP(token_width, embed_dim // 2, embed_dim)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """tokens (B, K, W) selected, keep (B, K) bool: which of them count -> (B, embed_dim)."""
        tokens = F.normalize(tokens, dim=-1)
        embedded = self.linear(tokens) + self.mlp(tokens)
        return embedded.masked_fill(~keep[..., None], float("-inf")).max(dim=1).values


def select_tokens(
    scores: torch.Tensor, selectable: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (B, k), keep (B, k) bool): the k best tokens by score, non-selectable ones
    ranked last (score -1 against attention probabilities in [0, 1]); of a sample with n
    selectable tokens only the first min(n, k) count."""
    counts = selectable.sum(dim=1)
    exporting = torch.compiler.is_compiling() or torch.jit.is_tracing()
    if not exporting and bool((counts == 0).any()):
        raise ValueError("token selection: a sample has no selectable token")
    indices = scores.float().masked_fill(~selectable, -1.0).topk(k, dim=1).indices
    keep = torch.arange(k, device=scores.device)[None, :] < counts[:, None]
    return indices, keep


def gather_tokens(states: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """states (B, N, W), indices (B, K) -> (B, K, W)."""
    return states.gather(1, indices[..., None].expand(-1, -1, states.shape[-1]))


def pooled_token_attention(
    attention: nn.Module,
    hidden_states: torch.Tensor,
    query_index: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one query token per sample to every token, averaged over heads: (B, N).

    Recomputed from the layer's own q/k projections (``q_proj``, ``k_proj``, ``num_heads``,
    ``head_dim``, ``scale``: the Hugging Face CLIP/SigLIP attention layout) on the hidden
    states that entered the attention, because SDPA attention returns no weights. The query is
    scaled before the product and the logits are float32, so half precision cannot overflow.
    ``key_mask`` (B, N), 1 = the token may be attended to (padding and causal future excluded).
    """
    batch = hidden_states.shape[0]
    rows = torch.arange(batch, device=hidden_states.device)
    query_states = hidden_states[rows, query_index]  # (B, W)
    heads, head_dim = attention.num_heads, attention.head_dim
    q = attention.q_proj(query_states).float() * attention.scale
    k = attention.k_proj(hidden_states).float()
    q = q.view(batch, heads, 1, head_dim)
    k = k.view(batch, -1, heads, head_dim).transpose(1, 2)
    with torch.autocast(hidden_states.device.type, enabled=False):
        logits = (q @ k.transpose(-1, -2)).squeeze(2)  # (B, H, N)
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

    Tokens: the towers' per-token features in the embedding space (final LayerNorm, then the
    projection: :meth:`TBPSModel.image_token_features` / ``text_token_features``).
    Importance: the pooled token's attention to each token in the tower's last layer, averaged
    over heads. SDPA returns no attention weights, so the last layer's attention input is
    captured with a forward pre-hook and its q/k projections are re-applied for the pooled query
    only (one query row per sample, no gradient). SigLIP's image tower pools with an attention
    probe instead of a class token: its probe attention is the importance.
    Image: the k = int(ratio * patches) best patches (CLIP's class token excluded). Text: the
    k = int(ratio * (context - 2)) best real tokens that are not special (bos/eos/pad), of which
    only the first min(n, k) count for a caption with n such tokens.
    Branches: ``image`` and ``text`` (:class:`TokenSelectionEmbedding`).
    """

    def __init__(self, token_width: int, embed_dim: int, ratio: float = 0.3) -> None:
        super().__init__()
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"token selection ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.image = TokenSelectionEmbedding(token_width, embed_dim)
        self.text = TokenSelectionEmbedding(token_width, embed_dim)

    @property
    def embed_dim(self) -> int:
        return self.image.linear.out_features

    def _embed(
        self,
        branch: TokenSelectionEmbedding,
        project: Callable[[torch.Tensor], torch.Tensor],
        states: torch.Tensor,
        scores: torch.Tensor,
        selectable: torch.Tensor,
        k: int,
    ) -> torch.Tensor:
        indices, keep = select_tokens(scores, selectable, k)
        # project only the selected tokens: the projection acts per token
        return branch(project(gather_tokens(states, indices)), keep)

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
        patches = scores.shape[1] - (0 if model.kind == "siglip" else 1)
        k = selection_size(self.ratio, patches)
        tse = self._embed(self.image, model.image_token_features, out.tokens, scores, selectable, k)
        return out, tse

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
        k = selection_size(self.ratio, input_ids.shape[1] - 2)  # the context minus start, end
        tse = self._embed(self.text, model.text_token_features, out.tokens, scores, selectable, k)
        return out, tse


def reject_legacy_layout(state: Mapping[str, torch.Tensor], source: str) -> None:
    """One clear error for weights of the token-selection head tbps had before it became RDE's
    (unprojected tokens, no BatchNorm): they cannot be mapped onto today's head."""
    if LEGACY_LAYOUT_KEY in state:
        raise DataError(
            f"{source}: its token-selection head is tbps's layout before RDE's exact TSE "
            "(unprojected tokens, an MLP without BatchNorm); those weights do not fit today's "
            "head: train the model again (objectives=rde)"
        )


def fused_embedding(global_embeds: torch.Tensor, tse_embeds: torch.Tensor) -> torch.Tensor:
    """[f, f_tse] / sqrt(2) with both parts L2-normalised: a unit vector whose dot products are
    the fused similarity (cos_global + cos_tse) / 2 that RDE ranks with."""
    return torch.cat(
        [F.normalize(global_embeds.float(), dim=-1), F.normalize(tse_embeds.float(), dim=-1)],
        dim=-1,
    ) / math.sqrt(2.0)
