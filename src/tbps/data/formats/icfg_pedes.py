"""ICFG-PEDES format: ``ICFG-PEDES.json`` (or ``ICFG_PEDES.json``) + ``imgs/``; no val split."""

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

ANNOTATION_NAMES = ("ICFG-PEDES.json", "ICFG_PEDES.json")
SPLITS = {"train": "train", "test": "test"}


def parse_icfg_pedes(root: str | os.PathLike, on_bad_caption: str = "error") -> DatasetSplits:
    """Parse an ICFG-PEDES folder (``root`` or ``root/ICFG-PEDES``).

    Same record schema as CUHK-PEDES (``split``, ``id``, ``file_path``, ``captions``), one caption
    per image, splits ``train`` and ``test`` only: the val split is carved from held-out training
    identities afterwards (``data.val_fraction``, see :func:`tbps.data.splits.carve_val_split`).
    """
    folder, annotation = locate_dataset_dir(root, ANNOTATION_NAMES, "ICFG-PEDES")
    splits, skipped = parse_record_list(
        load_json(annotation),
        annotation,
        folder / "imgs",
        path_key="file_path",
        caption_keys=("captions",),
        split_names=SPLITS,
        on_bad_caption=on_bad_caption,
    )
    return parsed_dataset("icfg_pedes", folder, annotation, splits, skipped, log)
