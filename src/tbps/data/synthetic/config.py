"""``SynthConfig``: the parameters of the synthetic dataset, validated on construction."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LAYOUTS = ("cuhk", "vn3k")


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic dataset; every field is validated on construction."""

    num_identities: int = 1000
    images_per_identity: tuple[int, int] = (3, 5)
    captions_per_image: int = 2
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    image_height: int = 384
    image_width: int = 128
    seed: int = 0
    layout: str = "cuhk"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        # Accept lists (from YAML / CLI) for the tuple fields; the dataclass stays hashable.
        for name in ("images_per_identity", "split_fractions"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def integer(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"SynthConfig.{name} must be an int, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise ValueError(f"SynthConfig.{name} must be {bound}, got {value}")

        integer("num_identities", 3)
        integer("captions_per_image", 1, 20)
        integer("image_height", 32, 4096)
        integer("image_width", 16, 4096)
        integer("seed", 0)
        integer("jpeg_quality", 1, 100)
        ipi = self.images_per_identity
        if (
            not isinstance(ipi, tuple)
            or len(ipi) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ipi)
        ):
            raise ValueError(
                f"SynthConfig.images_per_identity must be a pair of ints (min, max), got {ipi!r}"
            )
        if not 1 <= ipi[0] <= ipi[1] <= 100:
            raise ValueError(
                f"SynthConfig.images_per_identity must satisfy 1 <= min <= max <= 100, got {ipi!r}"
            )
        fr = self.split_fractions
        if (
            not isinstance(fr, tuple)
            or len(fr) != 3
            or not all(
                isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) for v in fr
            )
        ):
            raise ValueError(
                f"SynthConfig.split_fractions must be three numbers (train, val, test), got {fr!r}"
            )
        if any(not math.isfinite(v) or v <= 0 for v in fr):
            raise ValueError(f"SynthConfig.split_fractions must all be > 0, got {fr!r}")
        if abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(
                f"SynthConfig.split_fractions must sum to 1, got {fr!r} (sum {sum(fr)})"
            )
        counts = _split_counts(self.num_identities, fr)
        for name, count in zip(("train", "val", "test"), counts):
            if count < 1:
                raise ValueError(
                    f"SynthConfig.split_fractions {fr!r} leave the {name} split with no identity "
                    f"for num_identities={self.num_identities}"
                )
        if self.layout not in LAYOUTS:
            raise ValueError(f"SynthConfig.layout must be one of {LAYOUTS}, got {self.layout!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict of the fields (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthConfig:
        """Build a config from a dict, ignoring unknown keys such as ``version``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _split_counts(n: int, fractions: tuple[float, ...]) -> tuple[int, int, int]:
    n_val = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    return n - n_val - n_test, n_val, n_test
