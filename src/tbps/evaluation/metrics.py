"""Retrieval metrics (R@K, mAP, mINP), vectorised and chunked over queries.

Only the ranks of the correct gallery items are computed. For query q with correct items
``j_1..j_n`` ranked ``r_1 < ... < r_n`` (1-based, ties broken by gallery index):

    R@K   = 1[r_1 <= K]
    AP_q  = (1/n) * sum_i i / r_i
    INP_q = n / r_n

Each is averaged over the queries that have at least one correct item and reported in percent;
queries without any correct item are excluded and counted in ``num_excluded``. Everything runs
on the device of the similarities (or embeddings): a GPU ranks a large split in milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Elements of the temporary (queries x positives x gallery) comparison tensor per chunk.
_CHUNK_ELEMENTS = 1 << 24
#: Above this many positives per query, ranking by a full sort is cheaper than counting.
_MAX_POSITIVES_FOR_COUNTING = 16


def _as_tensor(x: torch.Tensor | np.ndarray | Sequence, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a tensor, array or sequence of numbers ({e})") from e


def _order_keys(similarity: torch.Tensor) -> torch.Tensor:
    """Map a float32 (Q, G) matrix to unique int64 keys with the ranking order.

    A larger key ranks earlier: higher similarity first, then lower gallery index (stable ties).
    """
    sim = similarity.float().contiguous() + 0.0  # + 0.0 turns -0.0 into +0.0
    bits = sim.view(torch.int32)
    monotone = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32 order == float order
    gallery_size = sim.shape[1]
    tie_break = torch.arange(gallery_size - 1, -1, -1, dtype=torch.int64, device=sim.device)
    return monotone.to(torch.int64) * (1 << 32) + tie_break


def _positive_ranks_by_counting(keys: torch.Tensor, pos_idx: torch.Tensor) -> torch.Tensor:
    """Rank of each positive = 1 + number of gallery items with a larger key."""
    pos_keys = keys.gather(1, pos_idx)  # (c, P)
    return (keys[:, None, :] > pos_keys[:, :, None]).sum(-1, dtype=torch.int32).long() + 1


def _positive_ranks_by_sorting(keys: torch.Tensor, pos_idx: torch.Tensor) -> torch.Tensor:
    order = keys.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(1, keys.shape[1] + 1, device=keys.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    return ranks.gather(1, pos_idx)


def _chunk_end(sorted_num_pos: torch.Tensor, begin: int, num_gallery: int) -> int:
    """End of the query chunk starting at ``begin`` whose comparison tensor fits the budget."""
    total = sorted_num_pos.numel()
    size = max(1, _CHUNK_ELEMENTS // (int(sorted_num_pos[begin]) * num_gallery))
    end = min(begin + size, total)
    # num_pos grows along the chunk (queries are sorted by it): shrink until the last fits.
    while end - begin > 1 and (end - begin) * int(sorted_num_pos[end - 1]) * num_gallery > (
        2 * _CHUNK_ELEMENTS
    ):
        end = begin + (end - begin) // 2
    return end


def retrieval_metrics(
    similarity: torch.Tensor | np.ndarray,
    query_pids: torch.Tensor | np.ndarray | Sequence[int],
    gallery_pids: torch.Tensor | np.ndarray | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float | int]:
    """Ranking metrics of a (num_queries, num_gallery) similarity matrix.

    Returns ``{"R1", "R5", "R10", "mAP", "mINP"}`` in percent plus ``num_queries`` (queries
    counted) and ``num_excluded`` (queries with no correct gallery item). Ties are broken by
    gallery index; similarities are compared in float32.
    """
    sim = _as_tensor(similarity, "similarity")
    if sim.ndim != 2:
        raise ValueError(f"similarity must be 2-D (queries, gallery), got shape {tuple(sim.shape)}")
    if not torch.isfinite(sim.sum()) and not torch.isfinite(sim).all():
        raise ValueError("similarity contains NaN or Inf values")
    return _ranking_metrics(
        lambda rows: sim[rows], tuple(sim.shape), query_pids, gallery_pids, ks, sim.device
    )


def retrieval_metrics_from_embeddings(
    query_feats: torch.Tensor,
    gallery_feats: torch.Tensor,
    query_pids: torch.Tensor | Sequence[int],
    gallery_pids: torch.Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float | int]:
    """:func:`retrieval_metrics` of ``query_feats @ gallery_feats.T``, computed chunk by chunk
    of queries on the embeddings' device: the full similarity matrix is never held."""
    if (
        query_feats.ndim != 2
        or gallery_feats.ndim != 2
        or query_feats.shape[1] != gallery_feats.shape[1]
    ):
        raise ValueError(
            f"embeddings must be (N, D) with one D, got {tuple(query_feats.shape)} and "
            f"{tuple(gallery_feats.shape)}"
        )
    queries, gallery = query_feats.detach().float(), gallery_feats.detach().float()
    if not (torch.isfinite(queries).all() and torch.isfinite(gallery).all()):
        raise ValueError("embeddings contain NaN or Inf values")
    shape = (queries.shape[0], gallery.shape[0])
    return _ranking_metrics(
        lambda rows: queries[rows] @ gallery.t(),
        shape,
        query_pids,
        gallery_pids,
        ks,
        queries.device,
    )


