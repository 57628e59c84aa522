"""Time `tbps report` over many run folders (target: 100 folders in under 2 s).

python bench/bench_report.py                 # 100 runs: 25 settings x 4 seeds
python bench/bench_report.py --runs 1000 --plots

Writes run folders in the format `tbps train` leaves (overrides.yaml, metrics.json, a CSV log of
a 10-epoch run) into a temporary folder, then times, best of --repeats: reading and grouping in
this process, and the whole command (`python -m tbps report DIR group_by=seed`) in a fresh
process, which includes Python's start, tbps's imports and Hydra's config composition.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tbps.app.report import collect_runs, format_report


def write_runs(root: Path, count: int, seeds: int = 4, epochs: int = 10) -> None:
    for n in range(count):
        setting, seed = divmod(n, seeds)
        words = [f"objectives.citc.weight={0.1 * (setting + 1):.1f}", f"seed={seed}", "debug=none"]
        run = root / f"{n:03d}_{','.join(words[:2])}"
        (run / "logs").mkdir(parents=True)
        (run / "overrides.yaml").write_text(yaml.safe_dump(words))
        (run / "config.yaml").write_text("seed: 0\n")
        values = {m: 50.0 + setting + seed * 0.1 for m in ("R1", "R5", "R10", "mAP", "mINP")}
        test = {w: {"t2i": values, "i2t": values} for w in ("best", "last")}
        (run / "metrics.json").write_text(json.dumps({"test": test, "best_val": {}}))
        with open(run / "logs" / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "step", "train/loss", "val/t2i/R1"])
            for epoch in range(epochs):
                for step in range(epoch * 50, epoch * 50 + 50):
                    writer.writerow([epoch, step, 1.0 / (step + 1), ""])
                writer.writerow([epoch, epoch * 50 + 49, "", float(epoch)])


def best_of(repeats: int, call) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plots", action="store_true", help="also time plots=DIR")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sweep"
        write_runs(root, args.runs)
        library = best_of(
            args.repeats, lambda: format_report(collect_runs([root]), ["seed"], "table")
        )
        command = [sys.executable, "-m", "tbps", "report", str(root), "group_by=seed"]
        cli = best_of(
            args.repeats, lambda: subprocess.run(command, check=True, capture_output=True)
        )
        print(f"{args.runs} run folders")
        print(f"  read + group + format (in process): {library:.3f} s")
        print(f"  tbps report DIR group_by=seed (fresh process): {cli:.3f} s  (target < 2 s)")
        if args.plots:
            plots = Path(tmp) / "plots"
            seconds = best_of(
                1,
                lambda: subprocess.run(
                    [*command, f"plots={plots}"], check=True, capture_output=True
                ),
            )
            print(f"  ... plots={plots.name} ({len(list(plots.iterdir()))} PNGs): {seconds:.3f} s")


if __name__ == "__main__":
    main()
