"""`tbps train -m KEY=a,b OTHER=x,y`: a sweep (Hydra's multirun), one run folder per job.

A sweep folder holds ``sweep.json`` (the command and its planned runs) and one run folder per
job, named ``<job number>_<swept key=value,...>``. Jobs run through Hydra's launcher (local and
sequential by default; ``hydra/launcher=slurm`` submits them through hydra-submitit-launcher).
A job that fails is recorded in its folder (``failed.json``) and the sweep goes on. Re-running
the same command continues the same sweep: finished runs are skipped, runs with a
``last.ckpt`` resume, failed starts start again; no run folder is ever overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from tbps.app.report import FAILED_FILE, OVERRIDES_FILE, SWEEP_FILE, run_status
from tbps.errors import ConfigError, one_line

log = logging.getLogger(__name__)

#: keys the sweep sets for every job itself
SWEEP_OWNED = ("run_dir", "resume")


@dataclass
class SweepPlan:
    """The jobs of one sweep command: each job's overrides and run folder name."""

    command: list[str]  # the overrides as given (sweep grammar), without sweep_dir
    hydra_overrides: list[str]  # hydra/... and hydra.... ones (launcher settings)
    jobs: list[list[str]] = field(default_factory=list)  # task overrides of each job
    swept: list[str] = field(default_factory=list)  # the keys that vary

    def run_name(self, number: int, job: Sequence[str]) -> str:
        return run_folder_name(number, [o for o in job if override_key(o) in self.swept])


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_folder_name(number: int, swept: Sequence[str]) -> str:
    """``003_optim.lr=0.0001,seed=2``: the job number and its swept values, safe as a name."""
    words = ",".join(sorted(swept))
    slug = re.sub(r"[^A-Za-z0-9._=,+-]", "_", words)
    if len(slug) > 100:  # long values (paths): keep a readable head and a digest
        slug = slug[:90] + "-" + hashlib.sha1(words.encode()).hexdigest()[:8]
    return f"{number:03d}" + (f"_{slug}" if slug else "")


