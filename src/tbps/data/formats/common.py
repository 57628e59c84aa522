"""Helpers shared by the annotation-format parsers: locating files, JSON loading, field checks."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any

from tbps.errors import DataError


def locate_dataset_dir(
    root: str | os.PathLike, annotation_names: tuple[str, ...], subdir: str
) -> tuple[Path, Path]:
    """Find the folder holding one of ``annotation_names``: ``root`` itself or ``root/subdir``.

    Returns ``(dataset_dir, annotation_file)``; raises DataError saying what was looked for.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"dataset folder {root} does not exist. Generate the synthetic dataset with "
            f"`tbps data synth out={root}` or set data.root to the folder that holds "
            f"{' or '.join(annotation_names)} and imgs/"
        )
    for folder in (root, root / subdir):
        for name in annotation_names:
            if (folder / name).is_file():
                return folder, folder / name
    raise DataError(
        f"no annotation file {' or '.join(annotation_names)} in {root} or {root / subdir}; "
        f"set data.root to the dataset folder (the one holding the annotation file and imgs/)"
    )


def load_json(path: Path) -> Any:
    """Load a JSON file; malformed JSON is reported with file, line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def require(record: dict, key: str, kind: type | tuple[type, ...], index: int, path: Path) -> Any:
    """Return ``record[key]``, checking presence and type; errors name file, record and key."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: record {index} is a {type(record).__name__}, expected an object")
    if key not in record:
        raise DataError(f"{path}: record {index} has no key {key!r} (keys: {sorted(record)})")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise DataError(
            f"{path}: record {index} key {key!r} is {type(value).__name__} {value!r:.60}, expected {expected}"
        )
    return value


def clean_captions(value: Any, index: int, key: str, path: Path) -> tuple[str, ...]:
    """Validate a list of captions: non-empty strings, whitespace collapsed, Unicode NFC."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataError(f"{path}: record {index} key {key!r} must be a non-empty list of captions")
    captions = []
    for j, caption in enumerate(value):
        if not isinstance(caption, str):
            raise DataError(
                f"{path}: record {index} {key}[{j}] is {type(caption).__name__}, expected str"
            )
        caption = " ".join(unicodedata.normalize("NFC", caption).split())
        if not caption:
            raise DataError(f"{path}: record {index} {key}[{j}] is an empty caption")
        captions.append(caption)
    return tuple(captions)
