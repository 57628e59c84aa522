"""Time tbps.evaluation.retrieval_metrics on a CUHK-PEDES-sized test similarity matrix.

python bench/bench_metrics.py [--queries 6156] [--gallery 3074] [--ids 1000] [--threads 2]
"""

import argparse
import time

import numpy as np
import torch

from tbps.evaluation import retrieval_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=6156)
    parser.add_argument("--gallery", type=int, default=3074)
    parser.add_argument("--ids", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    gallery_pids = torch.from_numpy(np.sort(rng.integers(0, args.ids, args.gallery)))
    query_pids = gallery_pids[torch.from_numpy(rng.integers(0, args.gallery, args.queries))]
    sim = torch.randn(args.queries, args.gallery)
    sim += 2.0 * (query_pids[:, None] == gallery_pids[None, :])  # a half-decent model
    retrieval_metrics(sim, query_pids, gallery_pids)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = retrieval_metrics(sim, query_pids, gallery_pids)
        times.append(time.perf_counter() - start)
    print(f"similarity {args.queries} x {args.gallery}, {args.ids} ids, {args.threads} threads")
    print(f"retrieval_metrics: best {min(times):.3f} s, median {np.median(times):.3f} s")
    print({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()})


if __name__ == "__main__":
    main()
