"""A run as a user lives it: relative paths and resume from elsewhere, Ctrl-C, failed starts,
output in files, metric names, checkpoint permissions, debug presets."""

import json
import os
import signal
import stat

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tbps.app import train as run_module
from tbps.cli import main
from tbps.training.checkpoint import AtomicCheckpointIO

TINY = ["debug=tiny", "trainer.max_epochs=2", "report.failures=0", "data.synth.num_identities=20"]


class CtrlCAtEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def _with_callback(monkeypatch, callback):
    original = run_module._callbacks

    def patched(*args):
        checkpoint, callbacks = original(*args)
        return checkpoint, [*callbacks, callback]

    monkeypatch.setattr(run_module, "_callbacks", patched)
    return original


def test_ctrl_c_says_how_to_continue_and_resume_works_from_elsewhere(tmp_path, monkeypatch, capsys):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(start)
    original = _with_callback(monkeypatch, CtrlCAtEpoch(1))
    assert main(["train", *TINY, "run_dir=part", "cache_dir=cache"]) == 130
    err = capsys.readouterr().err
    part = start / "part"
    assert f"continue with: tbps train resume={part}" in err and "Traceback" not in err
    assert "interrupted; continue with" in (part / "train.log").read_text()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning ignored it
    saved = (part / "config.yaml").read_text()
    assert f"cache_dir: {start / 'cache'}" in saved and f"run_dir: {part}" in saved
    first = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    first_seconds = next(v for k, v in first["callbacks"].items() if "WallClock" in k)["seconds"]

    monkeypatch.setattr(run_module, "_callbacks", original)
    monkeypatch.chdir(elsewhere)  # a SLURM requeue starts in another folder
    assert main(["train", f"resume={part}"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((part / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["wall_seconds"] >= first_seconds
    assert "\r" not in out and "\ntest (best)" in out  # no progress bars when not a terminal
    # test metrics of the best and the last weights have their own names
    header = (part / "logs" / "resume-1" / "metrics.csv").read_text().splitlines()[0]
    assert "test/best/t2i/R1" in header and "test/last/t2i/R1" in header
    assert "test/t2i/R1" not in header.split(",")
    # checkpoints follow the umask, like every other file of the run
    mode = stat.S_IMODE(os.stat(part / "checkpoints" / "best.ckpt").st_mode)
    assert mode == 0o666 & ~_umask()
    # resuming a finished run does nothing
    assert main(["train", f"resume={part}"]) == 0
    assert "is finished (metrics.json); nothing to do" in capsys.readouterr().err
    assert json.loads((part / "metrics.json").read_text()) == metrics


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_start_logs_the_error_and_can_be_started_again(tmp_path, monkeypatch, capsys):
    from fixtures import write_cuhk_fixture

    records = write_cuhk_fixture(tmp_path / "data", {"train": 8, "val": 2, "test": 2})
    args = ["train", "data=cuhk_pedes", f"data.root={tmp_path / 'data'}", "backbone=scratch_tiny"]
    args += ["loader.batch_size=8", "trainer.max_epochs=1", f"run_dir={tmp_path / 'run'}"]
    image = tmp_path / "data" / "imgs" / records[3]["file_path"]
    content = image.read_bytes()
    image.unlink()
    assert main(args) == 2
    assert f"image missing: {image}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # checked before the run folder exists
    image.write_bytes(b"\xff\xd8 truncated jpeg")  # exists, fails when decoded: mid-run
    assert main(args) == 2
    assert "cannot read image" in (tmp_path / "run" / "train.log").read_text()
    image.write_bytes(content)
    assert main(args) == 0  # the failed start's folder is reused
    log = (tmp_path / "run" / "train.log").read_text()  # appended to: the failure is kept
    assert "run failed" in log and "reusing it" in capsys.readouterr().err
    assert (tmp_path / "run" / "logs-failed-1").is_dir()  # its logs kept apart


def test_ctrl_c_during_a_checkpoint_write_finishes_the_write(tmp_path, monkeypatch):
    real_save = torch.save

    def save_then_ctrl_c(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the file is being written
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"epoch": 3}, tmp_path / "last.ckpt")
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(tmp_path / "last.ckpt")["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_debug_fast_scores_chance_over_what_it_scored(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "debug=fast", "backbone=scratch_tiny", "data.synth.num_identities=60"]
    args += ["loader.eval_batch_size=8", "report.failures=0", f"cache_dir={tmp_path / 'c'}"]
    assert main([*args, f"run_dir={tmp_path / 'run'}"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    scored = metrics["test"]["last"]["t2i"]["num_queries"]
    assert metrics["chance"]["t2i"]["num_queries"] == scored
