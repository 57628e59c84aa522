"""BERT-style MLM masking: rates, 80/10/10 split, at least one per caption, specials untouched."""

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tbps.data.datasets import Collator
from tbps.data.mlm import IGNORE_INDEX, TokenMasker
from tbps.data.tokenization import tokenize, train_caption_tokenizer
from tbps.errors import ConfigError

VOCAB, MASK, BOS, EOS, PAD = 1000, 2, 3, 4, 0
SPECIALS = [PAD, 1, MASK, BOS, EOS]


def _batch(rows: int, length: int, real: int, seed: int = 0):
    """``rows`` captions of ``real`` tokens: BOS, ids >= 5, EOS, then padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((rows, length), PAD)
    ids[:, 0] = BOS
    ids[:, 1 : real - 1] = torch.randint(5, VOCAB, (rows, real - 2), generator=g)
    ids[:, real - 1] = EOS
    mask = torch.zeros_like(ids)
    mask[:, :real] = 1
    return ids, mask


def test_rates_and_80_10_10():
    ids, attn = _batch(4000, 48, 42)
    masker = TokenMasker(MASK, VOCAB, SPECIALS, probability=0.15)
    masked, labels = masker(ids, attn, torch.Generator().manual_seed(1))
    chosen = labels != IGNORE_INDEX
    rate = chosen.sum() / (4000 * 40)  # 40 maskable tokens per caption
    assert 0.145 < rate < 0.157
    assert torch.equal(labels[chosen], ids[chosen])
    n = chosen.sum()
    to_mask = (masked[chosen] == MASK).sum() / n
    unchanged = (masked[chosen] == ids[chosen]).sum() / n
    replaced = 1 - to_mask - unchanged
    assert abs(to_mask - 0.8) < 0.01 and abs(unchanged - 0.1) < 0.01 and abs(replaced - 0.1) < 0.01
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    swapped = masked[chosen & (masked != MASK) & (masked != ids)]
    assert swapped.numel() and not torch.isin(swapped, torch.tensor(SPECIALS)).any()


def test_at_least_one_per_caption_and_no_special_or_padding():
    ids, attn = _batch(500, 16, 4)  # 2 maskable tokens per caption: often none drawn at 15%
    masker = TokenMasker(MASK, VOCAB, SPECIALS)
    original = ids.clone()
    masked, labels = masker(ids, attn, torch.Generator().manual_seed(0))
    chosen = labels != IGNORE_INDEX
    assert chosen.sum(dim=1).min() >= 1
    assert not chosen[:, 0].any() and not chosen[:, 3:].any()  # BOS, EOS, padding
    assert torch.equal(ids, original)  # the caption itself is never modified
    assert torch.equal(masked[:, 3:], ids[:, 3:]) and torch.equal(masked[:, 0], ids[:, 0])


def test_deterministic_with_a_generator():
    ids, attn = _batch(64, 20, 15)
    masker = TokenMasker(MASK, VOCAB, SPECIALS)
    a = masker(ids, attn, torch.Generator().manual_seed(3))
    b = masker(ids, attn, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_collator_keeps_the_unmasked_caption_for_contrastive_losses():
    captions = ["a man in a red coat and blue jeans", "a woman with a black bag"] * 8
    tokenizer = train_caption_tokenizer(captions, vocab_size=200, min_frequency=1)
    collate = Collator(tokenizer, 16, TokenMasker.from_tokenizer(tokenizer))
    torch.manual_seed(0)
    batch = collate([{"caption": c, "pid": 0, "index": i} for i, c in enumerate(captions)])
    plain = tokenize(tokenizer, captions, 16)
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    assert batch["mlm_input_ids"].shape == batch["mlm_labels"].shape == (16, 16)
    chosen = batch["mlm_labels"] != IGNORE_INDEX
    assert chosen.any(dim=1).all()
    assert not torch.isin(
        batch["mlm_labels"][chosen], torch.tensor(tokenizer.all_special_ids)
    ).any()
    assert (batch["mlm_input_ids"] == tokenizer.mask_token_id).any()


def test_tokenizer_without_mask_token_is_a_config_error():
    tokenizer = train_caption_tokenizer(["a b c"], vocab_size=50, min_frequency=1)
    no_mask = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, pad_token="<|pad|>", eos_token="<|endoftext|>"
    )
    with pytest.raises(ConfigError, match="MLM masking needs a mask token"):
        TokenMasker.from_tokenizer(no_mask)
    with pytest.raises(ConfigError, match="probability must be in"):
        TokenMasker(MASK, VOCAB, SPECIALS, probability=0)
