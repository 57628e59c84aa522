"""`tbps report PATH... [group_by=KEY,...] [format=...] [plots=DIR]`: the results of run folders
and sweeps as one table, with groups' mean ± std.

A run's overrides come from its ``overrides.yaml`` (written by ``tbps train``), its metrics from
``metrics.json``; no W&B is needed. Runs that have not finished are listed as such and never
averaged. Reads JSON and YAML only (no torch, no OmegaConf), so a hundred folders take well
under a second.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tbps.errors import ConfigError

log = logging.getLogger(__name__)

#: the files of a sweep and of a run folder that the report reads (tbps train and the sweep
#: write them: they import these names)
SWEEP_FILE = "sweep.json"
FAILED_FILE = "failed.json"
OVERRIDES_FILE = "overrides.yaml"
RUN_MARKERS = ("config.yaml", "metrics.json", FAILED_FILE, OVERRIDES_FILE)
#: the columns of the text and markdown tables (CSV and JSON carry every metric)
TABLE_METRICS = ("R1", "R5", "R10", "mAP", "mINP")
#: keys a sweep's report.md averages over when the sweep varies them (replicates)
REPLICATE_KEYS = ("seed", "data.fold_id")
FORMATS = ("table", "markdown", "csv", "json")

try:
    _LOADER = yaml.CSafeLoader
except AttributeError:  # PyYAML without libyaml
    _LOADER = yaml.SafeLoader


@dataclass
class RunResult:
    """One run folder: its status, overrides (key -> value) and flat metrics."""

    run_dir: Path
    status: str  # finished | failed | resumable | pending
    overrides: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass
class Group:
    """Finished runs that differ only in the ``group_by`` keys."""

    overrides: dict[str, Any]
    runs: list[RunResult]
    unfinished: int = 0

    @property
    def n(self) -> int:
        return len(self.runs)

    def mean(self) -> dict[str, float]:
        keys = sorted({k for r in self.runs for k in r.metrics})
        return {k: _mean([r.metrics[k] for r in self.runs if k in r.metrics]) for k in keys}

    def std(self) -> dict[str, float | None]:
        """Sample standard deviation (n - 1); None for a single run."""
        keys = sorted({k for r in self.runs for k in r.metrics})
        return {k: _std([r.metrics[k] for r in self.runs if k in r.metrics]) for k in keys}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


# -- reading -----------------------------------------------------------------------------------


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def parse_overrides(words: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=1e-4", "+x=[1,2]"]`` -> ``{"optim.lr": 0.0001, "x": [1, 2]}``."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, value = str(word).partition("=")
        if not sep:
            continue
        try:
            parsed = yaml.load(value, Loader=_LOADER) if value else None
        except yaml.YAMLError:
            parsed = value
        out[key.lstrip("+~")] = parsed
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``metrics.json`` -> ``{"test/best/t2i/R1": ..., "val/best/t2i/R1": ...}`` (numbers only)."""
    flat: dict[str, float] = {}
    for which, tasks in (metrics.get("test") or {}).items():
        for task, values in (tasks or {}).items():
            for name, value in (values or {}).items():
                if name != "num_queries" and isinstance(value, int | float):
                    flat[f"test/{which}/{task}/{name}"] = float(value)
    best_val = (metrics.get("best_val") or {}).get("val/t2i/R1")
    if isinstance(best_val, int | float):
        flat["val/best/t2i/R1"] = float(best_val)
    return flat


def read_run(path: Path, planned: Sequence[str] | None = None) -> RunResult:
    """One run folder (``planned``: the overrides a sweep gave it, for a run not started)."""
    words: Sequence[str] = planned or []
    overrides_file = path / OVERRIDES_FILE
    if overrides_file.is_file():
        words = yaml.load(overrides_file.read_text(), Loader=_LOADER) or []
    result = RunResult(path, run_status(path), parse_overrides(words))
    if result.status == "finished":
        result.metrics = flat_metrics(_read_json(path / "metrics.json") or {})
    elif result.status == "failed":
        result.error = (_read_json(path / FAILED_FILE) or {}).get("error", "unreadable record")
    return result


def run_status(run_dir: Path) -> str:
    """finished (metrics.json) | failed (failed.json) | resumable (last.ckpt) | pending."""
    if (run_dir / "metrics.json").is_file():
        return "finished"
    if (run_dir / FAILED_FILE).is_file():
        return "failed"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return "resumable"
    return "pending"


