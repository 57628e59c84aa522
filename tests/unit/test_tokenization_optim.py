"""Caption tokenizer (train, fixed length, serialise) and the warm-up + cosine schedule."""

import math

import pytest
import torch

from tbps.data.tokenization import (
    load_tokenizer,
    tokenize,
    tokenizer_from_json,
    tokenizer_to_json,
    train_caption_tokenizer,
)
from tbps.training.optim import build_adamw, parameter_groups, warmup_cosine_factor

CAPTIONS = ["A woman in a RED coat.", "The man wears blue jeans, white sneakers"] * 10


def test_tokenizer_fixed_length_with_specials_and_round_trips(tmp_path):
    tok = train_caption_tokenizer(CAPTIONS, vocab_size=300, min_frequency=1)
    out = tokenize(tok, ["a woman in a red coat", "word " * 50], 10)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 10)
    assert ids[0, 0] == tok.bos_token_id and tok.eos_token_id in ids[0].tolist()
    assert ids[1, -1] == tok.eos_token_id and mask[1].all()  # truncation keeps end-of-text
    assert (ids[0][mask[0] == 0] == tok.pad_token_id).all()
    assert tok("RED")["input_ids"] == tok("red")["input_ids"]  # lower-cased
    assert tok.mask_token_id is not None and tok.eos_token_id != 2
    tok.save_pretrained(tmp_path)
    for other in (load_tokenizer(tmp_path), tokenizer_from_json(*tokenizer_to_json(tok))):
        assert torch.equal(
            tokenize(other, CAPTIONS[:2], 12)["input_ids"],
            tokenize(tok, CAPTIONS[:2], 12)["input_ids"],
        )


def test_warmup_cosine_schedule_values():
    assert warmup_cosine_factor(0, 100, 10, 0.01, 0.0) == pytest.approx(0.01)
    assert warmup_cosine_factor(5, 100, 10, 0.01, 0.0) == pytest.approx(0.01 + 0.99 * 0.5)
    assert warmup_cosine_factor(10, 100, 10, 0.01, 0.0) == pytest.approx(1.0)
    assert warmup_cosine_factor(55, 100, 10, 0.01, 0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))
    )
    assert warmup_cosine_factor(100, 100, 10, 0.01, 0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model[1].weight.requires_grad_(False)
    groups = parameter_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 2] and groups[1]["weight_decay"] == 0.0
    assert len(build_adamw(model, 1e-3).param_groups) == 2
