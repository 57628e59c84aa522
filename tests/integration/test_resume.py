"""Resume: an interrupted run continued with `resume=RUN_DIR` ends like an uninterrupted one."""

import json

import pytest
from lightning.pytorch.callbacks import Callback

from tbps.app import train as run_module
from tbps.app.train import run_training
from tbps.cli import compose_config, main


class Interrupt(Exception):
    pass


class InterruptAtEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupt(f"simulated crash at the start of epoch {self.epoch}")


def overrides(tmp_path, name):
    return [
        "debug=tiny",
        f"run_dir={tmp_path / name}",
        f"cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "augment=irra",  # random crops/erasing: the RNG state must carry over
        "augment.text.enabled=true",
        "loader.sampler=identity",
        "report.failures=5",
    ]


def test_resumed_run_matches_uninterrupted_run(tmp_path, monkeypatch):
    full = run_training(compose_config("train", overrides(tmp_path, "full")))

    original = run_module._callbacks

    def with_interrupt(*args):
        checkpoint, callbacks = original(*args)
        return checkpoint, [*callbacks, InterruptAtEpoch(2)]

    monkeypatch.setattr(run_module, "_callbacks", with_interrupt)
    with pytest.raises(Interrupt):
        run_training(compose_config("train", overrides(tmp_path, "part")))
    monkeypatch.setattr(run_module, "_callbacks", original)
    part = tmp_path / "part"
    assert (part / "checkpoints" / "last.ckpt").is_file() and not (part / "metrics.json").exists()
    first_log = (part / "logs" / "metrics.csv").read_text()

    monkeypatch.chdir(tmp_path)
    assert main(["train", f"resume={part}", "trainer.enable_progress_bar=false"]) == 0
    resumed = json.loads((part / "metrics.json").read_text())
    assert resumed["resumed_from"].endswith("last.ckpt")
    assert resumed["steps"] == full["steps"] and resumed["epochs"] == full["epochs"]
    assert resumed["test"] == full["test"]  # exactly the same numbers on CPU
    assert resumed["best_val"]["val/t2i/R1"] == full["best_val"]["val/t2i/R1"]
    assert (part / "logs" / "metrics.csv").read_text() == first_log  # first part's log kept
    assert (part / "logs" / "resume-1" / "metrics.csv").is_file()
    assert (part / "failures.html").is_file()


def test_resume_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", f"resume={tmp_path}"]) == 2
    assert "no config.yaml (not a tbps run folder)" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    assert main(["train", f"resume={tmp_path}"]) == 2
    assert "no checkpoints/last.ckpt" in capsys.readouterr().err
