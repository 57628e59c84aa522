"""Search latency of one text query: exact over 100,000 stored embeddings (fp16 and fp32), and
faiss over 1,000,000 generated vectors, with recall@10 against exact and index memory.

    python bench/bench_search.py [--exact 100000] [--faiss 1000000] [--dim 256] [--threads 2]

Vectors are generated with the structure of a person gallery: identities (4 images each) whose
centres lie near a 32-dimensional subspace of the D-dimensional space, plus per-image noise,
L2-normalised; queries are new noisy draws around existing identities. D = 256 is the default
model's (scratch_small) width. "encode + search" adds encoding the caption with scratch_small
(random weights) on the same threads: what `tbps serve` does per request.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tbps.inference.backends import ExactSearch, FaissSearch, recall_at_k


def gallery_vectors(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` gallery vectors and 200 queries (see the module docstring)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((32, dim)).astype(np.float32)
    identities = max(n // 4, 1)
    centres = rng.standard_normal((identities, 32)).astype(np.float32) @ basis
    centres += 0.5 * rng.standard_normal(centres.shape).astype(np.float32) * np.sqrt(32)
    owner = rng.integers(0, identities, n)
    points = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in slices: no n x D temporary besides the result
        part = owner[start : start + 100_000]
        noise = rng.standard_normal((len(part), dim)).astype(np.float32)
        points[start : start + len(part)] = centres[part] + 2.0 * noise
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    asked = rng.integers(0, identities, 200)
    queries = centres[asked] + 2.0 * rng.standard_normal((200, dim)).astype(np.float32)
    return points, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def latency_ms(search, queries: torch.Tensor, repeats: int = 200) -> tuple[float, float]:
    """p50 and p99 of one-query searches, in ms."""
    times = []
    for i in range(repeats):
        q = queries[i % len(queries)].unsqueeze(0)
        start = time.perf_counter()
        search(q)
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def exact_section(n: int, dim: int) -> None:
    from bench_index import scratch_small  # bench/ is on the path of a bench script

    model = scratch_small()
    if model.retrieval_dim != dim:
        raise SystemExit(f"--dim must be scratch_small's {model.retrieval_dim} for the exact part")
    points, queries = gallery_vectors(n, dim)
    queries_t = torch.from_numpy(queries)
    tokens = [model.tokenize([f"a person number {i} in a red jacket"]) for i in range(200)]
    print(f"\nexact search over {n:,} stored embeddings (D={dim}), one query at a time")
    print(
        f"{'storage':<8}{'search p50':>12}{'p99':>9}{'encode+search p50':>20}{'p99':>9}{'MiB':>8}"
    )
    for dtype in (torch.float16, torch.float32):
        search = ExactSearch(torch.from_numpy(points).to(dtype))
        p50, p99 = latency_ms(lambda q, s=search: s.search(q, 10), queries_t)

        calls = [0]

        def end_to_end(q, s=search, calls=calls):
            calls[0] += 1
            t = tokens[calls[0] % len(tokens)]
            with torch.no_grad():
                s.search(model.encode_texts(t["input_ids"], t["attention_mask"]), 10)

        e50, e99 = latency_ms(end_to_end, queries_t)
        name = "fp16" if dtype == torch.float16 else "fp32"
        print(
            f"{name:<8}{p50:>10.2f}ms{p99:>7.2f}ms{e50:>18.2f}ms{e99:>7.2f}ms{search.nbytes / 2**20:>8.0f}"
        )


def faiss_section(n: int, dim: int) -> None:
    points, queries = gallery_vectors(n, dim, seed=1)
    raw = points.nbytes
    queries_t = torch.from_numpy(queries)
    print(f"\nfaiss over {n:,} generated vectors (D={dim}; raw float32 {raw / 2**20:.0f} MiB)")
    start = time.perf_counter()
    search = FaissSearch.build(torch.from_numpy(points))
    built = time.perf_counter() - start
    plan = search.plan
    truth = ExactSearch(torch.from_numpy(points)).search(queries_t, 10)[1].numpy()
    recall = recall_at_k(search.search(queries_t, 10)[1].numpy(), truth)
    p50, p99 = latency_ms(lambda q: search.search(q, 10), queries_t, repeats=1000)
    print(f"plan {plan}")
    print(f"build {built:.1f} s; recall@10 against exact on 200 gallery-like queries: {recall:.3f}")
    print(f"one query: p50 {p50:.3f} ms, p99 {p99:.3f} ms", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.index"
        search.save(path)
        size = path.stat().st_size
        before = rss_now()
        loaded = FaissSearch.load(path, plan)
        resident = rss_now() - before
        assert len(loaded) == n
    print(
        f"index file {size / 2**20:.0f} MiB ({size / raw:.3f}x raw), resident after load "
        f"{resident / 2**20:.0f} MiB ({resident / raw:.3f}x raw)"
    )


def rss_now() -> int:
    """Resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exact", type=int, default=100_000)
    parser.add_argument("--faiss", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        args.faiss = 0
    if args.exact:
        exact_section(args.exact, args.dim)
    if args.faiss:
        faiss_section(args.faiss, args.dim)


if __name__ == "__main__":
    main()
