"""A tiny model folder and a gallery folder of generated pedestrian images, for the index,
search and service tests."""

from __future__ import annotations

from pathlib import Path

import torch

from fixtures import COLOURS, person_image
from tbps.data.tokenization import train_caption_tokenizer
from tbps.model.tbps import TBPSModel
from tiny_backbones import tiny_spec

NAMES = list(COLOURS)
CAPTIONS = [f"a person in a {u} shirt and {lo} pants" for u in NAMES for lo in NAMES] * 4


def tiny_model(seed: int = 0, tse: bool = False) -> TBPSModel:
    """A random scratch CLIP (64x32 input, 24-d embeddings; +8 with token selection)."""
    tokenizer = train_caption_tokenizer(CAPTIONS, vocab_size=200, min_frequency=1)
    torch.manual_seed(seed)
    spec = tiny_spec(tokenizer, (64, 32))
    spec["token_selection"] = {"ratio": 0.5, "dim": 8} if tse else None
    return TBPSModel.from_spec(spec, tokenizer=tokenizer).eval()


def write_gallery(root: Path, count: int, start: int = 0, suffix: str = ".jpg") -> list[str]:
    """``count`` images under ``root`` in per-person sub-folders; returns their relative paths."""
    paths = []
    for i in range(start, start + count):
        rel = f"p{i // 3:03d}/{i:04d}{suffix}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        person_image(NAMES[i % 4], NAMES[(i // 4) % 4], seed=i).save(root / rel)
        paths.append(rel)
    return paths