def status_counts(runs: Sequence[RunResult]) -> dict[str, int]:
    """``{"finished": 3, "failed": 1}``, in the order the statuses first appear."""
    statuses = [r.status for r in runs]
    return {s: statuses.count(s) for s in dict.fromkeys(statuses)}


def collect_runs(paths: Sequence[str | Path]) -> list[RunResult]:
    """Run folders, sweep folders (their planned runs, in order), or folders holding either."""
    if not paths:
        raise ConfigError("tbps report needs at least one run or sweep folder: tbps report DIR ...")
    runs: list[RunResult] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{path}: no such folder (expected a run or sweep folder)")
        found = _runs_in(path.absolute())
        if not found:
            raise ConfigError(
                f"{path} is not a run folder (no config.yaml, metrics.json or overrides.yaml) "
                f"nor a sweep folder (no {SWEEP_FILE}), and holds none"
            )
        for run in found:
            if run.run_dir not in seen:
                seen.add(run.run_dir)
                runs.append(run)
    return runs


def _runs_in(path: Path, depth: int = 3) -> list[RunResult]:
    record = path / SWEEP_FILE
    if record.is_file():
        sweep = _read_json(record)
        if sweep is None:
            raise ConfigError(f"{record}: not valid JSON (a sweep record)")
        return [read_run(path / r["run_dir"], r.get("overrides")) for r in sweep.get("runs", [])]
    if is_run_folder(path):
        return [read_run(path)]
    if depth == 0:
        return []
    runs: list[RunResult] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        runs.extend(_runs_in(child, depth - 1))
    return runs


# -- grouping ----------------------------------------------------------------------------------


def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def group_runs(runs: Sequence[RunResult], group_by: Sequence[str]) -> list[Group]:
    """Groups of the runs that differ only in the ``group_by`` keys (finished runs averaged,
    the others counted); one clear error for a key no run has."""
    known = sorted({k for r in runs for k in r.overrides})
    for key in group_by:
        if key not in known:
            raise ConfigError(
                f"group_by key {key!r} is in no run's overrides; the runs' keys: "
                f"{', '.join(known) or '(none)'}"
            )
    groups: dict[str, Group] = {}
    for run in runs:
        rest = {k: v for k, v in sorted(run.overrides.items()) if k not in group_by}
        group = groups.setdefault(_hashable(rest), Group(rest, []))
        if run.finished:
            group.runs.append(run)
        else:
            group.unfinished += 1
    return list(groups.values())


def varying_keys(runs: Sequence[RunResult], exclude: Sequence[str] = ()) -> list[str]:
    """Override keys whose value is not the same in every run (the table's columns)."""
    keys = sorted({k for r in runs for k in r.overrides} - set(exclude))
    missing = object()
    return [k for k in keys if len({_hashable(r.overrides.get(k, missing)) for r in runs}) > 1]


def common_overrides(runs: Sequence[RunResult]) -> dict[str, Any]:
    varying = set(varying_keys(runs))
    first = runs[0].overrides if runs else {}
    return {k: v for k, v in first.items() if k not in varying}


# -- output ------------------------------------------------------------------------------------


def report_json(runs: Sequence[RunResult], groups: Sequence[Group] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "runs": [
            {
                "run_dir": str(r.run_dir),
                "status": r.status,
                "overrides": r.overrides,
                "metrics": r.metrics,
                **({"error": r.error} if r.error else {}),
            }
            for r in runs
        ]
    }
    if groups is not None:
        out["groups"] = [
            {
                "overrides": g.overrides,
                "n": g.n,
                "unfinished": g.unfinished,
                "mean": g.mean() if g.runs else {},
                "std": g.std() if g.runs else {},
                "runs": [str(r.run_dir) for r in g.runs],
            }
            for g in groups
        ]
    return out


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return value if isinstance(value, str) else json.dumps(value)


def _run_label(run: RunResult, runs: Sequence[RunResult]) -> str:
    """The folder name, with its parent when names repeat (timestamped runs of two names)."""
    names = [r.run_dir.name for r in runs]
    if names.count(run.run_dir.name) > 1:
        return f"{run.run_dir.parent.name}/{run.run_dir.name}"
    return run.run_dir.name


