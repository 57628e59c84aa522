"""The CUHK-10% + VN3K mixture: a seeded tenth of CUHK-PEDES training images plus all of VN3K."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from tbps.data.formats.cuhk_pedes import parse_cuhk_pedes
from tbps.data.formats.vn3k import parse_vn3k
from tbps.data.records import DatasetSplits, ImageRecord
from tbps.errors import ConfigError

log = logging.getLogger(__name__)


def _shift(images: list[ImageRecord], offset: int) -> list[ImageRecord]:
    return [
        ImageRecord(img.pid + offset, img.image_path, img.captions, img.source) for img in images
    ]


def parse_cuhk10_vn3k(
    root: str | os.PathLike,
    cuhk_root: str | None = None,
    vn3k_root: str | None = None,
    cuhk_fraction: float = 0.1,
    vn3k_language: str = "mixed",
    seed: int = 0,
    on_bad_caption: str = "error",
) -> DatasetSplits:
    """CUHK-PEDES train subset + VN3K, with VN3K ids shifted past the largest CUHK id.

    ``root`` holds ``CUHK-PEDES/`` and ``VN3K/`` (``cuhk_root`` / ``vn3k_root`` override either).
    Train = ``round(cuhk_fraction * n)`` CUHK training images drawn with ``seed`` + every VN3K
    training image (captions of ``vn3k_language``: vi, en or mixed). Person ids of the two
    sources never collide, and training labels are remapped to 0..N-1 contiguously later.
    Val / test are VN3K's; CUHK's are kept as ``cuhk_val`` / ``cuhk_test``.
    """
    if not 0.0 < cuhk_fraction <= 1.0:
        raise ConfigError(f"data.options.cuhk_fraction must be in (0, 1], got {cuhk_fraction}")
    root = Path(root).expanduser()
    cuhk = parse_cuhk_pedes(cuhk_root or root, on_bad_caption=on_bad_caption)
    vn3k = parse_vn3k(vn3k_root or root, vn3k_language, on_bad_caption=on_bad_caption)
    cuhk_train = cuhk.split("train")
    n_keep = max(1, round(cuhk_fraction * len(cuhk_train)))
    keep = np.sort(np.random.default_rng(seed).choice(len(cuhk_train), n_keep, replace=False))
    subset = [cuhk_train[i] for i in keep]
    offset = max((img.pid for images in cuhk.splits.values() for img in images), default=0)
    vn = {split: _shift(images, offset) for split, images in vn3k.splits.items()}
    note = (
        f"cuhk10_vn3k: {len(subset)} of {len(cuhk_train)} CUHK-PEDES training images "
        f"(cuhk_fraction={cuhk_fraction}, seed={seed}) + {len(vn['train'])} VN3K training images "
        f"({vn3k_language} captions); VN3K ids shifted by {offset}"
    )
    log.info(note)
    return DatasetSplits(
        name="cuhk10_vn3k",
        root=f"{cuhk.root}+{vn3k.root}",
        splits={
            "train": subset + vn["train"],
            "val": vn["val"],
            "test": vn["test"],
            "cuhk_val": cuhk.split("val"),
            "cuhk_test": cuhk.split("test"),
        },
        notes=[note],
        skipped=cuhk.skipped + vn3k.skipped,
    )
