"""Pictures of a report: validation R1 per epoch and training loss per step of each run (a
group's curves in one figure), and the groups' test R1 as bars with std error bars."""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from tbps.app.report import Group, RunResult, group_runs, varying_keys
from tbps.errors import ConfigError

log = logging.getLogger(__name__)

VAL_KEY = "val/t2i/R1"
LOSS_KEY = "train/loss"


def read_curves(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """``{"val": [(epoch, R1)], "loss": [(step, loss)]}`` from the run's CSV logs (the first
    part's ``logs/metrics.csv`` and each resumed part's ``logs/resume-<n>/metrics.csv``)."""
    files = [run_dir / "logs" / "metrics.csv"]
    files += sorted(
        (run_dir / "logs").glob("resume-*/metrics.csv"),
        key=lambda p: int(p.parent.name.split("-")[1]),
    )
    val: dict[float, float] = {}
    loss: dict[float, float] = {}
    for path in files:
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get(VAL_KEY) and row.get("epoch"):  # Lightning counts epochs from 0
                    val[float(row["epoch"]) + 1] = float(row[VAL_KEY])
                if row.get(LOSS_KEY) and row.get("step"):
                    loss[float(row["step"])] = float(row[LOSS_KEY])  # resumed rows replace
    return {"val": sorted(val.items()), "loss": sorted(loss.items())}


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError as e:
        raise ConfigError(
            "plots= needs matplotlib: pip install 'tbps[plots]' (or pip install matplotlib)"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text)[:80] or "all"


def _label(run: RunResult, keys: Sequence[str]) -> str:
    words = [f"{k}={run.overrides[k]}" for k in keys if k in run.overrides]
    return ", ".join(words) or run.run_dir.name


def write_plots(runs: Sequence[RunResult], group_by: Sequence[str], out: str | Path) -> list[Path]:
    """PNG files under ``out``: ``curves_<group>.png`` per group (every run of it: validation R1
    by epoch, training loss by step) and ``test_r1.png`` (the groups' mean best-on-val test
    t2i R1, std error bars). Without ``group_by`` every run is its own bar and all curves share
    one figure."""
    plt = _pyplot()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs, group_by) if group_by else [Group({}, list(runs))]
    varying = varying_keys(runs, exclude=group_by)
    written = []
    for group in groups:
        members = group.runs
        if not members:
            continue
        fig, (ax_val, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
        for run in members:
            curves = read_curves(run.run_dir)
            label = _label(run, list(group_by) or varying)
            if curves["val"]:
                ax_val.plot(*zip(*curves["val"], strict=True), marker="o", label=label)
            if curves["loss"]:
                ax_loss.plot(*zip(*curves["loss"], strict=True), label=label)
        title = ", ".join(f"{k}={v}" for k, v in group.overrides.items() if k in varying)
        ax_val.set(xlabel="epoch", ylabel="val t2i R1 (%)", title=title or "validation R1")
        ax_loss.set(xlabel="step", ylabel="train loss", title="training loss")
        ax_val.xaxis.set_major_locator(_integer_ticks())
        for ax in (ax_val, ax_loss):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"curves_{_slug(title)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    written.append(_bars(plt, runs, groups, group_by, varying, out / "test_r1.png"))
    return written


def _bars(plt, runs, groups, group_by, varying, path: Path) -> Path:
    key = "test/best/t2i/R1"
    if group_by:
        bars = [g for g in groups if g.runs]
        labels = [
            ", ".join(f"{k}={g.overrides[k]}" for k in varying if k in g.overrides) or "all"
            for g in bars
        ]
        means = [g.mean().get(key, 0.0) for g in bars]
        errors = [g.std().get(key) or 0.0 for g in bars]
        title = f"test t2i R1 (best on val)\nmean ± std over {', '.join(group_by)}"
    else:
        done = [r for r in runs if r.finished]
        labels = [_label(r, varying) for r in done]
        means = [r.metrics.get(key, 0.0) for r in done]
        errors = [0.0] * len(done)
        title = "test t2i R1 (best on val)"
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.5))
    positions = range(len(labels))
    ax.bar(positions, means, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_xticks(list(positions), labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="R1 (%)", title=title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