def run_rows(runs: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
    keys = varying_keys(runs)
    header = ["run", "status", *keys]
    header += [f"{w} {m}" for w in ("best", "last") for m in TABLE_METRICS]
    rows = []
    for run in runs:
        row = [_run_label(run, runs), run.status]
        row += [_show(run.overrides[k]) if k in run.overrides else "-" for k in keys]
        for which in ("best", "last"):
            for m in TABLE_METRICS:
                value = run.metrics.get(f"test/{which}/t2i/{m}")
                row.append("-" if value is None else f"{value:.2f}")
        rows.append(row)
    return header, rows


def group_rows(
    groups: Sequence[Group], runs: Sequence[RunResult], group_by: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    keys = varying_keys(runs, exclude=group_by)
    header = [*keys, "n"] + [f"{w} {m}" for w in ("best", "last") for m in TABLE_METRICS]
    rows = []
    for g in groups:
        row = [_show(g.overrides[k]) if k in g.overrides else "-" for k in keys]
        row.append(f"{g.n}" + (f" (+{g.unfinished} unfinished)" if g.unfinished else ""))
        mean, std = (g.mean(), g.std()) if g.runs else ({}, {})
        for which in ("best", "last"):
            for m in TABLE_METRICS:
                key = f"test/{which}/t2i/{m}"
                if key not in mean:
                    row.append("-")
                elif std.get(key) is None:
                    row.append(f"{mean[key]:.2f}")
                else:
                    row.append(f"{mean[key]:.2f} ± {std[key]:.2f}")
        rows.append(row)
    return header, rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def cells(row: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *map(cells, rows)])


def format_report(
    runs: Sequence[RunResult], group_by: Sequence[str] = (), fmt: str = "table"
) -> str:
    """The report of ``runs`` in ``fmt`` (table | markdown | csv | json)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}; valid: {', '.join(FORMATS)}")
    groups = group_runs(runs, group_by) if group_by else None
    if fmt == "json":
        return json.dumps(report_json(runs, groups), indent=2, default=str)
    if fmt == "csv":
        return _csv(runs)
    render = _markdown_table if fmt == "markdown" else _text_table
    parts = []
    common = common_overrides(runs) if len(runs) > 1 else {}
    if common:
        words = " ".join(f"{k}={_show(v)}" for k, v in common.items())
        parts.append(f"common overrides: {'`' + words + '`' if fmt == 'markdown' else words}")
    parts.append(render(*run_rows(runs)))
    counts = status_counts(runs)
    parts.append(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for run in runs:
        if run.error:
            parts.append(f"{_run_label(run, runs)} failed: {run.error}")
    if groups is not None:
        title = f"mean ± std (sample) over {', '.join(group_by)}; unfinished runs not averaged"
        parts.append(("### " if fmt == "markdown" else "") + title)
        parts.append(render(*group_rows(groups, runs, group_by)))
    return "\n\n".join(parts)


def _csv(runs: Sequence[RunResult]) -> str:
    keys = sorted({k for r in runs for k in r.overrides})
    metrics = sorted({k for r in runs for k in r.metrics})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run_dir", "status", *keys, *metrics])
    for r in runs:
        writer.writerow(
            [str(r.run_dir), r.status]
            + [_show(r.overrides[k]) if k in r.overrides else "" for k in keys]
            + [r.metrics.get(m, "") for m in metrics]
        )
    return buffer.getvalue()


def split_keys(value: Any) -> list[str]:
    """``group_by=seed,data.fold_id`` (verbatim text or a list) -> ``["seed", "data.fold_id"]``."""
    if value is None:
        return []
    words = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [w.strip() for w in words if w.strip()]


def write_report(
    runs: Sequence[RunResult], out: Path, group_by: Sequence[str] = (), plots: bool = True
) -> list[Path]:
    """``report.md`` (and the plots, when matplotlib is there) into ``out``."""
    body = format_report(runs, group_by, "markdown")
    written = []
    if plots:
        try:
            from tbps.app.plots import write_plots

            written = write_plots(runs, group_by, out / "plots")
        except ConfigError as e:  # matplotlib missing: the table still gets written
            log.warning("no plots: %s", e)
    pictures = "\n".join(f"![{p.stem}](plots/{p.name})" for p in written)
    (out / "report.md").write_text(
        f"# Report of {out.name}\n\n{body}\n" + (f"\n{pictures}\n" if pictures else "")
    )
    return [out / "report.md", *written]


def run_report(cfg: Any) -> None:
    """``tbps report``: print the table; ``plots=DIR`` also writes the pictures."""
    group_by = split_keys(cfg.group_by)
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r}; valid: {', '.join(FORMATS)}")
    runs = collect_runs(list(cfg.paths))
    print(format_report(runs, group_by, cfg.format))
    if cfg.plots:
        from tbps.app.plots import write_plots

        for path in write_plots(runs, group_by, cfg.plots):
            log.info("wrote %s", path)
