"""Training engine end to end: eval parity, loggers, early stopping, zero-shot validation,
provenance, failure report, and the errors raised before any work."""

import csv
import json
import logging
import math
import shutil

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tbps.app import train as train_module
from tbps.app.train import run_training
from tbps.cli import compose_config, main
from tbps.training.checkpoint import AtomicCheckpointIO


def tiny(tmp_path, name, *extra):
    return [
        "debug=tiny",
        f"run_dir={tmp_path / name}",
        f"cache_dir={tmp_path / 'cache'}",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def test_eval_scores_a_checkpoint_like_training_did(tmp_path, monkeypatch):
    """RDE (fused global + TSE embeddings) with the siglip preset (bicubic eval resize)."""
    metrics = run_training(
        compose_config(
            "train",
            tiny(tmp_path, "rde", "objectives=rde", "augment=siglip", "trainer.max_epochs=1"),
        )
    )
    monkeypatch.setenv("TBPS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            f"ckpt_path={metrics['best_val']['checkpoint']}",
            "data.synth.num_identities=30",
            "data.synth.images_per_identity=[2,3]",
            f"out={out}",
        ]
    )
    assert code == 0
    evaluated = json.loads(out.read_text())
    for task in ("t2i", "i2t"):
        for key in ("R1", "mAP", "mINP"):
            assert evaluated[task][key] == pytest.approx(
                metrics["test"]["best"][task][key], abs=1e-6
            )


def test_loggers_early_stopping_zero_shot_and_run_outputs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tbps.training.module")
    run_dir = tmp_path / "run"
    metrics = run_training(
        compose_config(
            "train",
            tiny(
                tmp_path,
                "run",
                "logger=tensorboard",
                "trainer.max_epochs=6",
                "early_stopping.enabled=true",
                "early_stopping.patience=1",
                "early_stopping.min_delta=1000",  # no validation can improve this much
                "validate_before_training=true",
                "report.failures=3",
            ),
        )
    )
    # epoch 1's score is the first best (anything beats -inf); no later one can beat it by
    # 1000, so after epoch 2 the wait reaches patience 1 and training stops: exactly 2 epochs
    # (the zero-shot validation before training does not count)
    assert metrics["epochs"] == 2
    assert set(metrics["zero_shot_val"]) == {"t2i", "i2t"}
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("val ")]
    assert summaries[0].startswith("val before training: t2i R1 ")
    assert summaries[1].startswith("val epoch 1/6: t2i R1 ") and "; i2t R1 " in summaries[1]
    assert summaries[2].startswith("val epoch 2/6: ") and len(summaries) == 3
    assert list((run_dir / "logs" / "tensorboard").glob("events.out.tfevents*"))
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    columns = set(rows[0])
    assert "train/grad_norm" in columns and any(c.startswith("lr-AdamW/default") for c in columns)
    assert any(r.get("train/grad_norm") for r in rows)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["packages"]["torch"] == torch.__version__.split("+")[0]
    assert "commit" in provenance["tbps_source_git"]
    page = (run_dir / "failures.html").read_text()
    assert metrics["failure_report"].endswith("failures.html") and "true: rank" in page


