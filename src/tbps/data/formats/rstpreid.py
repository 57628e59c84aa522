"""RSTPReid format: ``data_captions.json`` with ``img_path`` (flat file names) + ``imgs/``."""

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


def parse_rstpreid(root: str | os.PathLike, on_bad_caption: str = "error") -> DatasetSplits:
    """Parse an RSTPReid folder (``root`` or ``root/RSTPReid``).

    Each record: ``split`` (train/val/test), ``id`` (int), ``img_path`` (file name inside
    ``imgs/``; note: not ``file_path``), ``captions`` (list of str, usually 2).
    """
    folder, annotation = locate_dataset_dir(root, ("data_captions.json",), "RSTPReid")
    splits, skipped = parse_record_list(
        load_json(annotation),
        annotation,
        folder / "imgs",
        path_key="img_path",
        caption_keys=("captions",),
        split_names=SPLITS,
        on_bad_caption=on_bad_caption,
    )
    return parsed_dataset("rstpreid", folder, annotation, splits, skipped, log)
