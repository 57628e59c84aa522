"""`tbps clean`: dry run by default, finished runs lose last.ckpt, low scorers lose all,
unfinished (resumable) runs are left alone unless asked."""

import json

from tbps.cli import main


def _run(root, name, finished, score, files=("best.ckpt", "last.ckpt")):
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    for f in files:
        (run / "checkpoints" / f).write_bytes(b"x" * 2**20)
    if finished:
        metrics = {"best_val": {"val/t2i/R1": score, "checkpoint": str(run / "best.ckpt")}}
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def _left(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_dry_run_lists_and_deletes_nothing(tmp_path, capsys):
    good = _run(tmp_path, "exp/good", True, 60.0)
    bad = _run(tmp_path, "exp/bad", True, 10.0)
    going = _run(tmp_path, "exp/going", False, None)
    assert main(["clean", f"runs_dir={tmp_path}", "min_score=50"]) == 0
    out = capsys.readouterr().out
    assert "dry run: 3.0 MiB would be freed" in out
    assert "finished: last.ckpt (best.ckpt kept)" in out
    assert "10.00 < min_score 50: all checkpoints" in out
    assert "unfinished (resumable): kept" in out
    assert _left(good) == _left(bad) == _left(going) == ["best.ckpt", "last.ckpt"]


def test_delete_frees_what_the_rules_select(tmp_path, capsys):
    good = _run(tmp_path, "a/good", True, 60.0)
    bad = _run(tmp_path, "a/bad", True, 10.0)
    going = _run(tmp_path, "a/going", False, None)
    no_best = _run(tmp_path, "a/no_best", True, None, files=("last.ckpt",))
    assert main(["clean", f"runs_dir={tmp_path}", "min_score=50", "dry_run=false"]) == 0
    assert "freed 3.0 MiB" in capsys.readouterr().out
    assert _left(good) == ["best.ckpt"] and _left(bad) == []
    assert _left(going) == ["best.ckpt", "last.ckpt"] and _left(no_best) == ["last.ckpt"]
    assert (good / "metrics.json").is_file()  # only checkpoints are touched


def test_unfinished_runs_only_when_asked(tmp_path, capsys):
    going = _run(tmp_path, "going", False, None)
    assert main(["clean", f"runs_dir={tmp_path}", "dry_run=false", "include_unfinished=true"]) == 0
    assert _left(going) == ["best.ckpt", "last.ckpt"]  # no score known, not finished: kept
    assert main(["clean", f"runs_dir={tmp_path / 'none'}"]) == 2
    assert "runs_dir=" in capsys.readouterr().err


def test_unfinished_run_score_is_read_from_its_checkpoint(tmp_path, capsys):
    import shutil
    from pathlib import Path

    fixture = (
        Path(__file__).parents[1] / "data" / "ckpt_v0_1_rde" / "checkpoints" / "best.ckpt"
    )  # val R1 27.27
    run = tmp_path / "going"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(fixture, run / "checkpoints" / "last.ckpt")
    args = ["clean", f"runs_dir={tmp_path}", "include_unfinished=true", "dry_run=false"]
    assert main([*args, "min_score=20"]) == 0
    assert "27.27" in capsys.readouterr().out and _left(run) == ["last.ckpt"]
    assert main([*args, "min_score=30"]) == 0
    assert "27.27 < min_score 30" in capsys.readouterr().out and _left(run) == []
