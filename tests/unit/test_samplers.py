"""Identity (P x K) sampler: batch composition, determinism, distributed sharding."""

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from tbps.data.samplers import IdentitySampler, max_batches
from tbps.errors import ConfigError


def _captions(counts: dict[int, int], captions_per_image: int = 2):
    """Caption-level pids and image ids: person p has counts[p] images, 2 captions each."""
    pids, image_ids, image = [], [], 0
    for pid, n_images in counts.items():
        for _ in range(n_images):
            pids += [pid] * captions_per_image
            image_ids += [image] * captions_per_image
            image += 1
    return pids, image_ids


COUNTS = {pid: 1 + pid % 4 for pid in range(10, 70)}  # 60 persons, 1-4 images each


def _batches(sampler: IdentitySampler) -> list[list[int]]:
    indices = list(sampler)
    size = sampler.batch_size
    assert len(indices) == len(sampler) and len(indices) % size == 0
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def test_every_batch_is_p_persons_times_k():
    pids, image_ids = _captions(COUNTS)
    sampler = IdentitySampler(pids, batch_size=16, num_instances=4, image_ids=image_ids, seed=0)
    batches = _batches(sampler)
    assert len(batches) == sampler.global_batches > 0
    for batch in batches:
        per_person = Counter(pids[i] for i in batch)
        assert len(per_person) == 4 and set(per_person.values()) == {4}
        for pid in per_person:  # K samples cycle through the person's images first
            images = [image_ids[i] for i in batch if pids[i] == pid]
            assert len(set(images)) == min(4, COUNTS[pid])
    # a person with one image (2 captions) is topped up to K by repeating them
    single = [b for b in batches if any(COUNTS[pids[i]] == 1 for i in b)]
    assert single and isinstance(sampler, DistributedSampler)


def test_schedule_is_reproducible_per_epoch_with_a_fixed_length():
    pids, image_ids = _captions(COUNTS)
    a = IdentitySampler(pids, 16, 4, image_ids, num_replicas=1, rank=0, seed=3)
    b = IdentitySampler(pids, 16, 4, image_ids, num_replicas=1, rank=0, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert second != first and len(second) == len(first) == len(a)
    a.set_epoch(0)
    assert list(a) == first
    c = IdentitySampler(pids, 16, 4, image_ids, seed=4)
    assert list(c) != first


def test_ranks_get_disjoint_batches_of_one_schedule():
    pids, image_ids = _captions(COUNTS)
    world = 3
    samplers = [IdentitySampler(pids, 8, 2, image_ids, world, r, seed=7) for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    per_rank = [_batches(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == samplers[0].batches_per_rank
    schedule = samplers[0].schedule(2)
    as_sets = [{tuple(b) for b in batches} for batches in per_rank]
    for r in range(world):
        assert as_sets[r] <= {tuple(b) for b in schedule}
        for q in range(r + 1, world):
            assert not as_sets[r] & as_sets[q]
    assert per_rank[1][0] == schedule[1] and per_rank[0][1] == schedule[world]


def test_through_a_dataloader():
    pids, image_ids = _captions(COUNTS)
    sampler = IdentitySampler(pids, 12, 3, image_ids, seed=0)
    loader = DataLoader(torch.tensor(pids), batch_size=12, sampler=sampler, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == sampler.batches_per_rank
    assert all(sorted(Counter(b.tolist()).values()) == [3, 3, 3, 3] for b in batches)


def test_max_batches_respects_one_appearance_per_batch():
    assert max_batches([1, 1, 1, 1], 2) == 2
    assert max_batches([10, 1, 1], 2) == 2  # the big person can only pair with the two others
    assert max_batches([10], 2) == 0
    pids, image_ids = _captions({1: 20, 2: 1, 3: 1, 4: 1})
    sampler = IdentitySampler(pids, 4, 2, image_ids, seed=0)
    assert all(len({pids[i] for i in b}) == 2 for b in _batches(sampler))


def test_bad_settings_are_config_errors():
    pids, _ = _captions(COUNTS)
    with pytest.raises(ConfigError, match="multiple of loader.num_instances=3"):
        IdentitySampler(pids, 16, 3)
    with pytest.raises(ConfigError, match="2 training identities, fewer than the 4 per batch"):
        IdentitySampler([1, 1, 2, 2], 8, 2)
    with pytest.raises(ConfigError, match="fewer than one per process"):
        IdentitySampler(pids, 16, 4, num_replicas=500, rank=0)


def test_world_size_and_rank_default_to_torch_distributed(monkeypatch):
    import tbps.data.samplers as samplers

    monkeypatch.setattr(samplers.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(samplers.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(samplers.dist, "get_rank", lambda: 1)
    pids, image_ids = _captions(COUNTS)
    sampler = IdentitySampler(pids, 8, 2, image_ids, seed=0)
    assert (sampler.num_replicas, sampler.rank) == (2, 1)
    assert _batches(sampler) == sampler.schedule(0)[1 : 2 * sampler.batches_per_rank : 2]
