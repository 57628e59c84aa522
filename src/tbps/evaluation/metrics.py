"""Retrieval metrics (R@K, mAP, mINP), vectorised and chunked over queries.

Only the ranks of the correct gallery items are computed. For query q with correct items
``j_1..j_n`` ranked ``r_1 < ... < r_n`` (1-based, ties broken by gallery index):

    R@K   = 1[r_1 <= K]
    AP_q  = (1/n) * sum_i i / r_i
    INP_q = n / r_n

Each is averaged over the queries that have at least one correct item and reported in percent;
queries without any correct item are excluded and counted in ``num_excluded``.

Rank of a positive = 1 + number of gallery items ranked above it. The plain way needs two
compares of the row per positive (the items scoring higher, and tied items at a lower index);
with the few positives a query has in CUHK-PEDES or RSTPReid that is the cheapest way, the rows
going in cache-sized blocks. Such queries are then taken by their number of positives, most
first, so a chunk's rows are alike and those that still need their j-th positive form a prefix
(the price: each chunk's rows are gathered). With many positives (ICFG-PEDES), each row is
instead mapped by a monotone affine map onto ``W`` integer cells spanning its positives' scores;
one ``bincount`` gives the items per cell, so everything in a cell strictly above (below) a
positive's cell is above (below) it. Only the items that share a cell with a positive are
compared exactly (float32 score, then gallery index), so the cost is a few passes over the
scores, whatever the number of positives. Items scoring below a row's lowest positive rank above
none of them: when they are the bulk of a chunk (any decent model), one compare finds the
others, the contenders, and only those are mapped and counted. A row's lowest positives, which
let in the most contenders, can be ranked directly first. Each chunk picks the cheapest plan
from its positives' counts and a sample of its rows. Everything runs on the device of the
similarities (or embeddings), and the temporaries of a chunk stay within ``_CHUNK_BYTES``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Budget for the per-chunk temporaries (at most about 16 bytes per similarity of the chunk).
#: Fewer, larger chunks pay less per-chunk overhead (CUHK-PEDES size: 5 chunks, 10 % faster
#: than 10); the bound stays far below the similarity matrix at ICFG-PEDES size.
_CHUNK_BYTES = 64 << 20
_BYTES_PER_SIMILARITY = 16
#: Cells per row = items mapped in the row (the gallery, or its most contenders) / this, at least
#: _MIN_CELLS: fewer cells, more exact compares.
_GALLERY_PER_CELL = 8
_MIN_CELLS = 16
#: Rough costs (ns per item of a chunk, 2 CPU threads, fitted to timings of every plan at
#: CUHK-PEDES and ICFG-PEDES sizes) by which each chunk picks its plan: how many of a row's
#: lowest positives to rank directly (two compares of the row each; all of them, or at most
#: _MAX_DIRECT before the cells), and then whether to gather the contenders (a scan, then a cost
#: per contender) or to map every item.
_DIRECT_RANK_COST = 0.26
_CONTENDER_SCAN_COST = 0.68
_CONTENDER_COST = 29.0
_ALL_ITEMS_COST = 3.4
_MAX_DIRECT = 3
#: Rows per block of a direct rank's compares: about this many bytes of float32 compare results.
_DIRECT_BLOCK_BYTES = 1 << 20
#: More 8-item words holding a contender than this fraction (the sample misled, about 15 % of
#: the items are contenders): map every item.
_CONTENDER_FRACTION = 0.7
_INT64_MAX = torch.iinfo(torch.int64).max


def _as_tensor(x: torch.Tensor | np.ndarray | Sequence, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a tensor, array or sequence of numbers ({e})") from e


def _order_keys(values: torch.Tensor, gallery_idx: torch.Tensor, num_gallery: int) -> torch.Tensor:
    """Unique int64 keys with the ranking order of (float32 score, gallery index) pairs.

    A larger key ranks earlier: higher score first, then lower gallery index (stable ties).
    """
    bits = (values.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    monotone = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32 order == float order
    return monotone.to(torch.int64) * (1 << 32) + (num_gallery - 1 - gallery_idx)


def _flat_nonzero(flags: torch.Tensor, most: float = 1.0) -> torch.Tensor | None:
    """Indices of the True entries of a 1-D bool tensor whose length is a multiple of 8; None
    when more than the fraction ``most`` of its 8-flag words hold one."""
    words = torch.nonzero(flags.view(torch.int64)).squeeze(1)  # scan 8 flags at a time
    if words.numel() > most * (flags.numel() // 8):
        return None
    hit = torch.nonzero(flags.view(-1, 8).index_select(0, words))
    return words.index_select(0, hit[:, 0]) * 8 + hit[:, 1]


def _cell_map(
    pos_val: torch.Tensor, in_run: torch.Tensor, num_cells: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale, offset)`` mapping the positives' scores onto cells 1..num_cells-2."""
    lowest = pos_val.masked_fill(~in_run, float("inf")).amin(1)
    highest = pos_val.masked_fill(~in_run, float("-inf")).amax(1)
    span = highest - lowest
    span = torch.where(span > 0, span, lowest.abs() + 1.0)  # one positive (or all tied)
    # Cap the scale so that offset and scale * score never overflow into inf - inf = NaN.
    limit = 1e30 / (torch.maximum(lowest.abs(), highest.abs()) + 1.0)
    scale = torch.minimum((num_cells - 3) / span, limit)
    offset = 1.0 - lowest * scale
    ok = torch.isfinite(scale) & torch.isfinite(offset)
    return torch.where(ok, scale, 0.0), torch.where(ok, offset, 1.0)


