"""Caption tokenizer: train, fixed length, serialise."""

import torch

from tbps.data.tokenization import (
    load_tokenizer,
    tokenize,
    tokenizer_from_json,
    tokenizer_to_json,
    train_caption_tokenizer,
)

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
