"""Writers of tiny random CLIP / SigLIP Hugging Face folders (weights + tokenizer), for tests."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel, SiglipTokenizer

from tbps.model.convert import clip_bpe_tokenizer, default_bpe_path
from tbps.model.factory import scratch_model_spec

CAPTIONS = [
    "A woman in a red coat, carrying a black backpack.",
    "a man wearing blue jeans and a white shirt",
    "The girl has long hair and a yellow skirt!",
    "He walks with a grey bag; his shoes are brown.",
    "an old man in a green jacket holding an umbrella",
] * 20


@lru_cache(maxsize=1)
def _clip_tokenizer_cached():
    return clip_bpe_tokenizer(default_bpe_path())


def clip_tokenizer():
    """CLIP's real BPE tokenizer (49,408 tokens), built from open_clip's merges file."""
    return _clip_tokenizer_cached()


def tiny_clip_config(
    image_size: int = 32,
    text_length: int = 16,
    vocab: int = 49408,
    vision_width: int = 32,
    special_ids: tuple[int, int, int] | None = None,
) -> CLIPConfig:
    """A 2-layer CLIP; ``special_ids`` = (bos, eos, pad), by default CLIP's last two ids."""
    bos, eos, pad = special_ids or (vocab - 2, vocab - 1, vocab - 1)
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=text_length,
            projection_dim=24,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=16,
            projection_dim=24,
        ),
        projection_dim=24,
    )


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (LayerNorms and biases too), so no mapping error hides."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))


def _save(model, folder: Path, fmt: str) -> None:
    if fmt == "safetensors":
        model.save_pretrained(folder)
    elif fmt == "bin":
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        raise ValueError(fmt)


def write_tiny_clip(folder: Path, fmt: str = "safetensors", seed: int = 0, **config) -> Path:
    """A tiny random CLIP folder (config.json + weights in ``fmt`` + CLIP's tokenizer)."""
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(**config))
    _perturb(model, seed)
    folder.mkdir(parents=True, exist_ok=True)
    _save(model, folder, fmt)
    clip_tokenizer().save_pretrained(folder)
    return folder


def train_spm(folder: Path, vocab_size: int = 120) -> Path:
    """A small SentencePiece model (pad 0, eos 1, unk 2 as SigLIP's) trained on CAPTIONS."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(c.lower() for c in CAPTIONS),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spiece.model"
    path.write_bytes(buffer.getvalue())
    return path


def siglip_tokenizer(folder: Path) -> SiglipTokenizer:
    return SiglipTokenizer(vocab_file=str(train_spm(folder)), model_max_length=16)


def tiny_siglip_config(
    vocab: int,
    image_size: int = 32,
    text_length: int = 16,
    special_ids: tuple[int | None, int, int] = (None, 1, 1),
) -> SiglipConfig:
    """A 2-layer SigLIP; ``special_ids`` = (bos, eos, pad), by default SigLIP's."""
    bos, eos, pad = special_ids
    return SiglipConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=text_length,
            pad_token_id=pad,
            eos_token_id=eos,
            bos_token_id=bos,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=16,
        ),
    )


def write_tiny_siglip(folder: Path, fmt: str = "safetensors", seed: int = 0, **config) -> Path:
    """A tiny random SigLIP folder (config.json + weights + SentencePiece tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = siglip_tokenizer(folder.parent / f"{folder.name}-spm")
    torch.manual_seed(seed)
    model = SiglipModel(tiny_siglip_config(len(tokenizer), **config))
    _perturb(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(2.3)  # the paper's init log(10) and -10, not transformers' zeros
        model.logit_bias.fill_(-10.0)
    _save(model, folder, fmt)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_spec(tokenizer, image_size=(64, 32)) -> dict:
    """The spec of a tiny scratch CLIP (32 wide, 1 layer per tower, 16 tokens, 24-d embedding)."""
    return scratch_model_spec(
        tokenizer,
        image_size,
        patch_size=16,
        vision={"width": 32, "layers": 1, "heads": 2},
        text={"width": 32, "layers": 1, "heads": 2, "length": 16},
        embed_dim=24,
    )
