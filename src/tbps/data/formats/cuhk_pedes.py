"""CUHK-PEDES format: ``reid_raw.json`` (a list of image records) + ``imgs/``."""

from __future__ import annotations

import logging
import os

from tbps.data.formats.common import (
    load_json,
    locate_dataset_dir,
    parse_record_list,
    parsed_dataset,
)
from tbps.data.records import DatasetSplits

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "val": "val", "test": "test"}


def parse_cuhk_pedes(root: str | os.PathLike, on_bad_caption: str = "error") -> DatasetSplits:
    """Parse a CUHK-PEDES folder (``root`` or ``root/CUHK-PEDES``).

    Each record: ``split`` (train/val/test), ``id`` (int, 1-based), ``file_path`` (relative to
    ``imgs/``, with sub-folders), ``captions`` (list of str). ``processed_tokens`` is ignored.
    Raw ids are kept; training labels are remapped later.
    """
    folder, annotation = locate_dataset_dir(root, ("reid_raw.json",), "CUHK-PEDES")
    splits, skipped = parse_record_list(
        load_json(annotation),
        annotation,
        folder / "imgs",
        path_key="file_path",
        caption_keys=("captions",),
        split_names=SPLITS,
        on_bad_caption=on_bad_caption,
    )
    return parsed_dataset("cuhk_pedes", folder, annotation, splits, skipped, log)
