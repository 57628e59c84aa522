"""Tokenizers: train one on the training captions (models from scratch) and tokenise batches."""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, UNK, MASK, BOS, EOS = "<|pad|>", "<|unk|>", "<|mask|>", "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = [PAD, UNK, MASK, BOS, EOS]  # ids 0..4: eos is not 2 (CLIP's legacy pooling id)


def train_caption_tokenizer(
    captions: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a lower-cased BPE tokenizer on captions.

    Output: ``<|startoftext|> tokens <|endoftext|>``; pad, unk and mask tokens are defined, so
    the tokenizer serves contrastive training and MLM alike.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer=trainer)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        mask_token=MASK,
        model_max_length=512,
    )


def tokenizer_from_json(
    tokenizer_json: str, special_tokens: dict[str, str]
) -> PreTrainedTokenizerFast:
    """Rebuild a fast tokenizer from its serialised JSON (as stored in a checkpoint)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json), model_max_length=512, **special_tokens
    )


def tokenizer_to_json(tokenizer: PreTrainedTokenizerFast) -> tuple[str, dict[str, str]]:
    """Serialise a fast tokenizer: its JSON and its special-token names."""
    return tokenizer.backend_tokenizer.to_str(), dict(tokenizer.special_tokens_map)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved with ``save_pretrained`` (or any Hugging Face tokenizer folder)."""
    return AutoTokenizer.from_pretrained(str(path))


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], length: int) -> dict:
    """Fixed-length tokenisation (truncate + pad) with attention mask, as int64 tensors.

    Truncation keeps the end-of-text token: it is where CLIP pools the text embedding.
    """
    return tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=length,
        return_tensors="pt",
        return_token_type_ids=False,
    )
