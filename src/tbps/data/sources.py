"""Resolve a dataset (name, format, root, split rules) to parsed records; generate synthetic data."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tbps.data.formats import parse_dataset
from tbps.data.records import DatasetSplits
from tbps.data.splits import apply_split_rules
from tbps.errors import ConfigError

log = logging.getLogger(__name__)


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$TBPS_CACHE``, else ``~/.cache/tbps``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("TBPS_CACHE", Path.home() / ".cache" / "tbps")).expanduser()


def synthetic_cache_path(cache_dir: Path, synth: Mapping[str, Any]) -> Path:
    """Cache folder of one synthetic-dataset configuration (keyed by a hash of its settings)."""
    key = hashlib.sha1(json.dumps(dict(synth), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / "synthetic" / key


def ensure_synthetic(cache_dir: Path, synth: Mapping[str, Any], progress: bool = True) -> Path:
    """Generate the synthetic dataset for ``synth`` settings into the cache unless already there."""
    from tbps.data.synthetic import SynthConfig, generate_synthetic_dataset

    settings = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in synth.items()}
    out = synthetic_cache_path(cache_dir, settings)
    config = SynthConfig(**settings)
    log.info("synthetic dataset: %s", out)
    generate_synthetic_dataset(out, config, progress=progress)
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
) -> DatasetSplits:
    """Parse the dataset at ``root`` and apply the split rules (carved val split, subset fold).

    With no ``root`` and ``synth`` settings, the synthetic dataset is generated into the cache
    (``synth["layout"]`` ``vn3k`` writes the VN3K layout) and parsed with ``format_name``.
    """
    if root is None:
        if synth is None:
            raise ConfigError(
                f"data.root is not set for dataset {name!r}: point it at the dataset folder"
            )
        root = ensure_synthetic(default_cache_dir(cache_dir), synth, progress=progress)
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
) -> DatasetSplits:
    """:func:`load_dataset` from a ``data`` config section given as a plain dict.

    Keys that only the data module reads (``on_bad_image``, ``test_split``) are ignored here.
    """
    kwargs = {arg: section[key] for key, arg in _SECTION_KEYS.items() if key in section}
    return load_dataset(**kwargs, cache_dir=cache_dir, progress=progress)