class PrecisionAndClipProbe(Callback):
    """What the training steps ran under: the autocast state seen by every Linear layer's
    forward while training, and per optimizer step the global gradient norm before clipping
    (``on_before_optimizer_step``: Lightning clips right after it) and the norm of the gradients
    the optimizer step used (an optimizer step post-hook: after clipping and the update, before
    the next ``zero_grad``; AdamW leaves ``p.grad`` as it found it)."""

    def __init__(self):
        self.forwards: list[tuple[bool, torch.dtype, torch.dtype]] = []
        self.before_clip: list[float] = []
        self.stepped: list[float] = []

    @staticmethod
    def grad_norm(module) -> float:
        grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    def on_train_start(self, trainer, pl_module):
        def record(layer, args, output):
            if pl_module.training and trainer.training:
                self.forwards.append(
                    (
                        torch.is_autocast_enabled("cpu"),
                        torch.get_autocast_dtype("cpu"),
                        output.dtype,
                    )
                )

        self.hooks = [
            m.register_forward_hook(record)
            for m in pl_module.modules()
            if isinstance(m, torch.nn.Linear)
        ]
        (optimizer,) = trainer.optimizers
        self.hooks.append(
            optimizer.register_step_post_hook(
                lambda *_: self.stepped.append(self.grad_norm(pl_module))
            )
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_clip.append(self.grad_norm(pl_module))

    def on_train_end(self, trainer, pl_module):
        for hook in self.hooks:
            hook.remove()


def test_bf16_mixed_precision_with_clipping_and_accumulation_trains_on_cpu(tmp_path, monkeypatch):
    probe = PrecisionAndClipProbe()
    original = train_module._callbacks

    def with_probe(*args):
        checkpoint, callbacks = original(*args)
        return checkpoint, [*callbacks, probe]

    monkeypatch.setattr(train_module, "_callbacks", with_probe)
    clip = 0.05  # well below the tiny model's gradient norms: every step is clipped
    metrics = run_training(
        compose_config(
            "train",
            tiny(
                tmp_path,
                "run",
                "trainer.precision=bf16-mixed",
                f"trainer.gradient_clip_val={clip}",
                "trainer.accumulate_grad_batches=2",
                "trainer.limit_train_batches=4",
                "trainer.max_epochs=1",
            ),
        )
    )
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert metrics["steps"] == 2  # 4 batches, one optimizer step per 2
    for which in ("best", "last"):
        assert math.isfinite(metrics["test"][which]["t2i"]["mAP"])
    # inside the training steps' forward passes autocast was on, in bfloat16, and the layers
    # really computed in bfloat16
    assert probe.forwards
    assert set(probe.forwards) == {(True, torch.bfloat16, torch.bfloat16)}
    # each optimizer step used gradients clipped to the norm gradient_clip_val (Lightning's
    # clip_grad_norm_ scales them by clip / (norm + 1e-6)), from a larger norm before clipping
    assert len(probe.before_clip) == len(probe.stepped) == metrics["steps"]
    for before, stepped in zip(probe.before_clip, probe.stepped):
        assert before > 2 * clip
        assert stepped <= clip * (1 + 1e-5)
        assert stepped == pytest.approx(clip, rel=1e-4)
    # the module's logged train/grad_norm is the norm before clipping
    logged = [float(r["train/grad_norm"]) for r in rows if r.get("train/grad_norm")]
    assert logged == pytest.approx(probe.before_clip, rel=1e-5)


def test_wandb_offline_logs_without_an_account(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifact staging
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    run_training(
        compose_config(
            "train",
            tiny(
                tmp_path,
                "run",
                "logger=wandb",
                "logger.wandb.mode=offline",
                "trainer.max_epochs=1",
                "report.failures=2",
            ),
        )
    )
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb"))
    # the failing queries' images are real files in the offline run folder
    images = list((offline[0] / "files" / "media" / "images").rglob("*.jpg"))
    assert len(images) >= 1 and all(p.stat().st_size > 100 for p in images)
    # and the table goes out as an artifact that carries its images (not the string "Image")
    staged = [p.read_bytes() for p in (tmp_path / "wandb-data").rglob("*") if p.is_file()]
    assert any(b.startswith(b"\xff\xd8") for b in staged)
    tables = [b for b in staged if b.startswith(b'{"_type": "table"')]
    assert tables and all(b'"Image"]' not in t for t in tables)


def test_device_and_precision_requests_are_checked_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if torch.cuda.device_count() == 0:
        assert main(["train", "trainer.accelerator=gpu", "trainer.devices=4"]) == 2
        assert "this machine has no CUDA GPU" in capsys.readouterr().err
        assert main(["train", "trainer.precision=16-mixed"]) == 2
        assert "needs a GPU" in capsys.readouterr().err
    else:
        wanted = torch.cuda.device_count() + 1
        assert main(["train", "trainer.accelerator=gpu", f"trainer.devices={wanted}"]) == 2
        assert f"asks for {wanted} GPUs" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_resume_refuses_a_checkpoint_of_another_backbone(tmp_path, monkeypatch, capsys):
    base = tiny(tmp_path, "a", "trainer.max_epochs=1")
    run_training(compose_config("train", base))
    other = tiny(
        tmp_path, "b", "trainer.max_epochs=1", "backbone.vision.width=64", "backbone.embed_dim=64"
    )
    run_training(compose_config("train", other))
    shutil.copy(
        tmp_path / "b" / "checkpoints" / "last.ckpt", tmp_path / "a" / "checkpoints" / "last.ckpt"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["train", f"resume={tmp_path / 'a'}"]) == 0  # finished: nothing to do
    assert "is finished (metrics.json); nothing to do" in capsys.readouterr().err
    assert main(["train", f"resume={tmp_path / 'a'}", "resume_finished=true"]) == 2
    err = capsys.readouterr().err
    assert "does not fit this model" in err and "shape" in err
    assert main(["train", f"resume={tmp_path / 'a'}", "backbone.name=x"]) == 2
    assert "cannot change when resuming" in capsys.readouterr().err


def test_atomic_checkpoint_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    assert torch.load(target)["step"] == 1

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    with pytest.raises(TypeError):
        io.save_checkpoint({}, target, storage_options={"x": 1})