def plan_sweep(overrides: Sequence[str]) -> SweepPlan:
    """Expand the command's overrides into jobs (Hydra's sweep grammar: ``a,b``, ``range(1,4)``,
    ``choice(...)``, ``glob(...)``); one clear error for a list that parses to nothing."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException

    command = list(overrides)
    for override in command:
        key = override_key(override)
        if key in SWEEP_OWNED:
            raise ConfigError(
                f"{key}= is set per run by the sweep; choose the sweep's folder with sweep_dir=DIR"
            )
    try:
        parsed = OverridesParser.create().parse_overrides(command)
    except OverrideParseException as e:
        raise ConfigError(f"cannot parse the sweep overrides: {str(e).splitlines()[0]}") from e
    task = [o for o in parsed if not o.is_hydra_override()]
    hydra = [o.input_line for o in parsed if o.is_hydra_override()]
    try:
        (jobs,) = BasicSweeper.split_arguments(task, None)
    except HydraException as e:
        raise ConfigError(f"sweep overrides: {e}") from e
    if not jobs or not all(jobs):
        empty = [o.input_line for o in task if o.is_sweep_override()]
        raise ConfigError(
            f"the sweep overrides {' '.join(command) or '(none)'} expand to no run"
            + (f" ({' '.join(empty)} is empty)" if empty else "")
            + "; e.g. tbps train -m seed=1,2,3 optim.lr=1e-4,2e-4"
        )
    swept = sorted({override_key(o.get_key_element()) for o in task if o.is_sweep_override()})
    return SweepPlan(command=command, hydra_overrides=hydra, jobs=jobs, swept=swept)


def find_sweep_dir(plan: SweepPlan, sweep_dir: str | None, runs_dir: str) -> Path:
    """The given ``sweep_dir``, else the newest sweep of the same command under
    ``<runs_dir>/sweeps`` (re-running a command continues it), else a new timestamped one."""
    if sweep_dir:
        path = Path(sweep_dir).expanduser().absolute()
        record = path / SWEEP_FILE
        if record.is_file():
            if json.loads(record.read_text()).get("command") != plan.command:
                raise ConfigError(
                    f"{path} holds another sweep (its command is in {record}); "
                    "choose another sweep_dir"
                )
        elif path.exists() and any(path.iterdir()):
            raise ConfigError(f"sweep folder {path} exists and is not a sweep; choose another")
        return path
    root = Path(runs_dir).expanduser().absolute() / "sweeps"
    for record in sorted(root.glob(f"*/{SWEEP_FILE}"), reverse=True):
        try:
            same = json.loads(record.read_text()).get("command") == plan.command
        except (OSError, json.JSONDecodeError):
            continue
        if same:
            log.info("continuing the sweep of the same command in %s", record.parent)
            return record.parent
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while path.exists():
        path, n = root / f"{stamp}-{n}", n + 1
    return path


def write_sweep_record(path: Path, plan: SweepPlan) -> None:
    names = [plan.run_name(i, job) for i, job in enumerate(plan.jobs)]
    runs = [
        {"run_dir": name, "overrides": job, "status": run_status(path / name)}
        for name, job in zip(names, plan.jobs, strict=True)
    ]
    record = {
        "command": plan.command,
        "hydra_overrides": plan.hydra_overrides,
        "swept": plan.swept,
        "runs": runs,
        "updated": datetime.now().isoformat(timespec="seconds"),
    }
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{SWEEP_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path / SWEEP_FILE)


# -- one job (runs where the launcher puts it: this process, or a SLURM node) ------------------


def _run_name_resolver() -> str:
    """``hydra.sweep.subdir``: the job's folder name, from its number and swept overrides."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    fixed = set(hydra.job.config.override_dirname.exclude_keys)
    swept = [o for o in hydra.overrides.task if override_key(o) not in fixed]
    return run_folder_name(int(hydra.job.num), swept)


if not OmegaConf.has_resolver("tbps_run_name"):
    OmegaConf.register_new_resolver("tbps_run_name", _run_name_resolver)


def sweep_job(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's task function: run (or skip, or resume) one job in its run folder; a failure is
    recorded in ``failed.json`` and returned, so the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    overrides = list(hydra.overrides.task)
    sweep_name = Path(hydra.sweep.dir).name
    return run_job(cfg, run_dir, overrides, sweep_name)


def run_job(cfg: DictConfig, run_dir: Path, overrides: list[str], group: str) -> dict[str, Any]:
    """Skip a finished run, resume one with a last.ckpt, else train in ``run_dir``."""
    from tbps.app.resume import resume_config
    from tbps.app.schema import validate_config
    from tbps.app.train import run_training

    status = run_status(run_dir)
    recorded = run_dir / OVERRIDES_FILE
    try:
        if recorded.is_file() and yaml.safe_load(recorded.read_text()) != overrides:
            raise ConfigError(
                f"{run_dir} holds a run of other overrides ({recorded}); it is left as it is"
            )
        if status == "finished":
            log.info("%s: finished, skipped", run_dir.name)
            return {"run_dir": str(run_dir), "status": "finished", "skipped": True}
        if status == "failed":  # keep the earlier failure's record beside the new attempt
            n = 1
            while (run_dir / f"failed-{n}.json").exists():
                n += 1
            (run_dir / FAILED_FILE).rename(run_dir / f"failed-{n}.json")
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            log.info("%s: resuming from its last.ckpt", run_dir.name)
            cfg = resume_config(run_dir)
        else:
            with open_dict(cfg):
                cfg.run_dir = str(run_dir)
                if "wandb" in cfg.logger.types:
                    cfg.logger.wandb.group = cfg.logger.wandb.get("group") or group
            validate_config("train", cfg)
        metrics = run_training(cfg, overrides)
        return {"run_dir": str(run_dir), "status": "finished", "test": metrics.get("test")}
    except KeyboardInterrupt:
        raise  # stops the sweep; the same command continues it
    except Exception as e:  # noqa: BLE001 - recorded, and the sweep goes on
        message = f"{type(e).__name__}: {one_line(e)}"
        log.error("%s failed: %s (recorded in %s)", run_dir.name, message, FAILED_FILE)
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "error": message,
            "overrides": overrides,
            "time": datetime.now().isoformat(timespec="seconds"),
            "traceback": traceback.format_exc(),
        }
        (run_dir / FAILED_FILE).write_text(json.dumps(record, indent=2))
        return {"run_dir": str(run_dir), "status": "failed", "error": message}


