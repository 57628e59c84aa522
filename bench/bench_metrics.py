"""Time tbps.evaluation.retrieval_metrics against an IRRA-style full-sort ``rank`` peer.

python bench/bench_metrics.py                     # CUHK-PEDES test size: 6156 x 3074, 1000 ids
python bench/bench_metrics.py --preset icfg       # ICFG-PEDES test size: 19848 x 19848, 5-35/id
python bench/bench_metrics.py --scores trained    # scores of a model in the published range
python bench/bench_metrics.py --queries 19848 --gallery 19848 --ids 3100 --shuffle

Options: --threads 2, --repeats 5, --no-peer / --no-baseline (skip the slow ones; the peer is
off with --preset icfg unless --peer), --baseline-rev
(git revision of the older metrics.py timed as the baseline). Similarities are a "half-decent
model": N(0, 1) plus 2 for the correct pairs (R1 ~23), or with --scores trained the cosines of
noisy embeddings around one prototype per identity (at CUHK size R1 78, mAP 61, mINP 31;
IRRA reports 73.4 / 66.1 / 50.2 on CUHK-PEDES).
Extra memory = peak RSS growth during one call.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import subprocess
import threading
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tbps.evaluation import retrieval_metrics

#: metrics.py before the cell-histogram ranking (per-query counting / sorting of the positives).
BASELINE_REV = "66c7da682b0c129cb65002abe5732ee4514f4f07"


def irra_style_rank(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """The usual TBPS evaluation (IRRA's ``rank``): a full descending sort of every row.

    Stable sort, so that ties are broken by gallery index as in ``retrieval_metrics``; every
    query must have a positive.
    """
    order = torch.argsort(similarity, dim=1, descending=True, stable=True)
    matches = gallery_pids[order] == query_pids[:, None]  # (Q, G) bool, in ranked order
    hits = matches.cumsum(1)
    cmc = hits.clamp(max=1)
    out = {f"R{k}": 100.0 * cmc[:, min(k, cmc.shape[1]) - 1].double().mean().item() for k in ks}
    num_pos = hits[:, -1].double()
    positions = torch.arange(1, matches.shape[1] + 1, dtype=torch.float64)
    ap = (hits / positions * matches).sum(1) / num_pos
    last = (matches * positions).amax(1)
    out["mAP"] = 100.0 * ap.mean().item()
    out["mINP"] = 100.0 * (num_pos / last).mean().item()
    return out


def load_baseline(rev: str) -> Callable | None:
    """``retrieval_metrics`` of src/tbps/evaluation/metrics.py at git revision ``rev``."""
    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:src/tbps/evaluation/metrics.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("baseline_metrics")
    exec(compile(source, f"metrics.py@{rev[:7]}", "exec"), module.__dict__)
    return module.retrieval_metrics


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_growth(fn: Callable[[], object]) -> tuple[object, int]:
    """Run ``fn`` and return its result and the peak RSS growth (sampled every millisecond)."""
    with contextlib.suppress(OSError):  # give freed heap back first: an honest baseline
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    base, peak, done = rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return result, max(peak[0], rss_bytes()) - base


def timed(fn: Callable[[], object], repeats: int) -> tuple[object, float, float]:
    """Result, best and median seconds of ``repeats`` calls (after one warm-up call)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, min(times), float(np.median(times))


def make_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    if args.preset == "icfg":  # 5-35 images per id, one caption per image, shuffled
        sizes = []
        while sum(sizes) < args.gallery:
            sizes.append(int(rng.integers(5, 36)))
        gallery_pids = np.repeat(np.arange(len(sizes)), sizes)[: args.gallery]
        query_pids = rng.permutation(gallery_pids)[: args.queries]
        if len(query_pids) < args.queries:
            query_pids = gallery_pids[rng.integers(0, args.gallery, args.queries)]
    else:
        gallery_pids = np.sort(rng.integers(0, args.ids, args.gallery))
        query_pids = gallery_pids[rng.integers(0, args.gallery, args.queries)]
    if args.shuffle:
        gallery_pids = rng.permutation(gallery_pids)
    gp, qp = torch.from_numpy(gallery_pids), torch.from_numpy(query_pids)
    generator = torch.Generator().manual_seed(0)
    if args.scores == "trained":  # cosines of embeddings around one prototype per identity
        dim, noise, normalize = 256, 1.95 / 256**0.5, torch.nn.functional.normalize
        protos = normalize(torch.randn(int(gp.max()) + 1, dim, generator=generator), dim=1)
        images = protos[gp] + noise * torch.randn(len(gp), dim, generator=generator)
        texts = protos[qp] + noise * torch.randn(len(qp), dim, generator=generator)
        return normalize(texts, dim=1) @ normalize(images, dim=1).t(), qp, gp
    sim = torch.randn(args.queries, args.gallery, generator=generator)
    for begin in range(0, args.queries, 1024):  # a half-decent model, without a (Q, G) temporary
        rows = slice(begin, begin + 1024)
        sim[rows] += 2.0 * (qp[rows, None] == gp[None, :])
    return sim, qp, gp


def check_equal(name: str, got: dict, want: dict, tol: float = 1e-9) -> None:
    diff = max(abs(got[k] - want[k]) for k in want if isinstance(want[k], float))
    assert diff <= tol, f"{name} differs from retrieval_metrics: {want} vs {got}"
    print(f"  {name}: equal (max |difference| {diff:.1e} percentage points)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["cuhk", "icfg"], default="cuhk")
    parser.add_argument("--queries", type=int)
    parser.add_argument("--gallery", type=int)
    parser.add_argument("--ids", type=int)
    parser.add_argument("--shuffle", action="store_true", help="gallery not sorted by pid")
    parser.add_argument(
        "--scores",
        choices=["weak", "trained"],
        default="weak",
        help="weak: N(0, 1) + 2 for correct pairs (R1 ~23); trained: cosines of noisy identity "
        "embeddings, about a published model's numbers (CUHK size: R1 78, mAP 61, mINP 31)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="skip the IRRA-style peer")
    parser.add_argument("--peer", action="store_true", help="run the peer with --preset icfg")
    parser.add_argument("--no-baseline", action="store_true", help="skip the old metrics.py")
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    args = parser.parse_args()
    icfg = args.preset == "icfg"
    args.queries = args.queries or (19848 if icfg else 6156)
    args.gallery = args.gallery or (19848 if icfg else 3074)
    args.ids = args.ids or 1000
    args.shuffle = args.shuffle or icfg
    torch.set_num_threads(args.threads)
    sim, qp, gp = make_data(args)
    ids = len(torch.unique(gp))
    pos = torch.bincount(gp, minlength=int(qp.max()) + 1)[qp]
    print(
        f"similarity {args.queries} x {args.gallery} ({sim.numel() * 4 / 1e6:.0f} MB), {ids} ids, "
        f"positives per query: mean {pos.double().mean():.1f}, max {int(pos.max())}; "
        f"gallery {'shuffled' if args.shuffle else 'sorted by pid'}; {args.scores} scores; "
        f"{args.threads} threads"
    )

    ours, growth = peak_rss_growth(lambda: retrieval_metrics(sim, qp, gp))
    ours, best, median = timed(lambda: retrieval_metrics(sim, qp, gp), args.repeats)
    print(f"retrieval_metrics:   best {best:.3f} s, median {median:.3f} s")
    print(
        f"  extra memory (peak RSS growth): {growth / 1e6:.0f} MB "
        f"= {growth / (sim.numel() * 4):.2f} x the similarity matrix"
    )
    print(" ", {k: round(v, 4) if isinstance(v, float) else v for k, v in ours.items()})

    if not args.no_baseline:
        baseline = load_baseline(args.baseline_rev)
        if baseline is None:
            print(f"baseline: metrics.py@{args.baseline_rev[:7]} not available (no git)")
        else:
            old, old_best, _ = timed(lambda: baseline(sim, qp, gp), 1 if icfg else args.repeats)
            print(
                f"metrics.py@{args.baseline_rev[:7]}: best {old_best:.3f} s "
                f"-> {old_best / best:.1f}x slower"
            )
            check_equal("baseline", old, ours)

    if icfg and not args.peer:
        print("IRRA-style rank: skipped at this size (about 13 GB); --peer to run it")
    elif not args.no_peer:
        peer, peer_best, _ = timed(
            lambda: irra_style_rank(sim, qp, gp), 1 if icfg else min(args.repeats, 3)
        )
        print(f"IRRA-style rank:     best {peer_best:.3f} s -> ratio {peer_best / best:.1f}x")
        check_equal("IRRA-style peer", peer, ours)


if __name__ == "__main__":
    main()
