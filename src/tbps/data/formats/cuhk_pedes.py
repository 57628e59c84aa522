"""CUHK-PEDES format: ``reid_raw.json`` (a list of image records) + ``imgs/``."""

from __future__ import annotations

import logging
import os

from tbps.data.formats.common import clean_captions, load_json, locate_dataset_dir, require
from tbps.data.records import DatasetSplits, ImageRecord
from tbps.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def parse_cuhk_pedes(root: str | os.PathLike, name: str = "cuhk_pedes") -> DatasetSplits:
    """Parse a CUHK-PEDES folder (``root`` or ``root/CUHK-PEDES``).

    Each record: ``split`` (train/val/test), ``id`` (int, 1-based), ``file_path`` (relative to
    ``imgs/``), ``captions`` (list of str). ``processed_tokens`` is ignored. Raw ids are kept;
    training labels are remapped later.
    """
    folder, annotation = locate_dataset_dir(root, ("reid_raw.json",), "CUHK-PEDES")
    data = load_json(annotation)
    if not isinstance(data, list):
        raise DataError(
            f"{annotation}: expected a JSON list of image records, got {type(data).__name__}"
        )
    image_root = folder / "imgs"
    splits: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    for i, record in enumerate(data):
        split = require(record, "split", str, i, annotation)
        if split not in splits:
            raise DataError(
                f"{annotation}: record {i} has split {split!r}, expected one of {SPLITS}"
            )
        pid = require(record, "id", int, i, annotation)
        file_path = require(record, "file_path", str, i, annotation)
        captions = clean_captions(
            require(record, "captions", (list, str), i, annotation), i, "captions", annotation
        )
        splits[split].append(
            ImageRecord(pid=pid, image_path=str(image_root / file_path), captions=captions)
        )
    log.info(
        "parsed %s: %s",
        annotation,
        ", ".join(f"{s} {len(v)} images" for s, v in splits.items()),
    )
    return DatasetSplits(name=name, root=str(folder), splits=splits)
