"""BERT-style masking of token ids for MLM, on a separate copy of the caption."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import PreTrainedTokenizerBase

from tbps.errors import ConfigError

IGNORE_INDEX = -100


class TokenMasker:
    """Choose tokens to predict and corrupt them (80% mask / 10% random / 10% unchanged).

    Each non-special, attended token is chosen with ``probability``; a caption with no choice
    gets one chosen position at random (when it has any maskable token). Random replacements
    are drawn from the non-special vocabulary. Labels hold the original id at chosen positions
    and -100 elsewhere.
    """

    def __init__(
        self,
        mask_token_id: int,
        vocab_size: int,
        special_ids: Iterable[int],
        probability: float = 0.15,
    ) -> None:
        if not 0.0 < probability < 1.0:
            raise ConfigError(f"augment.mlm.probability must be in (0, 1), got {probability}")
        self.mask_token_id = int(mask_token_id)
        self.probability = probability
        self.special_ids = torch.tensor(sorted({int(i) for i in special_ids}), dtype=torch.long)
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[self.special_ids[self.special_ids < vocab_size]] = False
        self.random_ids = allowed.nonzero().squeeze(1)

    @classmethod
    def from_tokenizer(
        cls, tokenizer: PreTrainedTokenizerBase, probability: float = 0.15
    ) -> TokenMasker:
        """Masker for ``tokenizer``; ConfigError when it has no mask token."""
        if tokenizer.mask_token_id is None:
            raise ConfigError(
                "MLM masking needs a mask token, but the tokenizer has none: use a backbone "
                "whose tokenizer defines one (tbps adds <|mask|> to pretrained tokenizers)"
            )
        return cls(tokenizer.mask_token_id, len(tokenizer), tokenizer.all_special_ids, probability)

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked_ids, labels)`` for (B, L) ids; ``input_ids`` itself is left unchanged."""
        maskable = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)
        draw = torch.rand(input_ids.shape, generator=generator)
        chosen = (draw < self.probability) & maskable
        empty = ~chosen.any(dim=1) & maskable.any(dim=1)
        if empty.any():
            weights = maskable[empty].float()
            pick = torch.multinomial(weights, 1, generator=generator).squeeze(1)
            chosen[empty.nonzero().squeeze(1), pick] = True
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        masked = input_ids.clone()
        action = torch.rand(input_ids.shape, generator=generator)
        to_mask = chosen & (action < 0.8)
        to_random = chosen & (action >= 0.8) & (action < 0.9)
        masked[to_mask] = self.mask_token_id
        n_random = int(to_random.sum())
        if n_random:
            picks = torch.randint(len(self.random_ids), (n_random,), generator=generator)
            masked[to_random] = self.random_ids[picks]
        return masked, labels
