"""Run a function on two forked gloo ranks on CPU and collect what each returns, for tests."""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def _rank_main(target, rank, world_size, store, args, queue) -> None:
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size
        )
        torch.set_num_threads(1)
        queue.put((rank, target(rank, *args), None))
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - reported to the parent
        queue.put((rank, None, traceback.format_exc()))


def run_gloo_ranks(
    target: Callable[..., Any], store: Path, *args: Any, world_size: int = 2, timeout: float = 60
) -> dict[int, Any]:
    """Fork ``world_size`` processes joined in a gloo group through the file ``store``; each runs
    ``target(rank, *args)`` and sends back its result, which must pickle without shared memory
    (plain lists, not tensors). Returns ``{rank: result}``; a rank's exception fails the test
    with its traceback."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_rank_main, args=(target, r, world_size, store, args, queue))
        for r in range(world_size)
    ]
    for proc in procs:
        proc.start()
    results, errors = {}, {}
    for _ in procs:
        rank, result, error = queue.get(timeout=timeout)
        results[rank], errors[rank] = result, error
    for proc in procs:
        proc.join(timeout=30)
    for rank, error in errors.items():
        assert error is None, f"rank {rank}:\n{error}"
    return results
