"""The generic format for custom data: one JSON or CSV file (image path, person id, caption, split)."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tbps.data.formats.common import (
    check_caption_policy,
    clean_caption,
    load_json,
    parsed_dataset,
)
from tbps.data.records import DatasetSplits, ImageRecord
from tbps.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ANNOTATION_NAMES = ("annotations.json", "annotations.csv")
#: field -> default column/key name
DEFAULT_COLUMNS = {
    "image": "image_path",
    "pid": "person_id",
    "caption": "caption",
    "split": "split",
}
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
}


def _annotation_file(root: Path, annotation: str | None) -> tuple[Path, Path]:
    """(dataset folder, annotation file) from ``root`` and the optional file name."""
    if root.is_file():
        return root.parent, root
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; set data.root to your data folder")
    if annotation:
        path = Path(annotation).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(f"annotation file {path} not found (data.options.annotation)")
        return root, path
    for name in ANNOTATION_NAMES:
        if (root / name).is_file():
            return root, root / name
    raise DataError(
        f"no annotation file {' or '.join(ANNOTATION_NAMES)} in {root}; "
        "name yours so or set data.options.annotation=FILE"
    )


def _json_rows(path: Path, columns: Mapping[str, str]) -> Iterator[tuple[str, dict]]:
    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {i} is a {type(record).__name__}, expected an object")
        if columns["caption"] not in record and f"{columns['caption']}s" in record:
            record = {**record, columns["caption"]: record[f"{columns['caption']}s"]}
        yield f"record {i}", record


def _csv_rows(path: Path, columns: Mapping[str, str]) -> Iterator[tuple[str, dict]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in columns.values() if c not in header]
            if missing:
                raise DataError(
                    f"{path}: CSV header lacks column(s) {missing}; header is {header} "
                    "(rename the columns or map them with data.options.columns)"
                )
            for row in reader:
                yield f"line {reader.line_num}", row
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV near line {reader.line_num}: {e}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _field(row: dict, key: str, where: str, path: Path) -> Any:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip() and key != "caption"):
        raise DataError(f"{path}: {where} has no value for {key!r}")
    return value


def _pid(value: Any, key: str, where: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DataError(f"{path}: {where} key {key!r} is {value!r:.40}, expected an integer id")
    try:
        return int(value)
    except ValueError:
        raise DataError(
            f"{path}: {where} key {key!r} is {value!r:.40}, expected an integer id"
        ) from None


def parse_generic(
    root: str | os.PathLike,
    annotation: str | None = None,
    image_dir: str | None = None,
    columns: Mapping[str, str] | None = None,
    on_bad_caption: str = "error",
) -> DatasetSplits:
    """Parse custom data described by one JSON or CSV file (see docs/custom-data.md).

    Every record/row gives ``image_path`` (relative to ``image_dir``: default ``imgs/`` when the
    folder has one, else the folder itself), ``person_id`` (integer), ``caption`` (a string; a
    JSON record may give a list, or use ``captions``) and ``split`` (train, val or test; also
    training/valid/validate/validation). Rows naming the same image are merged (captions in
    order); they must agree on person id and split. ``columns`` renames the four fields.
    """
    check_caption_policy(on_bad_caption)
    columns = {**DEFAULT_COLUMNS, **dict(columns or {})}
    unknown = set(columns) - set(DEFAULT_COLUMNS)
    if unknown:
        raise ConfigError(
            f"data.options.columns: unknown field(s) {sorted(unknown)}; valid: "
            f"{', '.join(DEFAULT_COLUMNS)}"
        )
    folder, path = _annotation_file(Path(root).expanduser(), annotation)
    if image_dir:
        images_root = Path(image_dir).expanduser()
        images_root = images_root if images_root.is_absolute() else folder / images_root
    else:
        images_root = folder / "imgs" if (folder / "imgs").is_dir() else folder
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path, columns)
    elif path.suffix.lower() == ".json":
        rows = _json_rows(path, columns)
    else:
        raise DataError(f"{path}: unknown annotation type {path.suffix!r}; use .json or .csv")

    skipped: list[tuple[str, str]] | None = [] if on_bad_caption == "skip" else None
    merged: dict[str, tuple[int, str, list[str], str]] = {}
    for where, row in rows:
        rel = str(_field(row, columns["image"], where, path))
        pid = _pid(_field(row, columns["pid"], where, path), columns["pid"], where, path)
        split_name = str(_field(row, columns["split"], where, path)).strip()
        split = SPLIT_ALIASES.get(split_name.lower())
        if split is None:
            raise DataError(
                f"{path}: {where} has split {split_name!r}, expected one of "
                f"{', '.join(SPLIT_ALIASES)}"
            )
        raw = _field(row, columns["caption"], where, path)
        if not isinstance(raw, str | list):
            raise DataError(
                f"{path}: {where} key {columns['caption']!r} is {type(raw).__name__}, "
                "expected a string or a list of strings"
            )
        captions = _captions(raw, where, columns["caption"], path, skipped)
        image_path = os.path.join(images_root, rel)
        if image_path in merged:
            old_pid, old_split, old_captions, first = merged[image_path]
            if (old_pid, old_split) != (pid, split):
                raise DataError(
                    f"{path}: {where} lists image {rel!r} as person {pid} in {split}, but "
                    f"{first} lists it as person {old_pid} in {old_split}"
                )
            old_captions.extend(captions)
        else:
            merged[image_path] = (pid, split, list(captions), where)

    splits: dict[str, list[ImageRecord]] = {"train": [], "val": [], "test": []}
    for image_path, (pid, split, captions, where) in merged.items():
        if not captions:
            assert skipped is not None
            skipped.append(("no_caption", f"{path}: {where} ({image_path}) has no usable caption"))
            continue
        splits[split].append(
            ImageRecord(pid, image_path, tuple(captions), f"{Path(path).name} {where}")
        )
    splits = {s: v for s, v in splits.items() if v or s == "train"}
    return parsed_dataset("custom", folder, path, splits, skipped or [], log)


def _captions(
    raw: str | list, where: str, key: str, path: Path, skipped: list[tuple[str, str]] | None
) -> tuple[str, ...]:
    """Clean one row's caption(s); errors and skips name the row as ``where``."""
    values = [raw] if isinstance(raw, str) else raw
    captions = []
    for j, value in enumerate(values):
        label = key if isinstance(raw, str) else f"{key}[{j}]"
        if not isinstance(value, str):
            raise DataError(f"{path}: {where} {label} is {type(value).__name__}, expected str")
        caption = clean_caption(value)
        if caption:
            captions.append(caption)
            continue
        message = f"{path}: {where} {label} is an empty caption"
        if skipped is None:
            raise DataError(f"{message} (set data.on_bad_caption=skip to skip such captions)")
        skipped.append(("empty_caption", message))
    return tuple(captions)
