"""Which extra training views (MVS, SimCLR, MLM masking) the enabled objectives need."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: objective name -> the view it consumes (``aug_images``, ``ss_images1/2``, ``mlm_*`` keys)
OBJECTIVE_VIEWS: dict[str, str] = {
    "mlm": "mlm",
    "ss": "ss",
    "simclr": "ss",
    "mvs": "mvs",
}


@dataclass(frozen=True)
class DataViews:
    """Extra views a training batch carries: ``mvs`` -> ``aug_images``; ``ss`` -> ``ss_images1``
    and ``ss_images2``; ``mlm`` -> ``mlm_input_ids`` and ``mlm_labels``."""

    mvs: bool = False
    ss: bool = False
    mlm: bool = False

    def __or__(self, other: DataViews) -> DataViews:
        return DataViews(self.mvs or other.mvs, self.ss or other.ss, self.mlm or other.mlm)

    def names(self) -> list[str]:
        return [name for name in ("mvs", "ss", "mlm") if getattr(self, name)]


def _enabled(entry: Any) -> bool:
    return not isinstance(entry, Mapping) or bool(entry.get("enabled", True))


def required_views(objectives: Mapping[str, Any] | Iterable[str]) -> DataViews:
    """The views that enabled objectives need.

    ``objectives`` is either names of enabled objectives or the ``objectives`` config section
    (``{name: {enabled, weight, ...}}``). An objective named ``mlm`` needs MLM masking,
    ``ss``/``simclr`` the two SimCLR views, ``mvs`` the second augmented view; so does any
    enabled objective whose entry sets ``mvs: true`` (e.g. N-ITC with multi-view supervision).
    """
    if isinstance(objectives, Mapping):
        entries = {name: entry for name, entry in objectives.items() if _enabled(entry)}
    else:
        entries = {name: {} for name in objectives}
    flags = {"mvs": False, "ss": False, "mlm": False}
    for name, entry in entries.items():
        view = OBJECTIVE_VIEWS.get(name)
        if view:
            flags[view] = True
        if isinstance(entry, Mapping) and entry.get("mvs"):
            flags["mvs"] = True
    return DataViews(**flags)
