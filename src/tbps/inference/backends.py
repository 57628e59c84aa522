"""Nearest-neighbour search over unit-norm embeddings: ``exact`` (chunked matrix product and
top-k, fp16 or fp32 storage) and ``faiss`` (HNSW or IVF chosen by size, calibrated to a recall
target against exact search)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tbps.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("exact", "faiss")
STORAGE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
CHUNK_ROWS = 65536
#: up to this many vectors the faiss backend builds an HNSW graph (queries in about a
#: millisecond, 1.14x the vectors' memory; building 1M takes ~10 min on 2 cores), above it an
#: inverted file (IVF-Flat: quick to build, ~1.02x, slower queries)
HNSW_MAX = 2_000_000
#: recall@10 the faiss search breadth is calibrated to, on queries near the stored vectors; a
#: margin above the 0.95 promised for real queries, which sit farther from the data
RECALL_TARGET = 0.97
CALIBRATION_QUERIES = 500
TRAIN_PER_LIST = 40  # k-means training points per inverted list (faiss asks for >= 39)


def top_k(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best (score, id) of each row, best first; equal scores in id order."""
    k = min(k, scores.shape[1])
    best, where = scores.topk(k, dim=1)
    best_ids = ids.gather(1, where) if ids.dim() == 2 else ids[where]
    # topk does not order ties: sort by id, then stably by score
    by_id = best_ids.argsort(dim=1)
    best, best_ids = best.gather(1, by_id), best_ids.gather(1, by_id)
    order = best.argsort(dim=1, descending=True, stable=True)
    return best.gather(1, order), best_ids.gather(1, order)


class ExactSearch:
    """Brute force: ``queries @ vectors.T`` one chunk of rows at a time, merged top-k.

    fp16 storage halves memory and, for one query, the time (the product is memory-bound);
    scores then carry fp16 rounding (about 1e-3). Several queries are multiplied in float32.
    """

    name = "exact"

    def __init__(self, vectors: torch.Tensor) -> None:
        if vectors.dim() != 2:
            raise ValueError(f"vectors must be (N, D), got {tuple(vectors.shape)}")
        self.vectors = vectors.contiguous()

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, D) float queries -> scores (Q, k') float32 and ids (Q, k') int64, k' = min(k, N)."""
        queries = queries.to(self.vectors.device, torch.float32)
        n = len(self)
        best_scores = best_ids = None
        for start in range(0, n, CHUNK_ROWS):
            chunk = self.vectors[start : start + CHUNK_ROWS]
            if queries.shape[0] == 1:  # matrix-vector product in the storage dtype
                scores = torch.mv(chunk, queries[0].to(chunk.dtype)).float().unsqueeze(0)
            else:
                scores = queries @ chunk.float().T
            ids = torch.arange(start, start + chunk.shape[0], device=chunk.device)
            scores, ids = top_k(scores, ids, k)
            if best_scores is not None:
                scores, ids = top_k(
                    torch.cat([best_scores, scores], 1), torch.cat([best_ids, ids], 1), k
                )
            best_scores, best_ids = scores, ids
        assert best_scores is not None and best_ids is not None
        return best_scores, best_ids

    def vector(self, row: int) -> torch.Tensor:
        return self.vectors[row].float()

    @property
    def nbytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size()


