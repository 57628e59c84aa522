"""torch Datasets: training (image, caption) pairs, gallery images, query captions; collation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from tbps.data.images import load_image
from tbps.data.records import CaptionRecord
from tbps.data.tokenization import tokenize
from tbps.data.transforms import Transform


class TrainPairs(Dataset):
    """One sample per caption: ``{"image", "caption", "pid", "image_id", "index"}``."""

    def __init__(self, records: Sequence[CaptionRecord], transform: Transform) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        return {
            "image": self.transform(load_image(r.image_path)),
            "caption": r.caption,
            "pid": r.pid,
            "image_id": r.image_id,
            "index": index,
        }


class GalleryImages(Dataset):
    """Evaluation gallery, each image once: ``{"image", "pid", "index"}``."""

    def __init__(self, gallery: Sequence[tuple[int, str]], transform: Transform) -> None:
        self.gallery = list(gallery)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.gallery)

    def __getitem__(self, index: int) -> dict:
        pid, path = self.gallery[index]
        return {"image": self.transform(load_image(path)), "pid": pid, "index": index}


class QueryCaptions(Dataset):
    """Evaluation queries: ``{"caption", "pid", "index"}``."""

    def __init__(self, queries: Sequence[tuple[int, str]]) -> None:
        self.queries = list(queries)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict:
        pid, caption = self.queries[index]
        return {"caption": caption, "pid": pid, "index": index}


class Collator:
    """Stack images and tokenise captions of a batch (fixed length, with attention mask).

    Batch keys: ``images`` (B, 3, H, W), ``input_ids`` / ``attention_mask`` (B, L), ``pids``,
    ``indices``, ``image_ids`` where present, and ``captions`` (the raw strings).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, text_length: int) -> None:
        self.tokenizer = tokenizer
        self.text_length = text_length

    def __call__(self, samples: list[dict]) -> dict:
        batch: dict = {
            "pids": torch.tensor([s["pid"] for s in samples], dtype=torch.long),
            "indices": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        }
        if "image" in samples[0]:
            batch["images"] = torch.stack([s["image"] for s in samples])
        if "image_id" in samples[0]:
            batch["image_ids"] = torch.tensor([s["image_id"] for s in samples], dtype=torch.long)
        if "caption" in samples[0]:
            batch["captions"] = [s["caption"] for s in samples]
            tokens = tokenize(self.tokenizer, batch["captions"], self.text_length)
            batch["input_ids"] = tokens["input_ids"]
            batch["attention_mask"] = tokens["attention_mask"]
        return batch
