"""torch Datasets: training (image, caption) pairs, gallery images, query captions; collation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from tbps.data.images import load_image
from tbps.data.mlm import TokenMasker
from tbps.data.records import CaptionRecord
from tbps.data.text_augment import TextAugmenter
from tbps.data.tokenization import tokenize
from tbps.data.transforms import TrainStages, Transform


class ResizedImageCache:
    """Resized uint8 images, one slot per image path of one preallocated block.

    One block rather than a tensor per image: small tensors kept alive between the transient
    full-size decode buffers fragment the heap, and the process held on to memory it never used
    again (one epoch of the default run, peak RSS: 2,057 MiB with a tensor per image, 1,530 MiB
    with the block, 1,445 MiB uncached).
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self._slot = {path: i for i, path in enumerate(dict.fromkeys(paths))}
        self._filled = bytearray(len(self._slot))
        self._block: torch.Tensor | None = None
        self._kind: type = torch.Tensor

    def get(self, path: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached image of ``path``, made by ``make()`` the first time."""
        slot = self._slot[path]
        if self._filled[slot]:
            return self._block[slot].as_subclass(self._kind)  # type: ignore[index]
        image = make()
        if self._block is None:
            self._block = torch.empty((len(self._slot), *image.shape), dtype=image.dtype)
            self._kind = type(image)
        if image.shape != self._block.shape[1:] or image.dtype != self._block.dtype:
            return image  # not the common size (a resize to one side only): left uncached
        self._block[slot].copy_(image)
        self._filled[slot] = 1
        return self._block[slot].as_subclass(self._kind)


class TrainPairs(Dataset):
    """One sample per caption: ``{"image", "caption", "pid", "image_id", "index"}``.

    Optional extra views of the same decoded image: ``aug_image`` (MVS: ``transform`` applied
    again, independently) and ``ss_image1`` / ``ss_image2`` (two ``ss_transform`` views).
    ``text_augment`` rewrites the caption (EDA).
    Indexed by ``(index, seed)`` (what the training samplers yield), the sample's random
    choices (image transforms, EDA) come from ``seed`` alone and the global RNG is left as it
    was; the sample then also carries ``"seed"`` (the collator derives the MLM masking from
    it). Indexed by a plain ``index``, they come from the global RNG.
    ``cache_images``: keep each image's resized uint8 tensor (``transform.resize``, the
    deterministic first stage of :class:`TrainStages`) in memory after its first decoding, so
    later epochs only augment; the samples are the same as without the cache.
    """

    def __init__(
        self,
        records: Sequence[CaptionRecord],
        transform: Transform,
        mvs: bool = False,
        ss_transform: Transform | None = None,
        text_augment: TextAugmenter | None = None,
        cache_images: bool = False,
    ) -> None:
        if cache_images and not isinstance(transform, TrainStages):
            raise TypeError("cache_images needs a TrainStages transform (resize, augment)")
        if cache_images and ss_transform is not None:
            raise ValueError("cache_images cannot be used with SS views: they crop the full image")
        self.records = list(records)
        self.transform = transform
        self._resized = (
            ResizedImageCache([r.image_path for r in self.records]) if cache_images else None
        )
        self.mvs = mvs
        self.ss_transform = ss_transform
        self.text_augment = text_augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if not isinstance(key, tuple):
            return self._sample(key)
        index, seed = key
        with torch.random.fork_rng(devices=[]):  # the CPU generator is all transforms draw from
            torch.default_generator.manual_seed(seed)  # torch.manual_seed also seeds devices
            if self.text_augment is not None:
                self.text_augment.reseed(seed)
            sample = self._sample(index)
        sample["seed"] = seed
        return sample

    def _image(self, path: str):
        """The decoded image, or its cached resized uint8 tensor when caching."""
        if self._resized is None:
            return load_image(path)
        return self._resized.get(path, lambda: self.transform.resize(load_image(path)))

    def _sample(self, index: int) -> dict:
        r = self.records[index]
        image = self._image(r.image_path)
        transform = self.transform if self._resized is None else self.transform.augment
        caption = r.caption if self.text_augment is None else self.text_augment(r.caption)
        sample = {
            "image": transform(image),
            "caption": caption,
            "pid": r.pid,
            "image_id": r.image_id,
            "index": index,
        }
        if self.mvs:
            sample["aug_image"] = transform(image)
        if self.ss_transform is not None:
            sample["ss_image1"] = self.ss_transform(image)
            sample["ss_image2"] = self.ss_transform(image)
        return sample


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


#: sample key -> batch key of the extra image views
_VIEW_KEYS = {"aug_image": "aug_images", "ss_image1": "ss_images1", "ss_image2": "ss_images2"}


class Collator:
    """Stack images and tokenise captions of a batch (fixed length, with attention mask).

    Batch keys: ``images`` (B, 3, H, W), ``input_ids`` / ``attention_mask`` (B, L), ``pids``,
    ``indices``, ``image_ids`` where present, and ``captions`` (the strings tokenised). Views
    where present: ``aug_images``, ``ss_images1``, ``ss_images2`` (B, 3, H, W). With a
    ``masker``: ``mlm_input_ids`` (a masked copy) and ``mlm_labels`` (B, L); ``input_ids``
    stays unmasked; when the samples carry draw seeds the masking is drawn from their sum.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_length: int,
        masker: TokenMasker | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.text_length = text_length
        self.masker = masker

    def __call__(self, samples: list[dict]) -> dict:
        batch: dict = {
            "pids": torch.tensor([s["pid"] for s in samples], dtype=torch.long),
            "indices": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        }
        if "image" in samples[0]:
            batch["images"] = torch.stack([s["image"] for s in samples])
        for key, batch_key in _VIEW_KEYS.items():
            if key in samples[0]:
                batch[batch_key] = torch.stack([s[key] for s in samples])
        if "image_id" in samples[0]:
            batch["image_ids"] = torch.tensor([s["image_id"] for s in samples], dtype=torch.long)
        if "caption" in samples[0]:
            batch["captions"] = [s["caption"] for s in samples]
            tokens = tokenize(self.tokenizer, batch["captions"], self.text_length)
            batch["input_ids"] = tokens["input_ids"]
            batch["attention_mask"] = tokens["attention_mask"]
            if self.masker is not None:
                generator = None
                if "seed" in samples[0]:
                    seed = sum(s["seed"] for s in samples) % 2**63
                    generator = torch.Generator().manual_seed(seed)
                batch["mlm_input_ids"], batch["mlm_labels"] = self.masker(
                    tokens["input_ids"], tokens["attention_mask"], generator=generator
                )
        return batch
