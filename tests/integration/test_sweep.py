"""`tbps train -m`: a real 2x2 sweep through Hydra's multirun, its report and plots, a failure
that is recorded while the sweep goes on, re-running the command (skip / resume / retry), the
submitit launcher run locally, and the refusals."""

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import tbps.app.train
from tbps.app.sweep import plan_sweep, write_sweep_record
from tbps.cli import main

RUN_NAMES = [
    "000_optim.lr=0.001,seed=1",
    "001_optim.lr=0.002,seed=1",
    "002_optim.lr=0.001,seed=2",
    "003_optim.lr=0.002,seed=2",
]


def sweep_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "-m",
        "debug=tiny",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "report.failures=0",
        f"cache_dir={tmp_path / 'cache'}",
        f"runs_dir={tmp_path / 'runs'}",
        "seed=1,2",
        "optim.lr=1e-3,2e-3",
        *extra,
    ]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One 2x2 sweep shared by the tests that only read it (about 10 s)."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    assert main(sweep_args(tmp_path)) == 0
    (folder,) = (tmp_path / "runs" / "sweeps").iterdir()
    return tmp_path, folder


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_a_two_by_two_sweep_writes_four_runs_a_report_and_plots(sweep, capsys):
    tmp_path, folder = sweep
    assert sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "plots") == (
        RUN_NAMES
    )
    record = json.loads((folder / "sweep.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["finished"] * 4
    assert record["swept"] == ["optim.lr", "seed"]
    for name in RUN_NAMES:  # each run got its own overrides and nothing of Hydra's
        run = folder / name
        config = (run / "config.yaml").read_text()
        lr, seed = name.split("_", 1)[1].split(",")
        assert f"seed: {seed.split('=')[1]}" in config and f"lr: {lr.split('=')[1]}" in config
        assert not (run / ".hydra").exists()
        assert read_metrics(run)["run_dir"] == str(run)
    # the sweep folder got report.md (grouped over the replicate key seed) and valid PNGs
    report = (folder / "report.md").read_text()
    assert "| run | status | optim.lr | seed |" in report and "over seed" in report
    pngs = sorted((folder / "plots").glob("*.png"))
    assert [p.name for p in pngs] == [
        "curves_optim.lr=0.001.png",
        "curves_optim.lr=0.002.png",
        "test_r1.png",
    ]
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 300
            image.load()  # decodes: not truncated
        assert f"(plots/{png.name})" in report

    # tbps report: the means equal the runs' metrics.json values
    capsys.readouterr()
    assert main(["report", str(folder), "group_by=seed", "format=json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [Path(r["run_dir"]).name for r in out["runs"]] == RUN_NAMES
    assert out["runs"][0]["overrides"] == {
        "debug": "tiny",
        "trainer.max_epochs": 1,
        "trainer.enable_progress_bar": False,
        "report.failures": 0,
        "cache_dir": str(tmp_path / "cache"),
        "runs_dir": str(tmp_path / "runs"),
        "seed": 1,
        "optim.lr": 0.001,
    }
    assert [g["overrides"]["optim.lr"] for g in out["groups"]] == [0.001, 0.002]
    for group, names in zip(out["groups"], (RUN_NAMES[0::2], RUN_NAMES[1::2]), strict=True):
        assert group["n"] == 2 and "seed" not in group["overrides"]
        for which in ("best", "last"):
            for metric in ("R1", "mAP", "mINP"):
                values = [read_metrics(folder / n)["test"][which]["t2i"][metric] for n in names]
                key = f"test/{which}/t2i/{metric}"
                assert group["mean"][key] == pytest.approx(statistics.mean(values), abs=1e-9)
                assert group["std"][key] == pytest.approx(statistics.stdev(values), abs=1e-9)


def test_rerunning_a_finished_sweep_skips_every_run(sweep, capsys):
    tmp_path, folder = sweep
    before = {n: (folder / n / "metrics.json").stat().st_mtime_ns for n in RUN_NAMES}
    capsys.readouterr()
    assert main(sweep_args(tmp_path)) == 0  # the same command, no sweep_dir: the same sweep
    assert [p.name for p in (tmp_path / "runs" / "sweeps").iterdir()] == [folder.name]
    after = {n: (folder / n / "metrics.json").stat().st_mtime_ns for n in RUN_NAMES}
    assert after == before
    assert f"sweep folder: {folder} (4 finished)" in capsys.readouterr().out


def test_a_failed_run_is_recorded_the_sweep_goes_on_and_a_rerun_retries_and_resumes(
    tmp_path, monkeypatch, capsys
):
    real = tbps.app.train.run_training
    calls, attempted = [], set()

    def flaky(cfg, overrides=()):
        name = Path(cfg.run_dir).name
        calls.append(name)
        first = name not in attempted
        attempted.add(name)
        if cfg.seed == 2 and cfg.optim.lr == 0.001 and first:
            raise RuntimeError("out of memory (simulated, first attempt)")
        return real(cfg, overrides)

    monkeypatch.setattr(tbps.app.train, "run_training", flaky)
    sweep_dir = tmp_path / "study"
    args = sweep_args(tmp_path, f"sweep_dir={sweep_dir}")
    assert main(args) == 1  # not every run finished
    out = capsys.readouterr().out
    assert calls == RUN_NAMES  # the failure did not stop the sweep
    failed = json.loads((sweep_dir / RUN_NAMES[2] / "failed.json").read_text())
    assert failed["error"] == "RuntimeError: out of memory (simulated, first attempt)"
    assert "simulated" in failed["traceback"] and failed["overrides"][-2:] == [
        "seed=2",
        "optim.lr=0.001",
    ]
    assert "(3 finished, 1 failed)" in out and f"{RUN_NAMES[2]} failed: RuntimeError" in out
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["finished", "finished", "failed", "finished"]

    # a run that stopped after its last checkpoint (metrics.json missing) resumes from it
    resumable = sweep_dir / RUN_NAMES[3]
    (resumable / "metrics.json").unlink()
    calls.clear()
    assert main(args) == 0
    assert calls == [RUN_NAMES[2], RUN_NAMES[3]]  # finished ones skipped
    assert (sweep_dir / RUN_NAMES[2] / "failed-1.json").is_file()  # the old record is kept
    assert not (sweep_dir / RUN_NAMES[2] / "failed.json").exists()
    assert read_metrics(resumable)["resumed_from"] == str(resumable / "checkpoints" / "last.ckpt")
    assert (resumable / "logs" / "resume-1").is_dir()


def test_a_run_folder_of_other_overrides_is_never_overwritten(tmp_path, capsys):
    sweep_dir = tmp_path / "study"
    args = [a for a in sweep_args(tmp_path, f"sweep_dir={sweep_dir}") if "optim.lr" not in a]
    # a folder that is not a sweep is refused as sweep_dir, untouched
    sweep_dir.mkdir()
    (sweep_dir / "notes.txt").write_text("mine")
    assert main(args) == 2
    assert "exists and is not a sweep" in capsys.readouterr().err
    assert [p.name for p in sweep_dir.iterdir()] == ["notes.txt"]
    # inside a sweep, a folder where the first run would go holds someone else's file
    (sweep_dir / "notes.txt").unlink()
    write_sweep_record(sweep_dir, plan_sweep([a for a in args[2:] if "sweep_dir" not in a]))
    foreign = sweep_dir / "000_seed=1"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(args) == 1
    assert (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in foreign.iterdir()) == ["failed.json", "notes.txt"]
    error = json.loads((foreign / "failed.json").read_text())["error"]
    assert "exists and is not empty; choose another run_dir" in error
    assert (sweep_dir / "001_seed=2" / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["seed=range(0,0)"], "expand to no run (seed=range(0,0) is empty)"),
        (["run_dir=/x", "seed=1,2"], "run_dir= is set per run by the sweep"),
        (["seed=1,2", "optim.nope=1,2"], "unknown config key 'optim.nope'"),
        (["seed=1,2", "optim.lr=-1,1"], "optim.lr=-1: expected a positive number"),
        (["seed=1,2", "optim.lr=[1"], "cannot parse the sweep overrides"),
        (["seed=1,2", "hydra/launcher=nope"], "unknown option 'nope' for config group 'hydra/l"),
        (["seed=1,2", "hydra.launcher.nope=1"], "unknown config key 'hydra.launcher.nope'"),
    ],
)
def test_bad_sweeps_are_refused_in_one_line_before_any_run(tmp_path, capsys, extra, message):
    args = ["train", "-m", "debug=tiny", f"runs_dir={tmp_path / 'runs'}", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_a_sweep_folder_of_another_command_is_refused(sweep, capsys):
    tmp_path, folder = sweep
    assert main(["train", "-m", "debug=tiny", "seed=5,6", f"sweep_dir={folder}"]) == 2
    assert "holds another sweep" in capsys.readouterr().err


def test_the_slurm_example_config_composes_for_submitit():
    from hydra import compose, initialize_config_module

    with initialize_config_module("tbps.configs", version_base="1.3"):
        cfg = compose(
            "train",
            ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1
    assert launcher.tasks_per_node == 1 and launcher.timeout_min == 1440


@pytest.mark.slow  # subprocesses through submitit (about 30 s)
def test_submitit_local_launcher_runs_the_jobs_in_subprocesses(tmp_path):
    sweep_dir = tmp_path / "study"
    args = sweep_args(tmp_path, f"sweep_dir={sweep_dir}", "hydra/launcher=submitit_local")
    args = [a for a in args if not a.startswith("optim.lr=")]
    done = subprocess.run(
        [sys.executable, "-m", "tbps", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("000_seed=1", "001_seed=2"):
        assert read_metrics(sweep_dir / name)["test"]["best"]["t2i"]["num_queries"] > 0
    assert any((sweep_dir / ".submitit").iterdir())  # submitit's job folders
    shutil.rmtree(sweep_dir / ".submitit")


def test_the_runs_of_a_sweep_share_a_wandb_group(tmp_path):
    sweep_dir = tmp_path / "ablation-7"
    args = [a for a in sweep_args(tmp_path, f"sweep_dir={sweep_dir}") if "optim.lr" not in a]
    args += ["logger=wandb", "logger.wandb.mode=offline"]
    assert main(args) == 0
    for name in ("000_seed=1", "001_seed=2"):
        (record,) = (sweep_dir / name / "wandb").glob("offline-run-*/run-*.wandb")
        data = record.read_bytes()
        # the run record's run_group (protobuf field 6, length-delimited) is the sweep's name
        assert b"\x32" + bytes([len(sweep_dir.name)]) + sweep_dir.name.encode() in data
        assert f"group: {sweep_dir.name}" in (sweep_dir / name / "config.yaml").read_text()


def test_the_plan_follows_hydras_sweep_grammar():
    plan = plan_sweep(
        ["debug=tiny", "data.fold_id=range(0,3)", "recipe=irra,rde", "hydra/launcher=slurm"]
    )
    assert plan.swept == ["data.fold_id", "recipe"]
    assert plan.hydra_overrides == ["hydra/launcher=slurm"]
    assert plan.jobs == [
        ["debug=tiny", f"data.fold_id={fold}", f"recipe={recipe}"]
        for fold in range(3)
        for recipe in ("irra", "rde")
    ]
    names = [plan.run_name(i, job) for i, job in enumerate(plan.jobs)]
    assert names[:2] == ["000_data.fold_id=0,recipe=irra", "001_data.fold_id=0,recipe=rde"]
    assert plan_sweep(["seed=choice(3,4)"]).jobs == [["seed=3"], ["seed=4"]]
    added = plan_sweep(["+objectives.id.weight=0.5,1.0"])  # an added key names its folders too
    assert added.swept == ["objectives.id.weight"]
    assert added.run_name(1, added.jobs[1]) == "001_+objectives.id.weight=1.0"
    long = plan_sweep(["data.root=/a/very/long/path/" + "x" * 120 + ",/b"])
    name = long.run_name(0, long.jobs[0])
    assert "/" not in name and len(name) <= 104 and name.startswith("000_data.root=_a_very")
