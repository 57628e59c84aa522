"""Retriever: a model and the gallery index it built; text or image queries -> ranked images."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from tbps.data.images import load_image
from tbps.errors import ConfigError
from tbps.evaluation.encode import resolve_device
from tbps.inference.index import GalleryIndex, model_fingerprint

log = logging.getLogger(__name__)

TEXT_CACHE = 1024  # text embeddings kept for repeated queries


@dataclass(frozen=True)
class Hit:
    """One result: rank (1 = best), image id in the index, path relative to the image folder,
    cosine similarity."""

    rank: int
    id: int
    path: str
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


class Retriever:
    """Search a :class:`GalleryIndex` with the model that built it.

    >>> retriever = Retriever.from_index("gallery-index")          # the model it recorded
    >>> retriever.search("a woman in a red coat", k=5)[0].path
    """

    def __init__(
        self, model, index: GalleryIndex, device: str | torch.device | None = "auto"
    ) -> None:
        fingerprint = model_fingerprint(model)
        if fingerprint != index.fingerprint:
            raise ConfigError(
                f"index {index.directory} was built by another model (fingerprint "
                f"{index.fingerprint[:12]}, {index.manifest.model.get('model') or index.manifest.model.get('ckpt_path')}); "
                f"this model's is {fingerprint[:12]}: search with the model that built it, or "
                "rebuild the index with tbps index"
            )
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.index = index
        self._lock = threading.Lock()  # one forward pass at a time (the service is threaded)
        self._texts: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def from_index(
        cls,
        index: str | os.PathLike,
        model: str | os.PathLike | None = None,
        device: str | torch.device | None = "auto",
    ) -> Retriever:
        """Load the index, and the model it recorded (or the folder ``model``)."""
        from tbps.model.tbps import TBPSModel

        gallery = GalleryIndex.load(index, device=resolve_device(device))
        recorded = gallery.manifest.model
        if model is not None:
            return cls(TBPSModel.from_pretrained(model), gallery, device)
        if recorded.get("model"):
            return cls(TBPSModel.from_pretrained(recorded["model"]), gallery, device)
        if recorded.get("ckpt_path"):
            from tbps.model.checkpoint import model_from_checkpoint

            return cls(model_from_checkpoint(recorded["ckpt_path"]), gallery, device)
        raise ConfigError(f"index {index} records no model path: pass model=DIR")

    def __len__(self) -> int:
        return len(self.index)

    @torch.no_grad()
    def encode_text(self, query: str) -> torch.Tensor:
        """The (1, D) embedding of a caption (cached: the last :data:`TEXT_CACHE` queries)."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query must be a non-empty string")
        with self._lock:
            cached = self._texts.get(query)
            if cached is not None:
                self._texts.move_to_end(query)
                return cached
            tokens = self.model.tokenize([query])
            embedding = self.model.encode_texts(
                tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            ).float()
            self._texts[query] = embedding
            if len(self._texts) > TEXT_CACHE:
                self._texts.popitem(last=False)
        return embedding

    @torch.no_grad()
    def encode_image(self, image: Image.Image | str | os.PathLike) -> torch.Tensor:
        """The (1, D) embedding of an image (a PIL image or a file)."""
        if not isinstance(image, Image.Image):
            image = load_image(Path(image).expanduser())
        pixels = self.model.preprocess([image]).to(self.device)
        with self._lock:
            return self.model.encode_images(pixels).float()

    def search_embedding(self, embedding: torch.Tensor, k: int = 10) -> list[Hit]:
        """Rank the gallery for one (1, D) or (D,) unit-norm query embedding."""
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        (row,) = self.index.search(embedding.reshape(1, -1), k)
        return [Hit(r, i, self.index.paths[i], s) for r, (i, s) in enumerate(row, start=1)]

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """Text-to-image: the ``k`` gallery images closest to the caption, best first (the whole
        gallery, ranked, when ``k`` exceeds it)."""
        return self.search_embedding(self.encode_text(query), k)

    def search_image(self, image: Image.Image | str | os.PathLike, k: int = 10) -> list[Hit]:
        """Image-to-image: the gallery images closest to ``image`` (the same person)."""
        return self.search_embedding(self.encode_image(image), k)

    def search_similar(self, image_id: int, k: int = 10) -> list[Hit]:
        """Image-to-image from an indexed image (its stored embedding; it ranks itself first)."""
        return self.search_embedding(self.index.vector(image_id), k)
