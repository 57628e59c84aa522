"""Dataset generation: splits, rendering + captioning every image, marker and atomic writing."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from tbps.data.synthetic.attributes import image_rng, sample_identities, sample_shot
from tbps.data.synthetic.captions import planned_captions, tokenize
from tbps.data.synthetic.common import _SALT_COUNT, _SALT_SPLIT
from tbps.data.synthetic.config import SynthConfig, _split_counts
from tbps.data.synthetic.oracle import caption_facts, oracle_r1
from tbps.data.synthetic.render import render_image

# The package name, as before the split into modules: it names the log records and the marker's
# "generator" field.
logger = logging.getLogger(__package__)

SYNTH_MARKER = ".tbps_synth.json"
SYNTH_VERSION = 1
ATTRIBUTES_FILE = "attributes.json"

_SPLIT_NAMES = {"cuhk": ("train", "val", "test"), "vn3k": ("train", "validate", "test")}
_ANNOTATION_FILE = {"cuhk": "reid_raw.json", "vn3k": "data_captions.json"}


def assign_splits(config: SynthConfig) -> dict[str, list[int]]:
    """Person ids (1-based) of each split ("train", "val", "test"), disjoint, seeded shuffle."""
    n_train, n_val, _ = _split_counts(config.num_identities, config.split_fractions)
    perm = np.random.default_rng([config.seed, _SALT_SPLIT]).permutation(config.num_identities) + 1
    return {
        "train": sorted(int(i) for i in perm[:n_train]),
        "val": sorted(int(i) for i in perm[n_train : n_train + n_val]),
        "test": sorted(int(i) for i in perm[n_train + n_val :]),
    }


def _images_per_identity(config: SynthConfig, pid: int) -> int:
    lo, hi = config.images_per_identity
    return int(np.random.default_rng([config.seed, _SALT_COUNT, pid]).integers(lo, hi + 1))


def _write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file + rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _existing_summary(out: Path, config: SynthConfig) -> dict | None:
    """Summary of a finished dataset with the same config in ``out``; None if ``out`` is free."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another output folder")
    marker = out / SYNTH_MARKER
    if marker.is_file():
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
            stored_version, stored = data["version"], data["config"]
            summary = data["summary"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FileExistsError(
                f"{out} holds an unreadable synthetic-dataset marker {marker.name} ({e}); "
                "delete the folder to regenerate it"
            ) from e
        wanted = config.to_dict()
        if stored_version == SYNTH_VERSION and stored == wanted:
            logger.info("synthetic dataset already present in %s (same config), reusing it", out)
            return {**summary, "out_dir": str(out)}
        if stored_version != SYNTH_VERSION:
            why = f"generator version {stored_version} (current {SYNTH_VERSION})"
        else:
            diff = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
            why = ", ".join(f"{k}={a!r} there vs {b!r} requested" for k, (a, b) in diff.items())
        raise FileExistsError(
            f"{out} already holds a synthetic dataset generated with a different config ({why}); "
            "use another output folder or delete this one to regenerate"
        )
    if any(out.iterdir()):
        raise FileExistsError(
            f"{out} exists, is not empty and is not a tbps synthetic dataset (no {SYNTH_MARKER}); "
            "refusing to write into it - choose a new or empty folder"
        )
    return None


def _generate_into(root: Path, config: SynthConfig, progress: bool) -> dict[str, Any]:
    persons = sample_identities(config)
    splits = assign_splits(config)
    layout = config.layout
    split_names = dict(zip(("train", "val", "test"), _SPLIT_NAMES[layout]))
    pad = max(4, len(str(config.num_identities)))
    tasks = [
        (split, pid, k)
        for split in ("train", "val", "test")
        for pid in splits[split]
        for k in range(_images_per_identity(config, pid))
    ]
    from tqdm import tqdm

    records: list[dict[str, Any]] = []
    summary: dict[str, Any] = {
        s: {"ids": len(splits[s]), "images": 0, "captions": 0} for s in splits
    }
    oracle: dict[str, tuple[list, list[int]]] = {s: ([], []) for s in splits}
    img_root = root / "imgs"
    made_dirs: set[Path] = set()
    height, width = config.image_height, config.image_width
    with tqdm(
        total=len(tasks), desc="synthetic data", unit="img", disable=not progress, file=sys.stderr
    ) as bar:
        for split, pid, k in tasks:
            person = persons[pid - 1]
            rng = image_rng(config.seed, pid, k)
            shot = sample_shot(rng)
            img = render_image(person, shot, rng, height, width)
            name = split_names[split]
            rel = f"{name}/{pid:0{pad}d}/{pid:0{pad}d}_{k + 1:02d}.jpg"
            path = img_root / rel
            if path.parent not in made_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                made_dirs.add(path.parent)
            img.save(path, format="JPEG", quality=config.jpeg_quality)
            planned = planned_captions(
                person, shot, config.captions_per_image, config.seed, k, vietnamese=layout == "vn3k"
            )
            en, vi = [e for _, e, _ in planned], [v for _, _, v in planned]
            oracle[split][0].extend((pid, caption_facts(person, plan)) for plan, _, _ in planned)
            oracle[split][1].append(pid)
            if layout == "cuhk":
                rec = {
                    "split": name,
                    "id": pid,
                    "file_path": rel,
                    "captions": en,
                    "processed_tokens": [tokenize(c) for c in en],
                }
            else:
                rec = {
                    "split": name,
                    "id": pid,
                    "file_path": rel,
                    "captions": vi,
                    "en_captions": en,
                }
            records.append(rec)
            summary[split]["images"] += 1
            summary[split]["captions"] += len(en)
            bar.update(1)
    by_pid = {p.pid: p for p in persons}
    for split, (queries, gallery) in oracle.items():
        if gallery:  # the R1 ceiling of the captions (tbps.data.synthetic.oracle)
            summary[split]["caption_ceiling_r1"] = round(oracle_r1(queries, gallery, by_pid), 2)
    _write_json(root / _ANNOTATION_FILE[layout], records)
    _write_json(root / ATTRIBUTES_FILE, {str(p.pid): p.to_dict() for p in persons})
    return summary


def generate_synthetic_dataset(
    out_dir: str | os.PathLike,
    config: SynthConfig = SynthConfig(),  # noqa: B008 (frozen dataclass, safe to share)
    progress: bool = True,
) -> dict:
    """Write the synthetic dataset to ``out_dir``; returns a summary dict.

    The summary is ``{"train"|"val"|"test": {"ids", "images", "captions"}, "out_dir", "seconds"}``.
    The folder is built in a hidden sibling staging folder and moved into place with the marker
    file (``SYNTH_MARKER``) written last, so an interrupted run never leaves a marked folder.
    A folder with a marker for the same config is reused; anything else non-empty raises
    ``FileExistsError``.
    """
    if not isinstance(config, SynthConfig):
        raise TypeError(f"config must be a SynthConfig, got {type(config).__name__}")
    out = Path(out_dir).expanduser().absolute()
    existing = _existing_summary(out, config)
    if existing is not None:
        return existing
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:10]}"
    staging.mkdir()
    logger.info(
        "generating synthetic dataset (%d identities, layout %s, seed %d) in %s",
        config.num_identities,
        config.layout,
        config.seed,
        out,
    )
    try:
        summary = _generate_into(staging, config, progress)
        summary["out_dir"] = str(out)
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        marker = {
            "version": SYNTH_VERSION,
            "generator": __package__,
            "config": config.to_dict(),
            "summary": summary,
        }
        if _existing_summary(out, config) is not None:  # a concurrent run finished first
            shutil.rmtree(staging, ignore_errors=True)
            return _existing_summary(out, config)  # type: ignore[return-value]
        if out.exists():
            _move_contents(staging, out, marker)
        else:
            _write_json(staging / SYNTH_MARKER, marker)
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "synthetic dataset ready in %s: %s (%.1f s)",
        out,
        ", ".join(
            f"{s} {summary[s]['ids']} ids/{summary[s]['images']} images"
            for s in ("train", "val", "test")
        ),
        summary["seconds"],
    )
    return summary


def _move_contents(staging: Path, out: Path, marker: dict) -> None:
    """Fill an existing empty ``out`` from ``staging``; the marker goes in last."""
    for child in sorted(staging.iterdir()):
        os.replace(child, out / child.name)
    staging.rmdir()
    _write_json(out / SYNTH_MARKER, marker)
