"""RNGState: save/restore of the RNG streams and per-rank streams under DDP."""

import random
from types import SimpleNamespace

import numpy as np
import torch

from tbps.training.checkpoint import RNGState


def fake_trainer(world_size=1, rank=0):
    return SimpleNamespace(world_size=world_size, global_rank=rank, datamodule=None)


def test_restored_state_is_applied_at_the_next_epoch_start():
    callback = RNGState()
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = callback.state_dict()
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(99)
    restored = RNGState()
    restored.load_state_dict(state)
    assert torch.rand(1).item() != expected[0][0].item()  # not applied at load time
    restored.on_train_epoch_start(fake_trainer(), None)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]


def test_each_rank_gets_its_own_stream_under_ddp():
    draws = []
    for rank in (0, 1):
        torch.manual_seed(7)
        RNGState().on_train_epoch_start(fake_trainer(world_size=2, rank=rank), None)
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])
    torch.manual_seed(7)
    RNGState().on_train_epoch_start(fake_trainer(world_size=2, rank=1), None)
    assert torch.equal(torch.rand(4), draws[1])  # deterministic per rank
