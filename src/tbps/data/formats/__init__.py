"""Annotation-format parsers: each reads a dataset folder into :class:`DatasetSplits`."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from tbps.data.formats.cuhk_pedes import parse_cuhk_pedes
from tbps.data.formats.generic import parse_generic
from tbps.data.formats.icfg_pedes import parse_icfg_pedes
from tbps.data.formats.mixture import parse_cuhk10_vn3k
from tbps.data.formats.rstpreid import parse_rstpreid
from tbps.data.formats.vn3k import parse_vn3k_en, parse_vn3k_mixed, parse_vn3k_vi
from tbps.data.records import DatasetSplits
from tbps.errors import ConfigError

Parser = Callable[..., DatasetSplits]

#: data.format -> parser ``(root, *, on_bad_caption, **options) -> DatasetSplits``
FORMATS: dict[str, Parser] = {
    "cuhk_pedes": parse_cuhk_pedes,
    "icfg_pedes": parse_icfg_pedes,
    "rstpreid": parse_rstpreid,
    "vn3k_en": parse_vn3k_en,
    "vn3k_vi": parse_vn3k_vi,
    "vn3k_mixed": parse_vn3k_mixed,
    "cuhk10_vn3k": parse_cuhk10_vn3k,
    "generic": parse_generic,
}


def format_options(format_name: str) -> list[str]:
    """The ``data.options`` keys a format accepts (its parser's keyword arguments)."""
    params = inspect.signature(FORMATS[format_name]).parameters
    return [name for name in list(params)[1:] if name != "on_bad_caption"]


def parse_dataset(
    format_name: str,
    root: str | os.PathLike,
    on_bad_caption: str = "error",
    **options: Any,
) -> DatasetSplits:
    """Parse the dataset at ``root`` with the parser registered as ``format_name``.

    ``options`` are format-specific (``data.options``); unknown ones are rejected.
    """
    if format_name not in FORMATS:
        raise ConfigError(
            f"unknown data.format {format_name!r}; valid: {', '.join(sorted(FORMATS))}"
        )
    valid = format_options(format_name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"data.options: unknown key(s) {unknown} for format {format_name!r}; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    return FORMATS[format_name](root, on_bad_caption=on_bad_caption, **options)
