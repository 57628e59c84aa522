"""Resume: an interrupted run continued with `resume=RUN_DIR` ends like an uninterrupted one:
the same test metrics, the same per-step training log and, tensor by tensor, the same
`last.ckpt` (weights, optimizer, scheduler, loops, boosting weights, callback states)."""

import csv
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tbps.app import train as run_module
from tbps.app.train import run_training
from tbps.cli import compose_config, main

EPOCHS, INTERRUPT_AT = 4, 2  # the resumed part trains epochs 2 and 3 (0-based)

#: boosting after every epoch (so after epochs 0 and 1 before the interruption, epoch 2
#: after it) and early stopping that can never see an improvement (R1 is at most 100) but
#: whose patience outlasts the run: its wait count grows every validation, so a lost or
#: reset early-stopping state changes the last checkpoint
BOOSTING_AND_EARLY_STOPPING = [
    "boosting.enabled=true",
    "boosting.every_n_epochs=1",
    "early_stopping.enabled=true",
    "early_stopping.min_delta=1000",
    f"early_stopping.patience={EPOCHS + 1}",
]


class Interrupt(Exception):
    pass


class InterruptAtEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupt(f"simulated crash at the start of epoch {self.epoch}")


def overrides(tmp_path, name, extra=()):
    return [
        "debug=tiny",
        f"run_dir={tmp_path / name}",
        f"cache_dir={tmp_path / 'cache'}",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.enable_progress_bar=false",
        "augment=irra",  # random crops/erasing: the RNG state must carry over
        "augment.text.enabled=true",
        "loader.sampler=identity",
        "report.failures=5",
        *extra,
    ]