# -- the whole sweep ---------------------------------------------------------------------------


def hydra_sweep_overrides(plan: SweepPlan, sweep_dir: Path) -> list[str]:
    """What Hydra's multirun needs besides the command: where the folders go, how they are
    named, and no logging or .hydra/ folders of Hydra's own (a run folder starts empty)."""
    fixed = sorted({override_key(o) for job in plan.jobs for o in job} - set(plan.swept))
    return [
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${tbps_run_name:}",
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(fixed)}]",
        "hydra.output_subdir=null",
        "hydra.job.chdir=false",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
        *plan.hydra_overrides,
    ]


def run_sweep(
    overrides: Sequence[str], sweep_dir: str | None = None, runs_dir: str = "runs"
) -> tuple[Path, dict[str, int]]:
    """Plan, check every job's config, launch; returns the sweep folder and its plan."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from tbps.app.compose import compose_config, config_error
    from tbps.app.schema import validate_config

    plan = plan_sweep(overrides)
    for job in plan.jobs:  # every job composes and passes the schema before anything runs
        try:
            validate_config("train", compose_config("train", job))
        except ConfigError as e:
            raise ConfigError(f"sweep job {' '.join(job)}: {e}") from e
    if plan.hydra_overrides:  # the launcher's settings compose too (an unknown one: one line)
        compose_config("train", plan.hydra_overrides + plan.jobs[0], with_hydra=True)
    path = find_sweep_dir(plan, sweep_dir, runs_dir)
    write_sweep_record(path, plan)
    log.info("sweep of %d runs in %s", len(plan.jobs), path)
    everything = hydra_sweep_overrides(plan, path) + list(plan.command)
    try:
        with initialize_config_module("tbps.configs", version_base="1.3"):
            GlobalHydra.instance().hydra.multirun(  # type: ignore[union-attr]
                config_name="train",
                task_function=sweep_job,
                overrides=everything,
                with_log_configuration=False,
            )
    except HydraException as e:  # a launcher that cannot start (e.g. no sbatch)
        raise config_error(e, "train", everything) from e
    write_sweep_record(path, plan)
    return path, plan


def sweep_command(args: Sequence[str]) -> int:
    """``tbps train -m ...``: run the sweep, then print its table and write ``report.md`` and the
    plots into the sweep folder. Exit code 0 when every run finished, 1 otherwise."""
    from tbps.app.report import (
        REPLICATE_KEYS,
        collect_runs,
        format_report,
        status_counts,
        write_report,
    )

    sweep_dir, runs_dir, overrides = None, "runs", []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "sweep_dir":
            sweep_dir = value
            continue
        if key == "runs_dir":
            runs_dir = value
        overrides.append(arg)
    path, plan = run_sweep(overrides, sweep_dir, runs_dir)
    group_by = [k for k in REPLICATE_KEYS if k in plan.swept]
    runs = collect_runs([path])
    counts = status_counts(runs)
    print("\n" + format_report(runs, group_by), flush=True)
    written = write_report(runs, path, group_by)
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    print(f"sweep folder: {path} ({summary}); report: {written[0]}")
    return 0 if set(counts) == {"finished"} else 1