def _ranking_metrics(
    similarity_rows: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, int],
    query_pids: torch.Tensor | np.ndarray | Sequence[int],
    gallery_pids: torch.Tensor | np.ndarray | Sequence[int],
    ks: Sequence[int],
    device: torch.device,
) -> dict[str, float | int]:
    """The metrics, given ``similarity_rows(query_indices) -> (c, G)`` similarities."""
    qp = _as_tensor(query_pids, "query_pids").reshape(-1).long().to(device)
    gp = _as_tensor(gallery_pids, "gallery_pids").reshape(-1).long().to(device)
    if shape != (qp.numel(), gp.numel()):
        raise ValueError(
            f"similarity shape {shape} does not match {qp.numel()} query pids x "
            f"{gp.numel()} gallery pids"
        )
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {list(ks)}")

    num_gallery = gp.numel()
    # Sort the gallery by pid so each query's positives form one contiguous run.
    gp_sorted, gp_order = torch.sort(gp, stable=True)
    uniq, counts = torch.unique_consecutive(gp_sorted, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    if uniq.numel() == 0:
        slot = torch.zeros_like(qp)
        num_pos = torch.zeros_like(qp)
    else:
        slot = torch.searchsorted(uniq, qp).clamp(max=uniq.numel() - 1)
        num_pos = torch.where(uniq[slot] == qp, counts[slot], torch.zeros_like(qp))

    valid = torch.nonzero(num_pos > 0).flatten()
    num_excluded = int(qp.numel() - valid.numel())
    if num_excluded:
        log.info(
            "%d of %d queries have no match in the gallery: excluded", num_excluded, qp.numel()
        )
    if valid.numel() == 0:
        nan = float("nan")
        out: dict[str, float | int] = {f"R{k}": nan for k in ks}
        out.update(mAP=nan, mINP=nan, num_queries=0, num_excluded=num_excluded)
        return out

    # Process queries in order of their number of positives, so padding stays small per chunk.
    valid = valid[torch.argsort(num_pos[valid], stable=True)]
    hits = {k: torch.zeros(valid.numel(), dtype=torch.bool, device=device) for k in ks}
    ap = torch.zeros(valid.numel(), dtype=torch.float64, device=device)
    inp = torch.zeros(valid.numel(), dtype=torch.float64, device=device)

    sorted_num_pos = num_pos[valid].cpu()  # chunk bounds are planned on the host
    begin = 0
    while begin < valid.numel():
        end = _chunk_end(sorted_num_pos, begin, num_gallery)
        rows = valid[begin:end]
        n = num_pos[rows]  # (c,)
        p_max = int(n[-1])
        offsets = torch.arange(p_max, device=device)
        in_run = offsets[None, :] < n[:, None]  # (c, P)
        run_pos = (starts[slot[rows]][:, None] + offsets[None, :]).clamp(max=num_gallery - 1)
        pos_idx = gp_order[run_pos]  # gallery indices of the positives (padded)
        keys = _order_keys(similarity_rows(rows))
        if p_max <= _MAX_POSITIVES_FOR_COUNTING:
            ranks = _positive_ranks_by_counting(keys, pos_idx)
        else:
            ranks = _positive_ranks_by_sorting(keys, pos_idx)
        ranks = torch.where(in_run, ranks, torch.full_like(ranks, num_gallery + 1))
        ranks, _ = torch.sort(ranks, dim=1)  # r_1 <= r_2 <= ... (padding last)
        first = ranks[:, 0]
        for k in ks:
            hits[k][begin:end] = first <= k
        i = torch.arange(1, p_max + 1, dtype=torch.float64, device=device)
        precision_at_hits = torch.where(in_run, i[None, :] / ranks.double(), 0.0)
        ap[begin:end] = precision_at_hits.sum(1) / n.double()
        last = ranks.gather(1, (n - 1)[:, None]).squeeze(1)
        inp[begin:end] = n.double() / last.double()
        begin = end

    out = {f"R{k}": 100.0 * hits[k].double().mean().item() for k in ks}
    out["mAP"] = 100.0 * ap.mean().item()
    out["mINP"] = 100.0 * inp.mean().item()
    out["num_queries"] = int(valid.numel())
    out["num_excluded"] = num_excluded
    return out


def chance_level(
    query_pids: torch.Tensor | np.ndarray | Sequence[int],
    gallery_pids: torch.Tensor | np.ndarray | Sequence[int],
    seed: int = 0,
) -> dict[str, float | int]:
    """Metrics of a random ranking (uniform random similarities, fixed seed): the chance level."""
    qp = _as_tensor(query_pids, "query_pids").reshape(-1)
    gp = _as_tensor(gallery_pids, "gallery_pids").reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    return retrieval_metrics(torch.rand(qp.numel(), gp.numel(), generator=generator), qp, gp)
