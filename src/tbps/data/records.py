"""The common record form every dataset parser produces."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image: raw person id, absolute image path, its captions, and where the
    annotation file lists it (``reid_raw.json record 12``, ``labels.csv line 7``) for messages."""

    pid: int
    image_path: str
    captions: tuple[str, ...]
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class CaptionRecord:
    """One training sample: a caption paired with its image (pid remapped to 0..N-1)."""

    pid: int
    image_id: int
    image_path: str
    caption: str


@dataclass
class DatasetSplits:
    """Parsed dataset: image records per split (``train``/``val``/``test``) and provenance.

    ``notes`` says how the splits were made (carved val, folds, mixtures); ``skipped`` lists
    ``(kind, message)`` for every annotation entry a documented skip option dropped.
    """

    name: str
    root: str
    splits: dict[str, list[ImageRecord]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def split(self, name: str) -> list[ImageRecord]:
        if name not in self.splits:
            raise KeyError(
                f"dataset {self.name!r} has no split {name!r} (has {sorted(self.splits)})"
            )
        return self.splits[name]


def training_records(images: list[ImageRecord]) -> tuple[list[CaptionRecord], dict[int, int]]:
    """Flatten images into caption records with pids remapped to 0..N-1 (sorted raw ids).

    Returns the records and the mapping raw pid -> training label.
    """
    pid_map = {pid: label for label, pid in enumerate(sorted({r.pid for r in images}))}
    records = [
        CaptionRecord(pid=pid_map[img.pid], image_id=image_id, image_path=img.image_path, caption=c)
        for image_id, img in enumerate(images)
        for c in img.captions
    ]
    return records, pid_map


def gallery_and_queries(
    images: list[ImageRecord],
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Evaluation view: gallery ``(pid, image_path)`` with each image once, queries ``(pid, caption)``."""
    gallery = [(img.pid, img.image_path) for img in images]
    queries = [(img.pid, c) for img in images for c in img.captions]
    return gallery, queries
