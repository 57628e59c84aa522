"""Helpers shared by the generator modules: random-stream salts, the RGB type, seeded choice."""

from __future__ import annotations

from typing import Any

import numpy as np

# Salts keep the random streams (identities, images, captions, splits) independent.
_SALT_SPLIT, _SALT_IDENTITY, _SALT_COUNT, _SALT_IMAGE, _SALT_CAPTION = 11, 23, 37, 41, 53
_SALT_EN, _SALT_VI = 67, 71


RGB = tuple[int, int, int]


def _choice(rng: np.random.Generator, options: tuple | list, p: tuple | list | None = None) -> Any:
    if p is None:
        return options[int(rng.integers(len(options)))]
    p_arr = np.asarray(p, dtype=float)
    return options[int(rng.choice(len(options), p=p_arr / p_arr.sum()))]