def step_rows(path: Path) -> dict[int, dict[str, str]]:
    """The rows of a CSV log that carry ``train/loss``, by step, with their non-empty
    ``train/*`` values (loss, objective terms, grad norm, logit scale)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    by_step = {int(r["step"]): r for r in rows}
    assert len(by_step) == len(rows), f"{path}: a step logged twice"
    return {
        step: {k: v for k, v in r.items() if k.startswith("train/") and v}
        for step, r in by_step.items()
    }


#: wall-clock fields: seconds spent and the process start time differ between any two runs
WALL_CLOCK_KEYS = {"seconds", "process_start"}


def assert_same_checkpoint(a, b, run_a: Path, run_b: Path, where: str = "ckpt") -> None:
    """``a`` and ``b`` equal, recursively: same keys, same types, tensors equal in dtype,
    shape and every value. Strings (and dict keys) are compared with each run's folder
    replaced by ``RUN``: the ModelCheckpoint states hold absolute paths (``dirpath``,
    ``best_model_path``, ``best_k_models``...) into two different run folders; only the
    folder may differ, never the file they point to."""

    def norm(value, run):
        return value.replace(str(run), "RUN") if isinstance(value, str) else value

    if isinstance(a, dict):
        assert isinstance(b, dict), where
        keys_a = {norm(k, run_a): k for k in a}
        keys_b = {norm(k, run_b): k for k in b}
        assert keys_a.keys() == keys_b.keys(), (where, keys_a.keys() ^ keys_b.keys())
        for key, ka in keys_a.items():
            if where.endswith("WallClock") and key in WALL_CLOCK_KEYS:
                continue
            if key == "current_score" and b[keys_b[key]] is None:
                # ModelCheckpoint's score of its last improving save: Lightning writes it but
                # never reads it back (load_state_dict skips it; nothing else uses it), so a
                # resumed run has None until its own first improvement
                continue
            assert_same_checkpoint(a[ka], b[keys_b[key]], run_a, run_b, f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_checkpoint(x, y, run_a, run_b, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype, a.shape)
        assert torch.equal(a, b), (where, (a != b).sum().item(), "values differ")
    else:
        assert type(a) is type(b), (where, type(a), type(b))
        assert norm(a, run_a) == norm(b, run_b), (where, a, b)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["loader.num_workers=0"], id="workers0"),
        pytest.param(["loader.num_workers=2"], id="workers2"),
        pytest.param(["loader.num_workers=0", *BOOSTING_AND_EARLY_STOPPING], id="boost-es"),
        pytest.param(
            ["loader.num_workers=2", *BOOSTING_AND_EARLY_STOPPING],
            id="workers2-boost-es",
            marks=pytest.mark.slow,  # adds little to the two above
        ),
    ],
)
def test_resumed_run_matches_uninterrupted_run(tmp_path, monkeypatch, extra):
    full_dir, part = tmp_path / "full", tmp_path / "part"
    full = run_training(compose_config("train", overrides(tmp_path, "full", extra)))
    assert full["epochs"] == EPOCHS  # early stopping (when on) did not stop the run

    original = run_module._callbacks

    def with_interrupt(*args):
        checkpoint, callbacks = original(*args)
        return checkpoint, [*callbacks, InterruptAtEpoch(INTERRUPT_AT)]

    monkeypatch.setattr(run_module, "_callbacks", with_interrupt)
    with pytest.raises(Interrupt):
        run_training(compose_config("train", overrides(tmp_path, "part", extra)))
    monkeypatch.setattr(run_module, "_callbacks", original)
    assert (part / "checkpoints" / "last.ckpt").is_file() and not (part / "metrics.json").exists()
    first_log = (part / "logs" / "metrics.csv").read_text()

    monkeypatch.chdir(tmp_path)
    # the run's own config.yaml is reloaded: the workers / features come from it
    assert main(["train", f"resume={part}", "trainer.enable_progress_bar=false"]) == 0
    resumed = json.loads((part / "metrics.json").read_text())
    assert resumed["resumed_from"].endswith("last.ckpt")
    assert resumed["steps"] == full["steps"] and resumed["epochs"] == full["epochs"]
    assert resumed["test"] == full["test"]  # exactly the same numbers on CPU
    assert resumed["best_val"]["val/t2i/R1"] == full["best_val"]["val/t2i/R1"]
    assert (part / "logs" / "metrics.csv").read_text() == first_log  # first part's log kept
    assert (part / "failures.html").is_file()
    workers = next(o.split("=")[1] for o in extra if o.startswith("loader.num_workers="))
    # the resumed part loaded with the asked workers too (from the run's config.yaml; the
    # first part, started without the CLI's logging setup, leaves no info lines)
    assert f"precision 32-true, {workers} loader worker(s)" in (part / "train.log").read_text()

    # the per-step training log: the first part is the uninterrupted run's first epochs, the
    # resumed part (logs/resume-1/) exactly its remaining steps, none repeated or skipped
    full_rows = step_rows(full_dir / "logs" / "metrics.csv")
    first_rows = step_rows(part / "logs" / "metrics.csv")
    resumed_rows = step_rows(part / "logs" / "resume-1" / "metrics.csv")
    assert len(full_rows) == full["steps"]
    steps_per_epoch = full["steps"] // EPOCHS
    cut = INTERRUPT_AT * steps_per_epoch
    assert sorted(first_rows) == list(range(cut))
    assert sorted(resumed_rows) == list(range(cut, full["steps"]))
    assert first_rows == {s: full_rows[s] for s in first_rows}
    assert resumed_rows == {s: full_rows[s] for s in resumed_rows}

    ckpt_full = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt_part = torch.load(part / "checkpoints" / "last.ckpt", weights_only=False)
    if "boosting.enabled=true" in extra:  # the features under test are in the checkpoints
        assert ckpt_full["tbps_sample_weights"].shape[0] > 0
        callbacks = ckpt_full["callbacks"]
        stop = next(v for k, v in callbacks.items() if k.startswith("EarlyStopping"))
        assert stop["wait_count"] == EPOCHS - 1
        assert callbacks["HardSampleBoosting"]["updates"] == EPOCHS - 1
    assert_same_checkpoint(ckpt_full, ckpt_part, full_dir, part)


def test_resume_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", f"resume={tmp_path}"]) == 2
    assert "no config.yaml (not a tbps run folder)" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    assert main(["train", f"resume={tmp_path}"]) == 2
    assert "no checkpoints/last.ckpt" in capsys.readouterr().err
