"""Split rules: identity-level folds (proportion + fold_id) and the carved val split."""

import pytest

from tbps.data.records import DatasetSplits, ImageRecord
from tbps.data.splits import apply_split_rules, identity_folds, num_folds, select_fold
from tbps.errors import ConfigError, DataError


def _dataset(n_ids: int = 40, images: int = 3, splits=("train", "val", "test")) -> DatasetSplits:
    def imgs(split, offset):
        return [
            ImageRecord(pid, f"/{split}/{pid}/{k}.jpg", (f"caption {pid} {k}",))
            for pid in range(offset + 1, offset + n_ids + 1, 1)
            for k in range(images)
        ]

    return DatasetSplits("toy", "/", {s: imgs(s, 1000 * i) for i, s in enumerate(splits)})


def test_folds_are_disjoint_cover_all_ids_and_are_seeded():
    pids = [3, 9, 10, 11, 40, 41, 77, 78, 79, 100]  # gaps
    folds = identity_folds(pids, 4, seed=0)
    assert len(folds) == 4 and sorted(sum(folds, [])) == pids
    assert [len(f) for f in folds] == [3, 3, 2, 2]
    assert identity_folds(pids, 4, seed=0) == folds
    assert identity_folds(pids, 4, seed=1) != folds


def test_select_fold_keeps_whole_persons_and_other_splits():
    seen = set()
    for fold in range(4):
        ds = select_fold(_dataset(), 0.25, fold, seed=5)
        ids = {img.pid for img in ds.split("train")}
        assert len(ids) == 10 and not ids & seen
        seen |= ids
        assert len(ds.split("train")) == 30  # all 3 images of every kept person
        assert len(ds.split("test")) == 120 and ds.notes
    assert len(seen) == 40
    assert select_fold(_dataset(), 1.0, 0).split("train") == _dataset().split("train")


@pytest.mark.parametrize(
    "proportion, fold, message",
    [
        (0.3, 0, r"proportion=0.3 does not split the identities into whole folds"),
        (0.5, 2, r"fold_id=2 is out of range: data.proportion=0.5 gives 2 folds \(0..1\)"),
        (0.0, 0, r"proportion must be in \(0, 1\]"),
    ],
)
def test_bad_fold_settings(proportion, fold, message):
    with pytest.raises(ConfigError, match=message):
        select_fold(_dataset(), proportion, fold)


def test_num_folds_accepts_float_reciprocals():
    assert [num_folds(p) for p in (1.0, 0.5, 0.2, 0.1, 1 / 3)] == [1, 2, 5, 10, 3]


def test_apply_split_rules_carves_then_folds():
    ds = apply_split_rules(
        _dataset(splits=("train", "test")), "val", val_fraction=0.25, proportion=0.5, fold_id=1
    )
    val_ids = {img.pid for img in ds.split("val")}
    train_ids = {img.pid for img in ds.split("train")}
    assert len(val_ids) == 10 and len(train_ids) == 15 and not val_ids & train_ids
    assert len(ds.notes) == 2
    with pytest.raises(DataError, match="would leave no training identity"):
        apply_split_rules(_dataset(n_ids=1, splits=("train", "test")), "val", val_fraction=0.5)
    # an existing val split is used as it is, val_fraction is ignored
    ds = apply_split_rules(_dataset(), "val", val_fraction=0.25)
    assert len({img.pid for img in ds.split("train")}) == 40 and not ds.notes
