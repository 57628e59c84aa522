"""`tbps report`: run folders written in the format tbps train writes, read back as tables,
groups with mean ± std, CSV/JSON, plots; unfinished runs never averaged; bad input refused."""

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tbps.app.report import collect_runs, format_report, group_runs
from tbps.cli import main

METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def write_run(
    folder: Path,
    overrides: list[str],
    r1: float | None,
    epochs: int = 3,
    failed: str | None = None,
) -> Path:
    """A run folder as tbps train leaves it (r1=None: it has not finished)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("seed: 0\n")
    (folder / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    logs = folder / "logs"
    logs.mkdir()
    with open(logs / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "train/loss", "val/t2i/R1"])
        for epoch in range(epochs):
            for step in range(epoch * 4, epoch * 4 + 4):
                writer.writerow([epoch, step, 5.0 - 0.1 * step, ""])
            writer.writerow([epoch, epoch * 4 + 3, "", 10.0 * (epoch + 1)])
    if failed:
        (folder / "failed.json").write_text(json.dumps({"error": failed}))
    if r1 is None:
        return folder
    test = {
        which: {
            "t2i": {m: r1 + i + (0.5 if which == "last" else 0) for i, m in enumerate(METRICS)}
            | {"num_queries": 40},
            "i2t": {m: r1 / 2 for m in METRICS} | {"num_queries": 20},
        }
        for which in ("best", "last")
    }
    metrics = {"test": test, "best_val": {"val/t2i/R1": r1 - 1, "checkpoint": "x"}, "epochs": 3}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def study(tmp_path):
    """2 weights x 3 seeds; one run of weight 0.3 unfinished, one failed."""
    root = tmp_path / "study"
    r1 = {(0.1, 1): 50.0, (0.1, 2): 52.0, (0.1, 3): 57.0, (0.3, 1): 60.0, (0.3, 2): 61.5}
    n = 0
    for weight in (0.1, 0.3):
        for seed in (1, 2, 3):
            words = ["debug=tiny", f"objectives.citc.weight={weight}", f"seed={seed}"]
            name = f"{n:03d}_objectives.citc.weight={weight},seed={seed}"
            failed = "RuntimeError: boom" if (weight, seed) == (0.3, 3) else None
            write_run(root / name, words, r1.get((weight, seed)), failed=failed)
            n += 1
    return root, r1


def test_one_row_per_run_with_its_overrides_and_metrics(study):
    root, r1 = study
    runs = collect_runs([root])
    assert len(runs) == 6
    assert [r.status for r in runs] == ["finished"] * 5 + ["failed"]
    first = runs[0]
    assert first.overrides == {"debug": "tiny", "objectives.citc.weight": 0.1, "seed": 1}
    assert first.metrics["test/best/t2i/R1"] == 50.0
    assert first.metrics["test/last/t2i/mINP"] == 50.0 + 4 + 0.5
    assert first.metrics["val/best/t2i/R1"] == 49.0
    assert "test/best/t2i/num_queries" not in first.metrics
    table = format_report(runs)
    assert "common overrides: debug=tiny" in table
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("run "))
    assert header.split()[:4] == ["run", "status", "objectives.citc.weight", "seed"]
    row = next(line for line in lines if line.startswith("000_"))
    assert row.split()[1:5] == ["finished", "0.1", "1", "50.00"]
    assert "6 runs: 5 finished, 1 failed" in table
    assert "failed: RuntimeError: boom" in table


def test_groups_average_the_finished_runs_over_the_group_by_keys(study, capsys):
    root, r1 = study
    assert main(["report", str(root), "group_by=seed", "format=json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["runs"]) == 6 and out["runs"][5]["status"] == "failed"
    low, high = out["groups"]
    assert low["overrides"] == {"debug": "tiny", "objectives.citc.weight": 0.1}
    assert (low["n"], low["unfinished"], high["n"], high["unfinished"]) == (3, 0, 2, 1)
    for group, weight in ((low, 0.1), (high, 0.3)):
        values = [v for (w, _), v in r1.items() if w == weight]
        assert group["mean"]["test/best/t2i/R1"] == pytest.approx(statistics.mean(values))
        assert group["std"]["test/best/t2i/R1"] == pytest.approx(statistics.stdev(values))
        assert group["mean"]["test/last/t2i/R5"] == pytest.approx(statistics.mean(values) + 1.5)
    # the text table says the same, with the unfinished run counted but not averaged
    text = format_report(collect_runs([root]), ["seed"])
    assert "53.00 ± 3.61" in text and "60.75 ± 1.06" in text and "2 (+1 unfinished)" in text


def test_a_group_of_one_has_no_std_and_groups_by_two_keys(study):
    root, _ = study
    runs = collect_runs([root])
    groups = group_runs(runs, ["seed", "objectives.citc.weight"])
    (group,) = groups
    assert group.overrides == {"debug": "tiny"} and group.n == 5 and group.unfinished == 1
    single = group_runs(runs, ["debug"])
    assert all(g.n == 1 for g in single[:5]) and single[0].std()["test/best/t2i/R1"] is None
    assert (
        json.loads(format_report(runs, ["debug"], "json"))["groups"][0]["std"]["test/best/t2i/R1"]
        is None
    )


def test_markdown_and_csv(study):
    root, _ = study
    runs = collect_runs([root])
    markdown = format_report(runs, ["seed"], "markdown")
    assert "| run | status | objectives.citc.weight | seed | best R1 |" in markdown
    assert "### mean ± std (sample) over seed" in markdown
    rows = list(csv.DictReader(io.StringIO(format_report(runs, fmt="csv"))))
    assert len(rows) == 6 and rows[0]["seed"] == "1" and rows[0]["status"] == "finished"
    assert float(rows[0]["test/best/i2t/R1"]) == 25.0 and rows[5]["test/best/t2i/R1"] == ""


def test_sweep_folders_list_planned_runs_and_nested_folders_are_found(tmp_path, capsys):
    sweep = tmp_path / "sweeps" / "20261203-101010"
    write_run(sweep / "000_seed=1", ["seed=1"], 40.0)
    record = {
        "command": ["seed=1,2"],
        "runs": [
            {"run_dir": "000_seed=1", "overrides": ["seed=1"]},
            {"run_dir": "001_seed=2", "overrides": ["seed=2"]},  # not started yet
        ],
    }
    (sweep / "sweep.json").write_text(json.dumps(record))
    write_run(tmp_path / "synthetic-scratch_small" / "20261201-090000", [], 30.0)
    runs = collect_runs([tmp_path])  # a folder holding a sweep and a timestamped run
    assert [(r.run_dir.name, r.status) for r in runs] == [
        ("000_seed=1", "finished"),
        ("001_seed=2", "pending"),
        ("20261201-090000", "finished"),
    ]
    assert runs[1].overrides == {"seed": 2}
    # a path holding '=' is a path, not an override
    assert main(["report", str(sweep / "000_seed=1"), "format=csv"]) == 0
    assert "000_seed=1,finished,1" in capsys.readouterr().out


def test_plots_are_valid_pngs(study, tmp_path, capsys):
    root, _ = study
    out = tmp_path / "plots"
    assert main(["report", str(root), "group_by=seed", f"plots={out}"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "curves_objectives.citc.weight=0.1.png",
        "curves_objectives.citc.weight=0.3.png",
        "test_r1.png",
    ]
    for name in names:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
            image.load()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["group_by=lr"], "group_by key 'lr' is in no run's overrides; the runs' keys: debug, "),
        (["format=xml"], "format='xml'; valid: table, markdown, csv, json"),
    ],
)
def test_bad_report_requests(study, capsys, args, message):
    root, _ = study
    assert main(["report", str(root), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_folders_that_hold_no_run_are_refused(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert "needs at least one run or sweep folder" in capsys.readouterr().err
