"""Annotation-format parsers: each reads a dataset folder into :class:`DatasetSplits`."""

from __future__ import annotations

import os
from collections.abc import Callable

from tbps.data.formats.cuhk_pedes import parse_cuhk_pedes
from tbps.data.records import DatasetSplits
from tbps.errors import ConfigError

Parser = Callable[[str | os.PathLike], DatasetSplits]

FORMATS: dict[str, Parser] = {
    "cuhk_pedes": parse_cuhk_pedes,
}


def parse_dataset(format_name: str, root: str | os.PathLike) -> DatasetSplits:
    """Parse the dataset at ``root`` with the parser registered as ``format_name``."""
    if format_name not in FORMATS:
        raise ConfigError(
            f"unknown data.format {format_name!r}; valid: {', '.join(sorted(FORMATS))}"
        )
    return FORMATS[format_name](root)
