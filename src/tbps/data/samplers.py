"""Identity (P x K) sampler: batches of P persons with K samples each, distributed-aware."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from tbps.errors import ConfigError

SAMPLERS = ("random", "identity")


def max_batches(chunks_per_id: Sequence[int], ids_per_batch: int) -> int:
    """Most batches of ``ids_per_batch`` distinct identities the chunk counts allow.

    The largest B with ``sum_i min(c_i, B) >= P * B`` (an identity appears once per batch).
    """
    lo, hi = 0, sum(chunks_per_id) // ids_per_batch
    counts = np.asarray(chunks_per_id)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(counts, mid).sum() >= ids_per_batch * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


class IdentitySampler(DistributedSampler):
    """Yields dataset indices so that every ``batch_size`` consecutive ones form one P x K batch.

    P = ``batch_size // num_instances`` distinct persons per batch, K = ``num_instances`` samples
    each, grouped by person id (not by image): a person's K samples cycle through their distinct
    images before repeating one; a person with fewer than K samples is topped up by drawing
    from them again. Every epoch the same number of batches is made (the most the identity
    counts allow); the schedule depends only on ``seed`` and the epoch (:meth:`set_epoch`).

    Distributed: all ranks build the same global schedule and rank r takes batches r, r + W, ...
    (disjoint, equal counts). It subclasses ``DistributedSampler`` so Lightning keeps it as it is
    instead of wrapping it: use it with ``DataLoader(batch_size=batch_size, shuffle=False,
    drop_last=True)``.
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        num_instances: int = 4,
        image_ids: Sequence[int] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        if num_instances < 1 or batch_size < 1 or batch_size % num_instances:
            raise ConfigError(
                f"loader.batch_size={batch_size} must be a positive multiple of "
                f"loader.num_instances={num_instances} for the identity sampler"
            )
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        super().__init__(
            dataset=pids,  # type: ignore[arg-type]  # only len() is used by the base class
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.ids_per_batch = batch_size // num_instances
        image_ids = list(range(len(pids))) if image_ids is None else list(image_ids)
        if len(image_ids) != len(pids):
            raise ValueError(f"{len(pids)} pids but {len(image_ids)} image ids")
        # person -> image -> sample indices (insertion order = dataset order, deterministic)
        groups: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for index, (pid, image_id) in enumerate(zip(pids, image_ids)):
            groups[int(pid)][int(image_id)].append(index)
        self.persons = sorted(groups)
        self.samples = [list(groups[p].values()) for p in self.persons]
        self.chunks = [max(1, sum(map(len, imgs)) // num_instances) for imgs in self.samples]
        if len(self.persons) < self.ids_per_batch:
            raise ConfigError(
                f"identity sampler: {len(self.persons)} training identities, fewer than the "
                f"{self.ids_per_batch} per batch (loader.batch_size / loader.num_instances)"
            )
        self.global_batches = max_batches(self.chunks, self.ids_per_batch)
        self.batches_per_rank = self.global_batches // self.num_replicas
        if self.batches_per_rank == 0:
            raise ConfigError(
                f"identity sampler: the data allow {self.global_batches} batches of "
                f"{self.ids_per_batch} distinct identities, fewer than one per process "
                f"({self.num_replicas}); lower loader.batch_size"
            )

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size

    def _person_chunks(self, rng: np.random.Generator, images: list[list[int]]) -> list[list[int]]:
        """One person's samples as chunks of K: images shuffled, then taken round-robin."""
        order = [images[i] for i in rng.permutation(len(images))]
        order = [[caps[j] for j in rng.permutation(len(caps))] for caps in order]
        flat = [caps[r] for r in range(max(map(len, order))) for caps in order if r < len(caps)]
        k = self.num_instances
        if len(flat) < k:
            flat += [flat[i] for i in rng.integers(0, len(flat), k - len(flat))]
        return [flat[c * k : (c + 1) * k] for c in range(len(flat) // k)]

    def schedule(self, epoch: int | None = None) -> list[list[int]]:
        """The global list of batches (index lists) of an epoch, identical on every rank."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        n_batches = self.global_batches
        person_order = rng.permutation(len(self.persons))
        grouped: list[list[int]] = []  # chunks, each person's consecutive, at most n_batches
        for p in person_order:
            grouped.extend(self._person_chunks(rng, self.samples[p])[:n_batches])
        excess = len(grouped) - n_batches * self.ids_per_batch
        if excess > 0:
            drop = set(rng.choice(len(grouped), excess, replace=False).tolist())
            grouped = [c for i, c in enumerate(grouped) if i not in drop]
        # position t goes to batch t mod n_batches: a person's (<= n_batches consecutive)
        # chunks land in distinct batches, and every batch gets exactly P chunks
        batches: list[list[int]] = [[] for _ in range(n_batches)]
        for t, chunk in enumerate(grouped):
            batches[t % n_batches].extend(chunk)
        return [batches[b] for b in rng.permutation(n_batches)]

    def __iter__(self) -> Iterator[int]:
        batches = self.schedule()
        mine = batches[self.rank : self.batches_per_rank * self.num_replicas : self.num_replicas]
        for batch in mine:
            yield from batch
