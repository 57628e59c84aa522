"""Time `tbps train` with its defaults (data generation included) and report peak memory.

    python bench/bench_train_default.py [extra overrides ...]

Runs in a fresh cache and run folder under /tmp unless --keep-cache is given; prints wall
time, peak RSS of the training process and the test metrics from metrics.json.
"""

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    args = sys.argv[1:]
    keep_cache = "--keep-cache" in args
    overrides = [a for a in args if a != "--keep-cache"]
    work = Path(tempfile.mkdtemp(prefix="tbps-bench-"))
    cache = Path.home() / ".cache" / "tbps" if keep_cache else work / "cache"
    run_dir = work / "run"
    cmd = [
        sys.executable,
        "-m",
        "tbps",
        "train",
        f"run_dir={run_dir}",
        f"cache_dir={cache}",
        *overrides,
    ]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if result.returncode != 0:
        sys.exit(f"tbps train failed with exit code {result.returncode}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"\nwall time (process start to exit, data generation included): {wall:.1f} s")
    print(f"peak RSS of the training process: {peak_mib:.0f} MiB")
    for which in ("best", "last"):
        m = metrics["test"].get(which) or {}
        if m:
            t2i = m["t2i"]
            print(
                f"test ({which}) t2i: "
                + ", ".join(f"{k} {t2i[k]:.2f}" for k in ("R1", "R5", "R10", "mAP", "mINP"))
            )
    chance = metrics["chance"]["t2i"]
    print(
        "chance t2i: "
        + ", ".join(f"{k} {chance[k]:.2f}" for k in ("R1", "R5", "R10", "mAP", "mINP"))
    )
    print(f"epochs {metrics['epochs']}, steps {metrics['steps']}, run folder {run_dir}")


if __name__ == "__main__":
    main()
