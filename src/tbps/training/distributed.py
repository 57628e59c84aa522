"""Cross-rank gathering for batch-level objectives: global negatives, gradients to the local part.

Under DDP every rank gathers the embeddings of all ranks and computes the batch-level objective
on the global batch (the same value on every rank). The backward of the gather sums the
gradients that the ranks computed for each slice and keeps the local one, so after DDP averages
the parameter gradients over ranks they equal the gradient of the global-batch loss.
Single-process runs (or a world of one) pass tensors through unchanged.

Also here: which rank a process is before any process group exists (from the launcher's
environment) and the callback that makes all ranks agree on the run folder and the tokenizer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from tbps.errors import ConfigError

T = TypeVar("T")


def world_size() -> int:
    """Number of ranks of the default process group (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _gather_sizes(rows: int, device: torch.device) -> list[int]:
    local = torch.tensor([rows], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def _all_gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All-gather along dim 0, allowing a different number of rows per rank."""
    longest = max(sizes)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        rank = dist.get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.rows = sizes[rank]
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's gradient for every slice
        return grad[ctx.start : ctx.start + ctx.rows], None


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` (rows = local samples) over all ranks in rank order.

    Gradients flow back to the local rows (summed over the ranks' copies of the loss). Tensors
    that need no gradient (pids, weights) are gathered the same way, without the autograd node.
    """
    if world_size() == 1:
        return x
    sizes = sizes if sizes is not None else _gather_sizes(x.shape[0], x.device)
    if x.requires_grad:
        return _GatherWithGrad.apply(x, sizes)
    return _all_gather_padded(x, sizes)


def _batch_rows(tensors: Mapping[str, torch.Tensor | None]) -> tuple[int, torch.device] | None:
    """(rows, device) of the tensors present, checked to have one row count; None if none."""
    present = [t for t in tensors.values() if t is not None]
    if not present:
        return None
    rows = present[0].shape[0]
    for name, t in tensors.items():
        if t is not None and t.shape[0] != rows:
            raise ValueError(f"cannot gather {name!r}: {t.shape[0]} rows, expected {rows}")
    return rows, present[0].device


def gather_batch(
    tensors: Mapping[str, torch.Tensor | None], sizes: Sequence[int] | None = None
) -> dict[str, torch.Tensor | None]:
    """Gather several per-sample tensors of one batch (same local row count); None stays None.

    ``sizes`` (rows of every rank, in rank order) skips the exchange of the row counts; it must
    be what every rank has (see :class:`BatchGatherer`).
    """
    if world_size() == 1:
        return dict(tensors)
    found = _batch_rows(tensors)
    if found is None:
        return dict(tensors)
    rows, device = found
    if sizes is None:
        sizes = _gather_sizes(rows, device)
    elif len(sizes) != world_size() or sizes[dist.get_rank()] != rows:
        raise ValueError(f"sizes {list(sizes)} do not fit {rows} local rows on this rank")
    sizes = list(sizes)
    return {k: None if t is None else gather_with_grad(t, sizes) for k, t in tensors.items()}


class BatchGatherer:
    """:func:`gather_batch` for the training loop.

    With ``equal_sizes`` (a train loader with ``drop_last=True`` and a fixed batch size, so
    every rank has the same rows at every step) the row counts are exchanged at the first call
    only, checked equal, and assumed afterwards: no size all-gather per step. Otherwise they are
    exchanged at every call.
    """

    def __init__(self, equal_sizes: bool = False) -> None:
        self.equal_sizes = equal_sizes
        self.rows: int | None = None  # the checked local row count (equal_sizes only)

    def __call__(
        self, tensors: Mapping[str, torch.Tensor | None]
    ) -> dict[str, torch.Tensor | None]:
        if not self.equal_sizes or world_size() == 1:
            return gather_batch(tensors)
        found = _batch_rows(tensors)
        if found is None:
            return dict(tensors)
        rows, device = found
        if self.rows is None:
            sizes = _gather_sizes(rows, device)
            if len(set(sizes)) != 1:
                raise ValueError(
                    f"the ranks' training batches have different sizes {sizes}; expected equal "
                    "sizes (a train loader with drop_last=True and a fixed batch size)"
                )
            self.rows = rows
        elif rows != self.rows:
            raise ValueError(
                f"training batch of {rows} rows after batches of {self.rows}: the train loader "
                "was said to give equal batch sizes"
            )
        return gather_batch(tensors, [rows] * world_size())


def shard_bounds(batches: int, batch_size: int, total: int) -> list[tuple[int, int]]:
    """Per rank, the ``[start, end)`` rows of its share of ``total`` rows cut in whole batches
    of ``batch_size`` (``batches`` of them): contiguous shares in rank order, no padding
    repeats, so the ranks' parts concatenated are the rows in order."""
    ranks = world_size()
    cuts = [min(total, (r * batches // ranks) * batch_size) for r in range(ranks)] + [total]
    return [(cuts[r], cuts[r + 1]) for r in range(ranks)]


def all_gather_rows(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate ``x`` over all ranks in rank order, the ranks' row counts ``sizes`` known
    (no exchange, no gradient); a world of one returns ``x``."""
    if world_size() == 1:
        return x
    return _all_gather_padded(x, list(sizes))


def broadcast_from_rank_zero(obj: T) -> T:
    """Rank 0's ``obj`` (anything picklable) on every rank; a world of one returns ``obj``."""
    if world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 of the process group (True when not distributed)."""
    return world_size() == 1 or dist.get_rank() == 0


def launched_rank_zero() -> bool:
    """Whether this process is (or will become) global rank 0, read from the launcher's
    environment so it works before the process group exists.

    ``RANK`` (torchrun) decides when set; otherwise ``SLURM_PROCID`` (srun), ``NODE_RANK`` and
    ``LOCAL_RANK`` (Lightning's own launcher sets them for the processes it starts) must all be
    0 or absent. A plain single-process run is rank 0.
    """
    env = os.environ
    if env.get("RANK"):
        return int(env["RANK"]) == 0
    return all(int(env.get(k) or 0) == 0 for k in ("SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


def text_digest(text: str) -> str:
    """A digest of a text (a configuration, a dataset listing), to compare across ranks."""
    return hashlib.sha1(text.encode()).hexdigest()


def files_digest(files: Mapping[str, bytes]) -> str:
    """A digest of named byte strings (a tokenizer's saved files), to compare across ranks."""
    sha = hashlib.sha1()
    for name in sorted(files):
        sha.update(name.encode() + b"\0" + hashlib.sha1(files[name]).digest())
    return sha.hexdigest()


class RankAgreement(Callback):
    """Under DDP, once the process group exists (``setup``): every rank takes rank 0's run
    folder and checks that it has the same configuration, data and tokenizer as rank 0.

    Ranks started by torchrun or srun each pick a timestamped run folder name before they can
    talk to each other; only rank 0 creates and writes its folder, the others adopt it here
    (``run_dir``). ``digests`` name what must agree (e.g. ``{"config": …, "data": …,
    "tokenizer": …}``): ranks launched with different overrides, reading different data, or
    building different tokenizers would silently train different things, so the ranks compare
    digests and all stop, naming the first that differs.
    """

    #: what to tell the user for a digest that differs
    ADVICE = {
        "config": "the ranks were started with different configurations; launch every rank "
        "with the same command and overrides",
        "data": "the ranks read different data; point every node at the same dataset "
        "(the same files, captions and splits)",
        "tokenizer": "the ranks built different tokenizers from the same training captions; "
        "check that every node runs the same tbps/tokenizers versions on the same data",
    }

    def __init__(self, run_dir: Path, digests: Mapping[str, str]) -> None:
        self.run_dir = Path(run_dir)
        self.digests = dict(digests)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.world_size == 1:
            return
        strategy = trainer.strategy
        self.run_dir = Path(strategy.broadcast(str(self.run_dir), src=0))
        for name, digest in self.digests.items():
            same = strategy.broadcast(digest, src=0) == digest
            if not strategy.reduce_boolean_decision(same, all=True):
                raise ConfigError(self.ADVICE.get(name, f"the ranks disagree on {name}"))
