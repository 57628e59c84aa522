"""Resolve a dataset (name, format, root, split rules) to parsed records; generate synthetic data."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tbps.data.formats import parse_dataset
from tbps.data.records import DatasetSplits
from tbps.data.splits import apply_split_rules
from tbps.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: how long a non-zero rank waits for rank 0 to generate the synthetic data (as torch's
#: default process-group timeout)
SYNTH_WAIT_SECONDS = 1800.0


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$TBPS_CACHE``, else ``~/.cache/tbps``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("TBPS_CACHE", Path.home() / ".cache" / "tbps")).expanduser()


def synthetic_cache_path(cache_dir: Path, synth: Mapping[str, Any]) -> Path:
    """Cache folder of one synthetic-dataset configuration (keyed by a hash of its settings)."""
    key = hashlib.sha1(json.dumps(dict(synth), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / "synthetic" / key


def wait_for_synthetic(out: Path, timeout: float = SYNTH_WAIT_SECONDS, poll: float = 0.5) -> None:
    """Block until another process has finished the synthetic dataset in ``out`` (its marker
    file, written last, exists); a DataError after ``timeout`` seconds."""
    from tbps.data.synthetic import SYNTH_MARKER

    marker = out / SYNTH_MARKER
    if marker.is_file():
        return
    log.info("waiting for rank 0 to generate the synthetic dataset in %s", out)
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise DataError(
                f"waited {timeout:.0f} s for rank 0 to generate the synthetic dataset in {out} "
                f"(no {SYNTH_MARKER} yet): did rank 0 fail, or is the cache not on a file "
                "system all nodes share? Generate it beforehand with `tbps data synth out=DIR "
                "...` and train with data.root=DIR"
            )
        time.sleep(poll)


def ensure_synthetic(
    cache_dir: Path,
    synth: Mapping[str, Any],
    progress: bool = True,
    generate: bool = True,
    wait_timeout: float = SYNTH_WAIT_SECONDS,
) -> Path:
    """Generate the synthetic dataset for ``synth`` settings into the cache unless already there.

    ``generate=False`` (ranks other than 0 of a multi-process launch) waits up to
    ``wait_timeout`` seconds for rank 0 to write it instead of generating it concurrently.
    """
    from tbps.data.synthetic import SynthConfig, generate_synthetic_dataset

    settings = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in synth.items()}
    out = synthetic_cache_path(cache_dir, settings)
    config = SynthConfig(**settings)
    log.info("synthetic dataset: %s", out)
    if not generate:
        wait_for_synthetic(out, wait_timeout)
    generate_synthetic_dataset(out, config, progress=progress and generate)
    return out


def load_dataset(
    name: str,
    format_name: str,
    root: str | os.PathLike | None,
    synth: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    on_bad_caption: str = "error",
    options: Mapping[str, Any] | None = None,
    val_split: str = "val",
    val_fraction: float = 0.0,
    proportion: float = 1.0,
    fold_id: int = 0,
    split_seed: int = 0,
    generate: bool = True,
) -> DatasetSplits:
    """Parse the dataset at ``root`` and apply the split rules (carved val split, subset fold).

    With no ``root`` and ``synth`` settings, the synthetic dataset is generated into the cache
    (``synth["layout"]`` ``vn3k`` writes the VN3K layout) and parsed with ``format_name``;
    ``generate=False`` waits for another process (rank 0) to generate it.
    """
    if root is None:
        if synth is None:
            raise ConfigError(
                f"data.root is not set for dataset {name!r}: point it at the dataset folder"
            )
        root = ensure_synthetic(
            default_cache_dir(cache_dir), synth, progress=progress, generate=generate
        )
    dataset = parse_dataset(format_name, root, on_bad_caption=on_bad_caption, **dict(options or {}))
    dataset.name = name
    return apply_split_rules(dataset, val_split, val_fraction, proportion, fold_id, split_seed)


#: keys of a ``data`` config section (configs/data/*.yaml) and their load_dataset argument
_SECTION_KEYS = {
    "name": "name",
    "format": "format_name",
    "root": "root",
    "synth": "synth",
    "on_bad_caption": "on_bad_caption",
    "options": "options",
    "val_split": "val_split",
    "val_fraction": "val_fraction",
    "proportion": "proportion",
    "fold_id": "fold_id",
    "split_seed": "split_seed",
}


def load_dataset_section(
    section: Mapping[str, Any],
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    generate: bool = True,
) -> DatasetSplits:
    """:func:`load_dataset` from a ``data`` config section given as a plain dict.

    Keys that only the data module reads (``on_bad_image``, ``test_split``) are ignored here.
    """
    kwargs = {arg: section[key] for key, arg in _SECTION_KEYS.items() if key in section}
    return load_dataset(**kwargs, cache_dir=cache_dir, progress=progress, generate=generate)
