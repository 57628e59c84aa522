"""Benchmark: time to generate the default synthetic dataset (python bench/bench_synth.py)."""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

from tbps.data import synthetic as S


def stage_breakdown(config: S.SynthConfig, n: int = 300) -> dict[str, float]:
    """Milliseconds per image spent rendering, captioning and JPEG-encoding (first ``n`` ids)."""
    persons = S.sample_identities(config)[:n]
    render = caption = encode = 0.0
    for p in persons:
        rng = S.image_rng(config.seed, p.pid, 0)
        shot = S.sample_shot(rng)
        t0 = time.perf_counter()
        img = S.render_image(p, shot, rng, config.image_height, config.image_width)
        t1 = time.perf_counter()
        S.make_captions(p, shot, config.captions_per_image, config.seed, 0, config.layout == "vn3k")
        t2 = time.perf_counter()
        img.save(io.BytesIO(), format="JPEG", quality=config.jpeg_quality)
        t3 = time.perf_counter()
        render, caption, encode = render + t1 - t0, caption + t2 - t1, encode + t3 - t2
    k = 1000.0 / len(persons)
    return {"render_ms": render * k, "captions_ms": caption * k, "jpeg_ms": encode * k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-identities", type=int, default=1000)
    ap.add_argument("--layout", default="cuhk", choices=S.LAYOUTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="full generations to time")
    ap.add_argument("--keep", type=Path, default=None, help="write here instead of a temp dir")
    args = ap.parse_args()
    config = S.SynthConfig(num_identities=args.num_identities, layout=args.layout, seed=args.seed)

    times = []
    for _ in range(args.repeats):
        tmp = Path(tempfile.mkdtemp(prefix="tbps_bench_synth_"))
        out = args.keep if args.keep is not None else tmp / "ds"
        t0 = time.perf_counter()
        summary = S.generate_synthetic_dataset(out, config, progress=False)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(tmp, ignore_errors=True)
        if args.keep is not None:
            break
    images = sum(summary[s]["images"] for s in ("train", "val", "test"))
    captions = sum(summary[s]["captions"] for s in ("train", "val", "test"))
    best = min(times)
    print(f"config: {config}")
    print(
        f"identities {config.num_identities}  images {images}  captions {captions}  "
        f"(train/val/test ids {summary['train']['ids']}/{summary['val']['ids']}/{summary['test']['ids']})"
    )
    print(f"total seconds: {best:.2f}  (all runs: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"images/s: {images / best:.0f}")
    stages = stage_breakdown(config)
    print("per image: " + "  ".join(f"{k} {v:.2f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
