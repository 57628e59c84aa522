"""Identity-level split rules: carving a val split from training identities, and subset folds."""

from __future__ import annotations

import logging
import math

import numpy as np

from tbps.data.records import DatasetSplits, ImageRecord
from tbps.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Distinct random streams for the two rules, so changing one never reshuffles the other.
_SALT_VAL, _SALT_FOLD = 1, 2


def _identities(images: list[ImageRecord]) -> list[int]:
    return sorted({img.pid for img in images})


def carve_val_split(
    dataset: DatasetSplits, fraction: float, seed: int = 0, val_name: str = "val"
) -> DatasetSplits:
    """Move ``round(fraction * ids)`` seeded training identities (all their images) to ``val_name``.

    For datasets published without a val split (ICFG-PEDES): model selection must never read
    the test split. The carve is recorded in ``dataset.notes`` and logged.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {fraction}")
    train = dataset.split("train")
    pids = _identities(train)
    n_val = max(1, round(fraction * len(pids)))
    if n_val >= len(pids):
        raise DataError(
            f"{dataset.name}: data.val_fraction={fraction} would leave no training identity "
            f"({len(pids)} in train)"
        )
    order = np.random.default_rng([seed, _SALT_VAL]).permutation(len(pids))
    val_ids = {pids[i] for i in order[:n_val]}
    dataset.splits[val_name] = [img for img in train if img.pid in val_ids]
    dataset.splits["train"] = [img for img in train if img.pid not in val_ids]
    note = (
        f"{dataset.name} has no {val_name!r} split: carved {n_val} of {len(pids)} training "
        f"identities ({len(dataset.splits[val_name])} images; data.val_fraction={fraction}, "
        f"data.split_seed={seed}) as {val_name!r}; they are not trained on"
    )
    dataset.notes.append(note)
    log.info(note)
    return dataset


def identity_folds(pids: list[int], num_folds: int, seed: int = 0) -> list[list[int]]:
    """Split the sorted identities into ``num_folds`` disjoint, near-equal, seeded folds."""
    pids = sorted(set(pids))
    order = np.random.default_rng([seed, _SALT_FOLD]).permutation(len(pids))
    return [sorted(pids[i] for i in part) for part in np.array_split(order, num_folds)]


def num_folds(proportion: float) -> int:
    """1/p for a proportion p that divides the identities into whole folds (1, 1/2, 1/4, 0.1...)."""
    if not 0.0 < proportion <= 1.0:
        raise ConfigError(f"data.proportion must be in (0, 1], got {proportion}")
    folds = round(1.0 / proportion)
    if not math.isclose(folds * proportion, 1.0, rel_tol=1e-6):
        raise ConfigError(
            f"data.proportion={proportion} does not split the identities into whole folds; "
            f"use 1/k (1, 0.5, 0.25, 0.2, 0.1, ...)"
        )
    return folds


def select_fold(
    dataset: DatasetSplits, proportion: float, fold_id: int = 0, seed: int = 0
) -> DatasetSplits:
    """Keep fold ``fold_id`` of the 1/``proportion`` disjoint identity folds of the train split.

    A person never spans folds: all their images go with them. Other splits are untouched.
    """
    folds_n = num_folds(proportion)
    if folds_n == 1:
        return dataset
    if not 0 <= fold_id < folds_n:
        raise ConfigError(
            f"data.fold_id={fold_id} is out of range: data.proportion={proportion} gives "
            f"{folds_n} folds (0..{folds_n - 1})"
        )
    train = dataset.split("train")
    folds = identity_folds(_identities(train), folds_n, seed)
    keep = set(folds[fold_id])
    if not keep:
        raise DataError(
            f"{dataset.name}: fold {fold_id} of {folds_n} has no identity "
            f"({len(_identities(train))} training identities)"
        )
    dataset.splits["train"] = [img for img in train if img.pid in keep]
    note = (
        f"{dataset.name}: training fold {fold_id} of {folds_n} (data.proportion={proportion}, "
        f"data.split_seed={seed}): {len(keep)} identities, {len(dataset.splits['train'])} images"
    )
    dataset.notes.append(note)
    log.info(note)
    return dataset


def apply_split_rules(
    dataset: DatasetSplits,
    val_split: str = "val",
    val_fraction: float = 0.0,
    proportion: float = 1.0,
    fold_id: int = 0,
    seed: int = 0,
) -> DatasetSplits:
    """Carve ``val_split`` from training identities when the dataset lacks it, then pick the fold.

    A missing val split with ``val_fraction`` 0 is an error that says how to fix it.
    """
    if "train" not in dataset.splits:
        raise DataError(f"{dataset.name}: no train split ({dataset.root})")
    if val_split not in dataset.splits:
        if not val_fraction:
            raise DataError(
                f"{dataset.name} has no {val_split!r} split (has {', '.join(dataset.splits)}); "
                f"set data.val_fraction (e.g. 0.05) to carve one from held-out training "
                f"identities, or data.val_split to one of its splits (never the test split)"
            )
        carve_val_split(dataset, val_fraction, seed, val_split)
    return select_fold(dataset, proportion, fold_id, seed)