def require_faiss():
    """The faiss module, or a ConfigError with the install command."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it found
    try:
        import faiss
    except ImportError as e:
        raise ConfigError(
            "backend=faiss needs faiss: pip install 'tbps[faiss]' (or faiss-cpu / faiss-gpu); "
            "backend=exact needs nothing more"
        ) from e
    return faiss


def faiss_plan(n: int) -> dict[str, Any]:
    """The faiss index for ``n`` vectors: an HNSW graph (M = 16) up to :data:`HNSW_MAX`, an
    inverted file (IVF-Flat, nlist = 4 sqrt(n) rounded to a power of 2) above."""
    if n <= HNSW_MAX:
        return {"type": "hnsw", "M": 16, "ef_construction": 80, "ef_search": 32}
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
    return {"type": "ivf", "nlist": nlist, "nprobe": 8}


def _build_faiss(vectors: np.ndarray, plan: Mapping[str, Any]):
    faiss = require_faiss()
    n, d = vectors.shape
    if plan["type"] == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(plan["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(plan["ef_construction"])
        index.add(vectors)
        return index
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, int(plan["nlist"]), faiss.METRIC_INNER_PRODUCT)
    train = vectors
    sample = TRAIN_PER_LIST * int(plan["nlist"])
    if n > sample:  # k-means needs a few dozen points per list, not all of them
        rows = np.random.default_rng(0).choice(n, sample, replace=False)
        train = vectors[np.sort(rows)]
    index.train(train)
    index.add(vectors)
    index.make_direct_map()  # reconstruct(row): image-to-image search by id
    return index


def _set_search_param(index, plan: Mapping[str, Any], value: int) -> None:
    if plan["type"] == "hnsw":
        index.hnsw.efSearch = int(value)
    else:
        index.nprobe = int(value)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (exact top-k ids) found in the same row of ``found``."""
    hits = [len(set(f.tolist()) & set(t.tolist())) / max(len(t), 1) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


def calibration_queries(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Queries near the data, not on it: stored vectors plus noise of norm 0.5, renormalised
    (a stored vector would trivially find itself)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), min(count, len(vectors)), replace=False)
    noise = rng.standard_normal((len(rows), vectors.shape[1])).astype(np.float32)
    noise *= 0.5 / np.linalg.norm(noise, axis=1, keepdims=True)
    queries = vectors[rows] + noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


class FaissSearch:
    """A faiss index (inner product) over the vectors, with the plan it was built with."""

    name = "faiss"

    def __init__(self, index, plan: Mapping[str, Any]) -> None:
        self.index = index
        self.plan = dict(plan)
        _set_search_param(index, self.plan, self.plan.get("ef_search") or self.plan.get("nprobe"))

    @classmethod
    def build(
        cls, vectors: torch.Tensor, k: int = 10, target: float = RECALL_TARGET
    ) -> FaissSearch:
        """Build the index :func:`faiss_plan` chooses, then raise its search breadth (efSearch
        or nprobe, doubling) until recall@k against exact search reaches ``target`` on
        :func:`calibration_queries`; the plan records the breadth and the recall measured."""
        data = np.ascontiguousarray(vectors.float().cpu().numpy())
        plan = faiss_plan(len(data))
        index = _build_faiss(data, plan)
        queries = calibration_queries(data, CALIBRATION_QUERIES)
        requested, k = k, min(k, len(data))
        exact = ExactSearch(torch.from_numpy(data))
        truth = exact.search(torch.from_numpy(queries), k)[1].numpy()
        key = "ef_search" if plan["type"] == "hnsw" else "nprobe"
        limit = len(data) if plan["type"] == "hnsw" else plan["nlist"]
        breadth = plan[key]
        while True:
            _set_search_param(index, plan, breadth)
            recall = recall_at_k(index.search(queries, k)[1], truth)
            if recall >= target or breadth >= limit:
                break
            breadth = min(breadth * 2, limit)
        plan[key] = int(breadth)
        plan[f"recall_at_{requested}"] = round(recall, 4)
        plan["calibration_queries"] = len(queries)
        log.info(
            "faiss %s: %s=%d, recall@%d %.3f against exact", plan["type"], key, breadth, k, recall
        )
        return cls(index, plan)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`ExactSearch.search`; an id of -1 marks a slot the approximate search left
        empty. The whole gallery (k >= N) is ranked exactly."""
        data = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        if k >= len(self):
            everything = self.index.reconstruct_n(0, len(self))
            return ExactSearch(torch.from_numpy(everything)).search(torch.from_numpy(data), k)
        scores, ids = self.index.search(data, k)
        return torch.from_numpy(scores), torch.from_numpy(ids).long()

    def vector(self, row: int) -> torch.Tensor:
        return torch.from_numpy(self.index.reconstruct(int(row)))

    def save(self, path: Path) -> None:
        require_faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, plan: Mapping[str, Any]) -> FaissSearch:
        return cls(require_faiss().read_index(str(path)), plan)
