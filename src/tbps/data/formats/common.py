"""Helpers shared by the annotation-format parsers: locating files, JSON loading, field checks."""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from pathlib import Path
from typing import Any

from tbps.data.records import DatasetSplits, ImageRecord
from tbps.errors import ConfigError, DataError


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


CAPTION_POLICIES = ("error", "skip")


def check_caption_policy(policy: str) -> None:
    """Reject an unknown ``data.on_bad_caption`` value."""
    if policy not in CAPTION_POLICIES:
        raise ConfigError(f"data.on_bad_caption={policy!r}; valid: {', '.join(CAPTION_POLICIES)}")


def clean_caption(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def clean_captions(
    value: Any,
    index: int,
    key: str,
    path: Path | str,
    skipped: list[tuple[str, str]] | None = None,
) -> tuple[str, ...]:
    """Validate a list of captions: non-empty strings, whitespace collapsed, Unicode NFC.

    An empty caption raises DataError, unless ``skipped`` is given (``on_bad_caption=skip``):
    then it is dropped and ``("empty_caption", message)`` appended there.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or (not value and skipped is None):
        raise DataError(f"{path}: record {index} key {key!r} must be a non-empty list of captions")
    captions = []
    for j, caption in enumerate(value):
        if not isinstance(caption, str):
            raise DataError(
                f"{path}: record {index} {key}[{j}] is {type(caption).__name__}, expected str"
            )
        caption = clean_caption(caption)
        if not caption:
            message = f"{path}: record {index} {key}[{j}] is an empty caption"
            if skipped is None:
                raise DataError(f"{message} (set data.on_bad_caption=skip to skip such captions)")
            skipped.append(("empty_caption", message))
            continue
        captions.append(caption)
    return tuple(captions)


def parse_record_list(
    data: Any,
    annotation: Path,
    image_root: Path,
    *,
    path_key: str,
    caption_keys: tuple[str, ...],
    split_names: dict[str, str],
    on_bad_caption: str = "error",
) -> tuple[dict[str, list[ImageRecord]], list[tuple[str, str]]]:
    """Records of the CUHK-PEDES family (a JSON list of ``{split, id, <path_key>, <captions>}``).

    ``split_names`` maps the file's split names to ours (e.g. ``validate -> val``); captions of
    all ``caption_keys`` are concatenated. Returns image records per split and the skips made
    under ``on_bad_caption=skip`` (an image left with no caption is skipped too).
    """
    check_caption_policy(on_bad_caption)
    if not isinstance(data, list):
        raise DataError(
            f"{annotation}: expected a JSON list of image records, got {type(data).__name__}"
        )
    skipped: list[tuple[str, str]] | None = [] if on_bad_caption == "skip" else None
    splits: dict[str, list[ImageRecord]] = {s: [] for s in dict.fromkeys(split_names.values())}
    root = str(image_root)
    join = os.path.join
    for i, record in enumerate(data):
        split_name = require(record, "split", str, i, annotation)
        split = split_names.get(split_name)
        if split is None:
            raise DataError(
                f"{annotation}: record {i} has split {split_name!r}, expected one of "
                f"{tuple(split_names)}"
            )
        pid = require(record, "id", int, i, annotation)
        rel_path = require(record, path_key, str, i, annotation)
        captions: tuple[str, ...] = ()
        for key in caption_keys:
            value = require(record, key, (list, str), i, annotation)
            captions += clean_captions(value, i, key, annotation, skipped)
        if not captions:
            assert skipped is not None  # error mode raised already
            skipped.append(
                ("no_caption", f"{annotation}: record {i} ({rel_path}) has no usable caption")
            )
            continue
        source = f"{Path(annotation).name} record {i}"
        splits[split].append(ImageRecord(pid, join(root, rel_path), captions, source))
    return splits, skipped or []


def log_skips(name: str, skipped: list[tuple[str, str]], log: logging.Logger) -> None:
    """One warning with the number of skipped entries and the first few."""
    if skipped:
        log.warning(
            "%s: skipped %d annotation entries (data.on_bad_caption=skip); first: %s",
            name,
            len(skipped),
            "; ".join(message for _, message in skipped[:3]),
        )


def parsed_dataset(
    name: str,
    folder: Path,
    annotation: Path,
    splits: dict[str, list[ImageRecord]],
    skipped: list[tuple[str, str]],
    log: logging.Logger,
) -> DatasetSplits:
    """Wrap parsed splits as :class:`DatasetSplits`, logging their sizes and any skips."""
    log.info(
        "parsed %s: %s", annotation, ", ".join(f"{s} {len(v)} images" for s, v in splits.items())
    )
    log_skips(name, skipped, log)
    return DatasetSplits(name=name, root=str(folder), splits=splits, skipped=list(skipped))
