"""Refusals the docs promise, each driven through `tbps train`: exit 2, one line, no work done."""

import hashlib

import pytest

from tbps.cli import main


def _tree(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _train(tmp_path, capsys, *args) -> str:
    code = main(["train", "debug=tiny", f"cache_dir={tmp_path / 'cache'}", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("tbps train: error: ")  # one line
    return err


def test_a_non_empty_run_dir_is_left_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("my results")
    before = _tree(run)
    err = _train(tmp_path, capsys, f"run_dir={run}")
    assert str(run) in err and "not empty" in err
    assert _tree(run) == before


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_spawning_strategies_are_refused(tmp_path, capsys, strategy):
    err = _train(tmp_path, capsys, f"trainer.strategy={strategy}", f"run_dir={tmp_path / 'r'}")
    assert f"trainer.strategy={strategy} is not supported" in err and "torchrun" in err
    assert not (tmp_path / "r").exists()


def test_skipping_nonfinite_losses_on_several_devices_is_refused(tmp_path, capsys):
    err = _train(
        tmp_path,
        capsys,
        "on_nonfinite_loss=skip",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        f"run_dir={tmp_path / 'r'}",
    )
    assert "on_nonfinite_loss=skip works on one device only" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=0.1", "optim.lr cannot change when resuming"),
        ("data.synth.num_identities=7", "data.synth.num_identities cannot change when resuming"),
        ("objectives.itc.weight=2", "objectives.itc.weight cannot change when resuming"),
        ("backbone.embed_dim=8", "backbone.embed_dim cannot change when resuming"),
        ("loader.no_such_key=1", "unknown config key 'loader.no_such_key'"),
    ],
)
def test_resume_refuses_changed_or_unknown_keys(tmp_path, capsys, override, message):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("loader:\n  num_workers: 0\noptim:\n  lr: 0.001\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not read before the overrides")
    before = _tree(run)
    code = main(["train", f"resume={run}", override])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert _tree(run) == before