def _cells(
    values: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    num_cells: int,
    out_float: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """``floor(clamp(values * scale + offset, 0, num_cells - 1))`` into the int32 ``out``: two
    correctly rounded operations, so the same score always lands in the same cell and a higher
    score never in a lower one, whichever shape the scores come in."""
    torch.mul(values, scale, out=out_float)
    out_float.add_(offset).clamp_(0, num_cells - 1)
    return out.copy_(out_float)  # truncation = floor (all >= 0)


class _Scratch:
    """Flat scratch tensors reused from chunk to chunk (no fresh pages for every chunk)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._tensors.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = torch.empty(numel, dtype=dtype, device=self.device)
            self._tensors[name] = buf
        return buf[:numel]


def _padded_flags(scratch: _Scratch, name: str, numel: int) -> torch.Tensor:
    """A bool scratch of ``numel`` rounded up to a whole word, the padding False."""
    flags = scratch.get(name, -(-numel // 8) * 8, torch.bool)
    flags[numel:] = False
    return flags


class _Contenders:
    """The items of a chunk that may rank above a positive, and their global cells.

    Nothing scoring below a row's lowest positive ranks above any of its positives. With
    ``gather`` (few items score that high), only those, the contenders, are gathered and mapped
    onto cells, a few cells per row; otherwise every item is, ``num_gallery // 8`` cells a row.
    Row r owns the global cells ``r * W .. r * W + W - 1``.
    """

    def __init__(
        self, sim: torch.Tensor, lowest: torch.Tensor, gather: bool, scratch: _Scratch
    ) -> None:
        rows, num_gallery = sim.shape
        numel = rows * num_gallery
        self.num_gallery = num_gallery
        self.scores = sim.reshape(-1)
        self.where = self.row = None  # flat positions and rows of the contenders; None: all
        self.num_cells = max(_MIN_CELLS, num_gallery // _GALLERY_PER_CELL)
        if not gather:
            return
        flags = _padded_flags(scratch, "contenders", numel)
        torch.ge(sim, lowest[:, None], out=flags[:numel].view(rows, num_gallery))
        where = _flat_nonzero(flags, _CONTENDER_FRACTION)
        if where is None:  # the sample misled
            return
        self.where = where
        self.row = torch.div(where, num_gallery, rounding_mode="floor")
        self.scores = self.scores.index_select(0, where)
        most = int(torch.bincount(self.row, minlength=1).max())  # bounds the exact compares
        self.num_cells = max(_MIN_CELLS, min(self.num_cells, most // _GALLERY_PER_CELL))

    def cells(
        self, sim: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, scratch: _Scratch
    ) -> torch.Tensor:
        """Global int32 cells of the contenders (flat), for the per-row cell map."""
        rows, num_gallery = sim.shape
        num_cells = self.num_cells
        base = torch.arange(rows, dtype=torch.int32, device=sim.device) * num_cells
        if self.row is None:
            numel = rows * num_gallery
            cells_f = scratch.get("cells_f", numel, torch.float32).view(rows, num_gallery)
            cells = scratch.get("cells", numel, torch.int32).view(rows, num_gallery)
            _cells(sim, scale[:, None], offset[:, None], num_cells, cells_f, cells)
            return cells.add_(base[:, None]).view(-1)
        count = self.row.numel()
        maps = torch.stack([scale, offset], 1).index_select(0, self.row)  # one gather for both
        cells = _cells(
            self.scores,
            maps[:, 0],
            maps[:, 1],
            num_cells,
            scratch.get("cells_f", count, torch.float32),
            scratch.get("cells", count, torch.int32),
        )
        return cells.add_(base.index_select(0, self.row))

    def locate(self, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, gallery index, score) of the contenders at positions ``where`` of the cells."""
        flat = where if self.where is None else self.where.index_select(0, where)
        row = torch.div(flat, self.num_gallery, rounding_mode="floor")
        return row, flat - row * self.num_gallery, self.scores.index_select(0, where)


def _by_count(n: torch.Tensor) -> bool:
    """Whether the rows come by their number of positives ``n``, non-increasing."""
    return bool((n[1:] <= n[:-1]).all())


def _may_finish_early(n: torch.Tensor) -> bool:
    """Whether a plan might rank all the positives of some of the queries with ``n`` positives
    directly (then the queries go by ``n``, at the price of gathering each chunk's rows)."""
    direct_all = _DIRECT_RANK_COST * float(n.double().mean())
    return int(n.min()) <= _MAX_DIRECT or direct_all < _ALL_ITEMS_COST


def _plan(
    sim: torch.Tensor, pos_val: torch.Tensor, n: torch.Tensor, scratch: _Scratch
) -> tuple[int, bool]:
    """(lowest positives of a row to rank directly, whether to gather the contenders of the
    rest) for a chunk whose rows hold ``n`` positives, by the costs above.

    A row with at most that many positives is ranked directly alone, which needs the rows by
    ``n``, non-increasing; otherwise every row keeps a positive for the cells. Ranking every
    positive of every row directly needs no cells at all. The contender fractions come from
    every 16th row, sampled only for plans that could beat the best so far.
    """
    if sim.shape[1] >= 1 << 24:  # float32 counts are exact below 2**24
        return 0, _cell_plan(sim, pos_val, n, 0, scratch)[1]
    most, fewest = int(n.max()), int(n.min())
    best = (float("inf"), 0, False)
    if _by_count(n):
        best = (_DIRECT_RANK_COST * float(n.double().mean()), most, False)  # every one directly
    else:
        most = fewest
    for direct in range(min(_MAX_DIRECT, most - 1) + 1):
        direct_cost = _DIRECT_RANK_COST * float(n.clamp(max=direct).double().mean())
        share = float((n > direct).double().mean())  # rows with positives left for the cells
        if direct_cost + share * _CONTENDER_SCAN_COST >= best[0]:  # the least the cells cost
            continue
        cells, gather = _cell_plan(sim, pos_val, n, direct, scratch)
        best = min(best, (direct_cost + share * cells, direct, gather))
    return best[1], best[2]


def _cell_plan(
    sim: torch.Tensor, pos_val: torch.Tensor, n: torch.Tensor, direct: int, scratch: _Scratch
) -> tuple[float, bool]:
    """(cost per item of a row with positives left, whether to gather the contenders) of the
    cell step for the positives above each row's ``direct`` lowest, from every 16th row."""
    num_gallery = sim.shape[1]
    left = n[::16] > direct  # sampled rows with positives left for the cells
    sample = scratch.get("cells_f", left.numel() * num_gallery, torch.float32)
    sample = sample.view(left.numel(), num_gallery)
    lowest = pos_val[::16].gather(1, (n[::16] - 1).clamp(max=direct)[:, None])
    torch.ge(sim[::16], lowest, out=sample)
    fraction = float(sample.mean(1)[left].mean()) if bool(left.any()) else 0.0
    gathered = _CONTENDER_SCAN_COST + _CONTENDER_COST * fraction
    return min(gathered, _ALL_ITEMS_COST), gathered < _ALL_ITEMS_COST


def _direct_ranks(
    sim: torch.Tensor,
    value: torch.Tensor,
    index: torch.Tensor,
    counts: Sequence[int],
    scratch: _Scratch,
) -> torch.Tensor:
    """(D, rows) ranks of positive j (score ``value[:, j]`` at gallery ``index[:, j]``) of the
    first ``counts[j]`` rows (non-increasing), from two compares of the row each: 1 + items
    scoring higher + tied items at a lower gallery index. On the CPU the rows go in blocks whose
    compare results stay in the core's cache until summed; entries past ``counts[j]`` are 1.
    (Comparing a block for all its positives at once saves 4 % at CUHK-PEDES size, but costs 5 %
    at ICFG-PEDES size: the later contender scan then finds less of the chunk in cache.)"""
    rows, num_gallery = sim.shape
    device = sim.device
    slots = len(counts)
    block = rows if device.type == "cuda" else max(1, _DIRECT_BLOCK_BYTES // (4 * num_gallery))
    # whole chunks share the cell scratch (free at this point): no extra chunk-sized buffer
    name = "cells_f" if block >= rows else "direct"
    buffer = scratch.get(name, min(rows, block) * num_gallery, torch.float32)
    above = torch.zeros(slots, rows, dtype=torch.float32, device=device)
    tied = torch.zeros_like(above)  # the positive itself included
    for j in range(slots):
        for begin in range(0, counts[j], block):
            end = min(counts[j], begin + block)
            part, threshold = sim[begin:end], value[begin:end, j, None]
            results = buffer[: (end - begin) * num_gallery].view(end - begin, num_gallery)
            torch.sum(torch.gt(part, threshold, out=results), 1, out=above[j, begin:end])
            torch.sum(torch.eq(part, threshold, out=results), 1, out=tied[j, begin:end])
    slot, row = torch.nonzero(tied > 1).unbind(1)  # another item has the same score
    if row.numel():
        part = sim.index_select(0, row)
        threshold = value[row, slot, None]
        earlier = torch.arange(num_gallery, device=device)[None, :] < index[row, slot, None]
        extra = ((part == threshold) & earlier).sum(1).float()
        above.index_put_((slot, row), extra, accumulate=True)
    return above.long() + 1


def _positive_ranks(
    sim: torch.Tensor, pos_idx: torch.Tensor, n: torch.Tensor, scratch: _Scratch
) -> torch.Tensor:
    """Ranks ``r_1 < r_2 < ...`` of the positives of each row of a float32 (c, G) chunk.

    ``pos_idx`` (c, P) holds the positives' gallery indices, the ``n`` valid ones first in each
    row. Entries past a row's positives are meaningless. A row's lowest positives may be ranked
    directly (all of them, in a row with few, when the rows come by ``n``, non-increasing),
    which raises the bar for the contenders of the rest.
    """
    rows, num_gallery = sim.shape
    device = sim.device
    num_pos = pos_idx.shape[1]
    in_run = torch.arange(num_pos, device=device)[None, :] < n[:, None]
    pos_val = sim.gather(1, pos_idx)
    pos_key = _order_keys(pos_val, pos_idx, num_gallery).masked_fill(~in_run, _INT64_MAX)
    pos_key, order = torch.sort(pos_key, dim=1)  # ascending; padding last
    pos_idx = pos_idx.gather(1, order)
    pos_val = pos_val.gather(1, order)
    direct, gather = _plan(sim, pos_val, n, scratch)
    counts = (n[None, :] > torch.arange(direct, device=device)[:, None]).sum(1).tolist()
    # ranks in ascending key order: the direct ones first, then those of the cells
    ascending = torch.zeros(rows, num_pos, dtype=torch.int64, device=device)
    if direct:
        ranked = _direct_ranks(sim, pos_val[:, :direct], pos_idx[:, :direct], counts, scratch)
        ascending[:, :direct] = ranked.t()
    left = int((n > direct).sum())  # rows with positives left for the cells: a prefix
    if left:
        ascending[:left, direct:] = _cell_ranks(
            sim[:left],
            pos_val[:left, direct:],
            pos_key[:left, direct:],
            pos_idx[:left, direct:],
            n[:left] - direct,
            gather,
            scratch,
        )
    # the i-th best of n positives is the (n - 1 - i)-th in ascending order
    best_first = (n[:, None] - 1 - torch.arange(num_pos, device=device)).clamp(min=0)
    return ascending.gather(1, best_first)


def _cell_ranks(
    sim: torch.Tensor,
    pos_val: torch.Tensor,
    pos_key: torch.Tensor,
    pos_idx: torch.Tensor,
    n: torch.Tensor,
    gather: bool,
    scratch: _Scratch,
) -> torch.Tensor:
    """Ranks of the positives whose (score, key, index) ascend in each row (the ``n`` valid
    ones first), in that order, counted over the cells of the items that may rank above them."""
    rows, num_gallery = sim.shape
    device = sim.device
    num_pos = pos_key.shape[1]
    in_run = torch.arange(num_pos, device=device)[None, :] < n[:, None]
    # Coarse step: cells of the contenders, one bincount; the valid positives sort first, so
    # column 0 holds each row's lowest.
    items = _Contenders(sim, pos_val[:, 0], gather, scratch)
    num_cells = items.num_cells
    scale, offset = _cell_map(pos_val, in_run, num_cells)
    cells = items.cells(sim, scale, offset, scratch)
    per_cell = torch.bincount(cells, minlength=rows * num_cells)
    pos_cell = torch.empty_like(pos_idx, dtype=torch.int32)
    _cells(pos_val, scale[:, None], offset[:, None], num_cells, torch.empty_like(pos_val), pos_cell)
    row_base = torch.arange(rows, device=device)[:, None] * num_cells
    pos_cell = pos_cell.long() + row_base  # (c, P) global cells of the positives
    shared = torch.zeros(rows * num_cells, dtype=torch.bool, device=device)
    shared[pos_cell[in_run]] = True  # cells holding a positive: their items are compared exactly
    count = cells.numel()
    flags = _padded_flags(scratch, "flags", count)
    torch.index_select(shared, 0, cells, out=flags[:count])
    # Items in cells strictly above a positive's cell rank above it.
    per_cell.masked_fill_(shared, 0)
    cumulative = per_cell.view(rows, num_cells).cumsum(1)
    above = cumulative[:, -1:] - cumulative.gather(1, pos_cell - row_base)

    # Exact step: items sharing a cell with a positive, by (score, gallery index) key.
    where = _flat_nonzero(flags)
    row, col, scores = items.locate(where)
    key = _order_keys(scores, col, num_gallery)
    item_cell = cells.index_select(0, where).long()
    # The valid positives, flattened row after row, are sorted by global cell and by key.
    flat_cell, flat_key = pos_cell[in_run], pos_key[in_run]
    first = torch.searchsorted(flat_cell, item_cell)  # first positive of the item's cell
    stop = torch.searchsorted(flat_cell, item_cell, right=True)
    below = first - (torch.cumsum(n, 0) - n).index_select(0, row)  # positives in lower cells
    for t in range(int((stop - first).max()) if where.numel() else 0):  # usually 1 per cell
        j = first + t
        below += (j < stop) & (flat_key[j.clamp(max=flat_key.numel() - 1)] < key)
    slots = torch.bincount(row * (num_pos + 1) + below, minlength=rows * (num_pos + 1))
    slots = slots.view(rows, num_pos + 1)
    # Items with ``below > i`` rank above positive i: suffix sums over the slots.
    above += slots.flip(1).cumsum(1).flip(1)[:, 1:]
    return above + 1


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

    def similarity_rows(queries: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
        contiguous = _as_range(queries)
        if contiguous is not None or sim.dtype != torch.float32:
            return sim[queries if contiguous is None else contiguous].float()
        out = scratch.get("similarity", queries.numel() * sim.shape[1], torch.float32)
        return torch.index_select(sim, 0, queries, out=out.view(-1, sim.shape[1]))

    return _ranking_metrics(
        similarity_rows,
        tuple(sim.shape),
        query_pids,
        gallery_pids,
        ks,
        sim.device,
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

    def similarity_rows(rows: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
        q = queries[rows]  # (c, D): a small copy
        out = scratch.get("similarity", q.shape[0] * shape[1], torch.float32)
        return torch.matmul(q, gallery.t(), out=out.view(q.shape[0], shape[1]))

    return _ranking_metrics(
        similarity_rows,
        shape,
        query_pids,
        gallery_pids,
        ks,
        queries.device,
    )


def _as_range(rows: torch.Tensor) -> slice | None:
    """``rows`` as a slice when they are consecutive and ascending."""
    if rows.numel() > 1 and not bool((rows[1:] - rows[:-1] == 1).all()):
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1)


def _ranking_metrics(
    similarity_rows: Callable[[torch.Tensor, _Scratch], torch.Tensor],
    shape: tuple[int, int],
    query_pids: torch.Tensor | np.ndarray | Sequence[int],
    gallery_pids: torch.Tensor | np.ndarray | Sequence[int],
    ks: Sequence[int],
    device: torch.device,
) -> dict[str, float | int]:
    """The metrics, given ``similarity_rows(queries, scratch) -> (c, G)`` float32 similarities
    of those queries."""
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
    num_valid = valid.numel()
    num_excluded = int(qp.numel() - num_valid)
    if num_excluded:
        log.info(
            "%d of %d queries have no match in the gallery: excluded", num_excluded, qp.numel()
        )
    if num_valid == 0:
        nan = float("nan")
        out: dict[str, float | int] = {f"R{k}": nan for k in ks}
        out.update(mAP=nan, mINP=nan, num_queries=0, num_excluded=num_excluded)
        return out

    # When some queries may have all their positives ranked directly, the queries go by their
    # number of positives, most first: the chunks are alike, and within a chunk the rows that
    # still need their j-th positive form a prefix. Results go back to the query's place, so
    # the means add up in query order.
    order = valid
    if _may_finish_early(num_pos[valid]):
        order = valid[torch.argsort(num_pos[valid], descending=True, stable=True)]
    first = torch.zeros(qp.numel(), dtype=torch.int64, device=device)
    ap = torch.zeros(qp.numel(), dtype=torch.float64, device=device)
    inp = torch.zeros_like(ap)
    scratch = _Scratch(device)
    chunk = max(1, _CHUNK_BYTES // (num_gallery * _BYTES_PER_SIMILARITY))
    for begin in range(0, num_valid, chunk):
        end = min(begin + chunk, num_valid)
        query = order[begin:end]
        n = num_pos[query]  # (c,)
        offsets = torch.arange(int(n.max()), device=device)
        in_run = offsets[None, :] < n[:, None]  # (c, P)
        run_pos = (starts[slot[query]][:, None] + offsets[None, :]).clamp(max=num_gallery - 1)
        pos_idx = gp_order[run_pos]  # gallery indices of the positives (padded)
        ranks = _positive_ranks(similarity_rows(query, scratch), pos_idx, n, scratch)
        first[query] = ranks[:, 0]
        i = (offsets + 1).double()
        ap[query] = torch.where(in_run, i / ranks.double(), 0.0).sum(1) / n.double()
        inp[query] = n.double() / ranks.gather(1, (n - 1)[:, None]).squeeze(1).double()
    first, ap, inp = first[valid], ap[valid], inp[valid]

    out = {f"R{k}": 100.0 * (first <= k).double().mean().item() for k in ks}
    out["mAP"] = 100.0 * ap.mean().item()
    out["mINP"] = 100.0 * inp.mean().item()
    out["num_queries"] = int(num_valid)
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
