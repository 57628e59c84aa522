"""Tiny in-process runs with the objective presets on synthetic data (views, heads, boosting)."""

import csv
import math

import pytest

from tbps.app.train import run_training
from tbps.cli import compose_config

FEW_STEPS = [
    "debug=tiny",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
]


def _train(tmp_path, name, overrides):
    cfg = compose_config(
        "train",
        [
            *FEW_STEPS,
            f"run_dir={tmp_path / name}",
            f"cache_dir={tmp_path / 'cache'}",
            *overrides,
        ],
    )
    metrics = run_training(cfg)
    with open(tmp_path / name / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    return metrics, rows, logged


def test_every_view_head_and_boosting_in_one_run(tmp_path):
    """IRRA + TBPS-CLIP + RDE objectives together, boosting after epoch 1."""
    metrics, rows, logged = _train(
        tmp_path,
        "all",
        [
            "objectives=tbps_clip",
            "+objectives.sdm={weight: 0.5}",
            "+objectives.id={weight: 0.5}",
            "+objectives.mlm={weight: 0.5, layers: 1}",
            "+objectives.tal={weight: 0.5, tse: true, tse_dim: 32}",
            "boosting.enabled=true",
            "boosting.every_n_epochs=1",
        ],
    )
    assert metrics["steps"] == 4
    for term in ("nitc", "ritc", "citc", "ss", "sdm", "id", "mlm", "tal", "tal_tse"):
        assert f"train/{term}" in logged, term
    for extra in ("train/nitc_alpha", "train/id_acc_image", "train/id_acc_text", "train/mlm_acc"):
        assert extra in logged
    assert "train/boosted_fraction" in logged
    # the soft-label ratio ramps over the first epoch's 2 optimizer steps, then stays at 0.5
    alphas = [float(r["train/nitc_alpha"]) for r in rows if r.get("train/nitc_alpha")]
    assert alphas == pytest.approx([0.0, 0.25, 0.5, 0.5])
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert metrics["test"]["last"]["t2i"]["num_queries"] > 0


@pytest.mark.parametrize("name", ["irra", "tbps_clip", "rde"])
def test_clip_presets(tmp_path, name):
    metrics, _, logged = _train(tmp_path, name, [f"objectives={name}"])
    assert metrics["steps"] == 4 and "train/loss" in logged


def test_seed_best_on_a_tiny_siglip(tmp_path):
    from tiny_backbones import write_tiny_siglip

    folder = write_tiny_siglip(tmp_path / "siglip", image_size=32)
    metrics, _, logged = _train(
        tmp_path,
        "seed_best",
        ["objectives=seed_best", "backbone=siglip_tiny", f"backbone.path={folder}"],
    )
    assert metrics["steps"] == 4
    assert {"train/sigmoid_nitc", "train/ss", "train/citc", "train/logit_bias"} <= logged
