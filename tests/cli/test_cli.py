"""The `tbps` command line through a subprocess: a debug training run and clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tbps.cli import main


def tbps(*args: str, cwd: Path, cache: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "TBPS_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tbps", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_train_debug_preset_then_eval(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    result = tbps(
        "train",
        "debug=tiny",
        f"run_dir={run_dir}",
        "trainer.max_epochs=1",
        cwd=tmp_path,
        cache=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test (best)" in result.stdout and "chance" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"best", "last"}
    assert {"R1", "R5", "R10", "mAP", "mINP"} <= set(metrics["test"]["best"]["t2i"])
    for name in (
        "config.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "logs/metrics.csv",
        "tokenizer/tokenizer.json",
        "train.log",
    ):
        assert (run_dir / name).is_file(), name
    # eval the checkpoint on the test split of the same (cached) data: same numbers
    monkeypatch.setenv("TBPS_CACHE", str(tmp_path / "cache"))
    code = main(
        [
            "eval",
            f"ckpt_path={run_dir}/checkpoints/best.ckpt",
            "data.synth.num_identities=30",
            "data.synth.images_per_identity=[2,3]",
            f"out={tmp_path}/eval.json",
        ]
    )
    assert code == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["t2i"]["R1"] == pytest.approx(metrics["test"]["best"]["t2i"]["R1"], abs=1e-6)


def test_errors_are_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TBPS_CACHE", str(tmp_path / "cache"))
    assert main(["train", "data.root=/no/such/dir"]) == 2
    err = capsys.readouterr().err
    assert "dataset folder /no/such/dir does not exist" in err
    assert "tbps data synth out=/no/such/dir" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no half-made run folder
    assert main(["train", "backbone=nope"]) == 2
    assert (
        "unknown option 'nope' for config group 'backbone'; valid: clip_b16, clip_l14, clip_tiny, "
        "msiglip_b16_256, scratch_small, scratch_tiny, siglip_b16, siglip_so400m, siglip_tiny"
        in capsys.readouterr().err
    )
    assert main(["train", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert (
        "unknown config key 'optim.lrr'" in err
        and " lr," in err.split("valid keys under 'optim':")[1]
    )
    assert main(["eval"]) == 2
    assert "give exactly one of model=DIR" in capsys.readouterr().err
    assert main(["train", "--cfg", "job", "trainer.max_epochs=3"]) == 0
    assert "max_epochs: 3" in capsys.readouterr().out
    assert main(["trian"]) == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_stops_training_naming_the_file(tmp_path, monkeypatch, capsys, workers):
    from fixtures import write_cuhk_fixture

    records = write_cuhk_fixture(tmp_path / "data", {"train": 8, "val": 2, "test": 2})
    bad = tmp_path / "data" / "imgs" / records[3]["file_path"]
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    monkeypatch.chdir(tmp_path)
    args = [
        "train",
        "data=cuhk_pedes",
        f"data.root={tmp_path / 'data'}",
        "backbone=scratch_tiny",
        "loader.batch_size=8",
        "trainer.max_epochs=1",
        f"loader.num_workers={workers}",
        "trainer.enable_progress_bar=false",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tbps train: error: cannot read image") and str(bad) in err
