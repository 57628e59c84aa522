"""Resolve a dataset config (name, format, root) to parsed records; generate synthetic data."""

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
) -> DatasetSplits:
    """Parse the dataset at ``root``; with no root and ``synth`` settings, use generated data."""
    if root is None:
        if synth is None:
            from tbps.errors import ConfigError

            raise ConfigError(
                f"data.root is not set for dataset {name!r}: point it at the dataset folder"
            )
        root = ensure_synthetic(default_cache_dir(cache_dir), synth, progress=progress)
    dataset = parse_dataset(format_name, root)
    dataset.name = name
    return dataset
