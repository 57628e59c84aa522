"""Training-only heads: ID classifier, MLM cross-modal head, SimCLR projector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tbps.losses.common import as_float, float32_region
from tbps.model.activations import QuickGELU


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
        """(B, D) raw embeddings -> (B, num_classes) logits, float32 even under autocast.

        The logits go straight into the cross-entropy, so the (small) layer skips autocast.
        """
        weight, bias = as_float(self.linear.weight), as_float(self.linear.bias)
        with float32_region(embeds.device):
            return F.linear(as_float(embeds), weight, bias)


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


class TrainingHeads(nn.Module):
    """The heads that the enabled objectives need; the others stay None.

    ``id_classifier`` (``num_classes`` > 0), ``mlm`` (``mlm_layers`` set), ``ss_projector``
    (``ss``). RDE's token selection is a retrieval head: it lives on the model
    (:attr:`tbps.model.tbps.TBPSModel.token_selection`).
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
    ) -> None:
        super().__init__()
        self.id_classifier = IdentityClassifier(embed_dim, num_classes) if num_classes else None
        self.mlm = (
            MLMHead(text_width, vision_width, embed_dim, vocab_size, layers=mlm_layers)
            if mlm_layers
            else None
        )
        self.ss_projector = SimCLRProjector(embed_dim) if ss else None
