"""`tbps clean`: free disk space in a runs folder (a dry run unless told otherwise).

A run folder holds ``checkpoints/``; it is *finished* when ``metrics.json`` exists (written
after the final test), else *unfinished* (resumable from ``checkpoints/last.ckpt``).
Finished runs lose ``last.ckpt`` (``best.ckpt`` is what evaluation and export use; it is kept
unless the run scores below ``min_score``). A run whose best validation score is below
``min_score`` loses all its checkpoints. Unfinished runs are left alone unless
``include_unfinished=true``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from tbps.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """What ``tbps clean`` does to one run folder."""

    run_dir: Path
    finished: bool
    best_score: float | None
    delete: list[Path] = field(default_factory=list)
    reason: str = "kept"

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.delete if p.is_file())


def find_runs(runs_dir: Path) -> list[Path]:
    """Run folders under ``runs_dir`` (any depth): those with a ``checkpoints`` folder."""
    return sorted(p.parent for p in runs_dir.rglob("checkpoints") if p.is_dir())


def _best_score(run_dir: Path) -> float | None:
    """The best ``val/t2i/R1``: from metrics.json, else from a checkpoint's callback state."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            value = json.loads(metrics.read_text()).get("best_val", {}).get("val/t2i/R1")
        except (OSError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable (%s); its score is unknown", metrics, e)
            return None
        return None if value is None else float(value)
    for name in ("last.ckpt", "best.ckpt"):
        path = run_dir / "checkpoints" / name
        if not path.is_file():
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint: its score is unknown
            log.warning("%s: unreadable (%s)", path, e)
            continue
        for key, state in ckpt.get("callbacks", {}).items():
            if "ModelCheckpoint" in key and "val/t2i/R1" in key:  # the best-on-val one
                score = state.get("best_model_score")
                return None if score is None else float(score)
    return None


def plan_run(run_dir: Path, min_score: float | None, include_unfinished: bool) -> RunPlan:
    """Decide what to delete in one run folder."""
    checkpoints = run_dir / "checkpoints"
    finished = (run_dir / "metrics.json").is_file()
    score = _best_score(run_dir)
    plan = RunPlan(run_dir, finished, score)
    files = sorted(p for p in checkpoints.glob("*.ckpt") if p.is_file())
    if not finished and not include_unfinished:
        plan.reason = "unfinished (resumable): kept; include_unfinished=true to clean it"
        return plan
    if min_score is not None and score is not None and score < min_score:
        plan.delete = files
        plan.reason = f"best val/t2i/R1 {score:.2f} < min_score {min_score:g}: all checkpoints"
        return plan
    last, best = checkpoints / "last.ckpt", checkpoints / "best.ckpt"
    if finished and last.is_file():
        if best.is_file():
            plan.delete = [last]
            plan.reason = "finished: last.ckpt (best.ckpt kept)"
        else:
            plan.reason = "finished, but no best.ckpt: last.ckpt kept"
    return plan


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def run_clean(cfg: DictConfig) -> list[RunPlan]:
    """List (dry run, the default) or delete what the rules select; print what is freed."""
    runs_dir = Path(cfg.runs_dir).expanduser()
    if not runs_dir.is_dir():
        raise ConfigError(f"runs_dir={runs_dir} is not a folder")
    min_score = None if cfg.min_score is None else float(cfg.min_score)
    plans = [plan_run(r, min_score, cfg.include_unfinished) for r in find_runs(runs_dir)]
    if not plans:
        print(f"no run folders (with checkpoints/) under {runs_dir}")
        return plans
    width = max(len(str(p.run_dir.relative_to(runs_dir))) for p in plans) + 2
    total = 0
    for plan in plans:
        score = "-" if plan.best_score is None else f"{plan.best_score:.2f}"
        size = plan.size
        total += size
        name = str(plan.run_dir.relative_to(runs_dir))
        print(f"{name:<{width}}R1 {score:>6}  {_mib(size):>12}  {plan.reason}")
        if not cfg.dry_run:
            for path in plan.delete:
                path.unlink(missing_ok=True)
                log.info("deleted %s", path)
    if cfg.dry_run:
        print(f"dry run: {_mib(total)} would be freed; run again with dry_run=false to delete")
    else:
        print(f"freed {_mib(total)}")
    return plans
