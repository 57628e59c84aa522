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


class FakeCuda:
    """torch.cuda's RNG functions on a machine with ``count`` initialised devices."""

    def __init__(self, count, initialised=True):
        self.count, self.initialised = count, initialised
        self.states = [torch.tensor([i, 7], dtype=torch.uint8) for i in range(count)]
        self.restored = None

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.count > 0)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: self.initialised)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(self.states))
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self._set)

    def _set(self, states):
        self.restored = [s.clone() for s in states]


def _round_trip(state, tmp_path):
    path = tmp_path / "state.pt"
    torch.save(state, path)
    return torch.load(path, weights_only=True)


def test_cuda_rng_states_are_saved_and_restored_when_the_devices_match(monkeypatch, tmp_path):
    saved = FakeCuda(2)
    saved.install(monkeypatch)
    state = _round_trip(RNGState().state_dict(), tmp_path)
    assert [s.tolist() for s in state["cuda"]] == [[0, 7], [1, 7]]

    resumed = FakeCuda(2)
    resumed.install(monkeypatch)
    callback = RNGState()
    callback.load_state_dict(state)
    assert resumed.restored is None  # applied at the next epoch start, as the CPU state
    callback.on_train_epoch_start(fake_trainer(), None)
    assert [s.tolist() for s in resumed.restored] == [[0, 7], [1, 7]]


def test_cuda_rng_states_of_other_devices_are_not_restored(monkeypatch, caplog):
    FakeCuda(2).install(monkeypatch)
    torch.manual_seed(5)
    state = RNGState().state_dict()
    expected = torch.rand(2)
    other = FakeCuda(1)  # resumed on a machine with one GPU
    other.install(monkeypatch)
    callback = RNGState()
    callback.load_state_dict(state)
    with caplog.at_level("WARNING"):
        callback.on_train_epoch_start(fake_trainer(), None)
    assert other.restored is None
    assert "CUDA RNG states of 2 device(s), this process sees 1" in caplog.text
    assert torch.equal(torch.rand(2), expected)  # the CPU state is restored all the same


def test_cpu_runs_save_no_cuda_state_and_round_trip(monkeypatch, tmp_path):
    FakeCuda(1, initialised=False).install(monkeypatch)  # a GPU that this run never used
    torch.manual_seed(11)
    state = _round_trip(RNGState().state_dict(), tmp_path)
    assert "cuda" not in state
    expected = torch.rand(3)
    callback = RNGState()
    callback.load_state_dict(state)
    callback.on_train_epoch_start(fake_trainer(), None)
    assert torch.equal(torch.rand(3), expected)


def test_wall_clock_ignores_its_own_checkpoints_and_counts_resumed_parts():
    from tbps.training.checkpoint import WallClock

    clock = WallClock()
    clock.start -= 10.0  # 10 s into the run
    clock.load_state_dict(clock.state_dict())  # testing a checkpoint this process wrote
    assert 10.0 <= clock.seconds() < 11.0
    resumed = WallClock()
    resumed.load_state_dict({"seconds": 100.0, "process_start": 1.0})  # last.ckpt
    resumed.load_state_dict({"seconds": 40.0, "process_start": 1.0})  # an older best.ckpt
    assert 100.0 <= resumed.seconds() < 101.0
