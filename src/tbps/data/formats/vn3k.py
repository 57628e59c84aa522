"""VN3K format: ``data_captions.json`` with Vietnamese ``captions`` and English ``en_captions``."""

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
from tbps.errors import ConfigError

log = logging.getLogger(__name__)

#: the file's split names -> ours (VN3K calls its val split ``validate``)
SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
#: language -> caption keys used (``mixed``: each caption of both languages is its own sample)
LANGUAGES = {"vi": ("captions",), "en": ("en_captions",), "mixed": ("captions", "en_captions")}


def parse_vn3k(
    root: str | os.PathLike, language: str = "vi", on_bad_caption: str = "error"
) -> DatasetSplits:
    """Parse a VN3K folder (``root`` or ``root/VN3K``) with the captions of ``language``.

    Each record: ``split`` (train/validate/test), ``id`` (int, 1-based), ``file_path``
    (relative to ``imgs/``), ``captions`` (Vietnamese list), ``en_captions`` (English list).
    Captions are Unicode-normalised to NFC (Vietnamese text often arrives decomposed).
    """
    if language not in LANGUAGES:
        raise ConfigError(f"VN3K language {language!r}; valid: {', '.join(LANGUAGES)}")
    folder, annotation = locate_dataset_dir(root, ("data_captions.json",), "VN3K")
    splits, skipped = parse_record_list(
        load_json(annotation),
        annotation,
        folder / "imgs",
        path_key="file_path",
        caption_keys=LANGUAGES[language],
        split_names=SPLITS,
        on_bad_caption=on_bad_caption,
    )
    return parsed_dataset(f"vn3k_{language}", folder, annotation, splits, skipped, log)


def parse_vn3k_en(root: str | os.PathLike, on_bad_caption: str = "error") -> DatasetSplits:
    """VN3K with its English captions (``en_captions``)."""
    return parse_vn3k(root, "en", on_bad_caption)


def parse_vn3k_vi(root: str | os.PathLike, on_bad_caption: str = "error") -> DatasetSplits:
    """VN3K with its Vietnamese captions (``captions``)."""
    return parse_vn3k(root, "vi", on_bad_caption)


def parse_vn3k_mixed(root: str | os.PathLike, on_bad_caption: str = "error") -> DatasetSplits:
    """VN3K with both languages; every caption is its own training sample and query."""
    return parse_vn3k(root, "mixed", on_bad_caption)
