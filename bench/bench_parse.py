"""Benchmark: parsing a CUHK-PEDES-sized annotation file (python bench/bench_parse.py).

Writes a synthetic ``reid_raw.json`` with 40,000 image records and 80,000 captions (plus their
``processed_tokens``, as the real file has) and times ``parse_dataset``. Target: < 2 s.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from tbps.data.formats import parse_dataset

_VOCABULARY = (
    "the man woman is wearing a black white red blue grey shirt jacket pants jeans shoes "
    "backpack bag carrying walking with long short hair dark light coat skirt and on his her"
)
WORDS = _VOCABULARY.split()


def caption(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 40))).capitalize() + "."


def write_cuhk_annotations(root: Path, images: int, captions: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    records = []
    for i in range(images):
        pid = i // 3 + 1
        split = "train" if pid <= int(images / 3 * 0.85) else ("val" if pid % 2 else "test")
        caps = [caption(rng) for _ in range(captions)]
        records.append(
            {
                "split": split,
                "captions": caps,
                "file_path": f"CUHK{1 + i % 3:02d}/{pid:05d}_{i % 3}.jpg",
                "processed_tokens": [c.lower().rstrip(".").split() for c in caps],
                "id": pid,
            }
        )
    (root / "reid_raw.json").write_text(json.dumps(records))
    with open(root / "annotations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "person_id", "caption", "split"])
        for r in records:
            for c in r["captions"]:
                writer.writerow([r["file_path"], r["id"], c, r["split"]])


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=40_000)
    ap.add_argument("--captions-per-image", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tbps_bench_parse_"))
    try:
        write_cuhk_annotations(tmp, args.images, args.captions_per_image)
        size_mb = (tmp / "reid_raw.json").stat().st_size / 2**20
        seconds, ds = best_of(args.repeats, lambda: parse_dataset("cuhk_pedes", tmp))
        n_images = sum(len(v) for v in ds.splits.values())
        n_captions = sum(len(i.captions) for v in ds.splits.values() for i in v)
        print(f"reid_raw.json: {size_mb:.1f} MB, {n_images:,} images, {n_captions:,} captions")
        print(f"cuhk_pedes parse: {seconds:.2f} s (best of {args.repeats}; target < 2 s)")
        seconds, _ = best_of(args.repeats, lambda: parse_dataset("generic", tmp))
        print(f"generic CSV parse, same records: {seconds:.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
