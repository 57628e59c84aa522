"""Hard-sample boosting end to end: a real tiny `tbps train` with boosting on saves one weight
per training caption (1 or `boosting.weight`) in its checkpoints, logs the boosted share as
`train/boosted_fraction`, and changes the epochs after a boost, and nothing before it."""

import csv
import json
from pathlib import Path

import pytest
import torch

from tbps.cli import main

EPOCHS = 3  # boosting after epochs 0 and 1 (0-based), never after the last one
WEIGHT = 2.5  # not the default 1.6: the configured weight is the one used


def _train(root: Path, name: str, *extra: str) -> Path:
    run = root / name
    code = main(
        [
            "train",
            "debug=tiny",
            f"run_dir={run}",
            f"cache_dir={root / 'cache'}",
            f"trainer.max_epochs={EPOCHS}",
            "trainer.enable_progress_bar=false",
            "report.failures=0",
            "seed=7",
            *extra,
        ]
    )
    assert code == 0
    return run


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _losses(run: Path) -> dict[int, tuple[int, str]]:
    """step -> (epoch, train/loss as logged) of every logged training step."""
    return {
        int(r["step"]): (int(r["epoch"]), r["train/loss"])
        for r in _rows(run)
        if r.get("train/loss")
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("boosting")
    boost = ["boosting.enabled=true", "boosting.every_n_epochs=1"]
    return {
        "plain": _train(root, "plain"),
        "boosted": _train(root, "boosted", *boost, f"boosting.weight={WEIGHT}"),
        # weight 1 boosts nothing: the boosting pass itself (encoding the training split in
        # eval mode, its loaders) must leave the training exactly as without boosting
        "weight1": _train(root, "weight1", *boost, "boosting.weight=1.0"),
    }


def _train_captions(run: Path) -> int:
    """Captions of the training split, counted in the generated annotation file itself."""
    (annotations,) = (run.parent / "cache").glob("synthetic/*/reid_raw.json")
    records = json.loads(annotations.read_text())
    return sum(len(r["captions"]) for r in records if r["split"] == "train")


def test_saved_weights_one_per_training_caption_and_the_logged_fraction(runs):
    run = runs["boosted"]
    fractions = {
        int(r["epoch"]): float(r["train/boosted_fraction"])
        for r in _rows(run)
        if r.get("train/boosted_fraction")
    }
    assert sorted(fractions) == list(range(EPOCHS - 1))  # every epoch but the last
    n = _train_captions(run)
    checked = 0
    for name in ("last", "best"):
        ckpt = torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=True)
        weights = ckpt["tbps_sample_weights"]
        assert weights.shape == (n,) and weights.dtype == torch.float32
        assert set(weights.unique().tolist()) <= {1.0, WEIGHT}
        hard = int((weights == WEIGHT).sum())
        # the last boost the checkpoint has seen: the one after its epoch, or the epoch before
        # for last.ckpt (no boost after the last epoch)
        boost_epoch = min(ckpt["epoch"], EPOCHS - 2)
        assert fractions[boost_epoch] == pytest.approx(hard / n, abs=1e-6), (name, hard, n)
        checked += 1
    assert checked == 2
    # a meaningful mix: some captions boosted, some not (else "1 or weight" says little)
    assert 0 < fractions[EPOCHS - 2] < 1
    assert "train/boosted_fraction" not in _rows(runs["plain"])[0]  # no column without boosting


def test_boosting_changes_the_epochs_after_it_and_nothing_before(runs):
    plain, boosted, weight1 = (_losses(runs[k]) for k in ("plain", "boosted", "weight1"))
    assert plain.keys() == boosted.keys() == weight1.keys()
    assert {epoch for epoch, _ in plain.values()} == set(range(EPOCHS))
    for step, (epoch, loss) in plain.items():
        if epoch == 0:  # before the first boost: the same run
            assert boosted[step] == (epoch, loss), step
        else:  # weighted objectives from the first step after the boost on
            assert boosted[step][1] != loss, step
        assert weight1[step] == (epoch, loss), step  # weights of 1: no effect at all
    # the same model at the first step after the boost: the weights alone change its loss
    first = min(s for s, (e, _) in plain.items() if e == 1)
    assert float(boosted[first][1]) != pytest.approx(float(plain[first][1]), rel=1e-3)
