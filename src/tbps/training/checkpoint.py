"""Training checkpoints: atomic writing, RNG state for exact resume, compatibility checks."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tbps.errors import ConfigError, DataError
from tbps.model.checkpoint import tokenizer_state, upgrade_state_dict

__all__ = ["AtomicCheckpointIO", "RNGState", "check_compatible", "tokenizer_state"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Ctrl-C inside the block is held until the block ends, then raised: a checkpoint being
    written is finished first (the main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _umask_mode() -> int:
    """The mode a new file gets from the process umask (mkstemp would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it into
    place: an interrupted save never leaves a truncated ``last.ckpt`` or ``best.ckpt``, and a
    Ctrl-C during the write waits for it to finish. Files get the umask's mode, so colleagues
    on a shared machine can read them as they can read the rest of the run folder."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with deferred_interrupt():
                with os.fdopen(fd, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, _umask_mode())
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class RNGState(Callback):
    """Saves the torch, numpy and Python RNG states in checkpoints and restores them on resume,
    so a resumed CPU run draws the same augmentations and masks as an uninterrupted one.
    Where CUDA is initialised, the CUDA generators of all devices are saved too (``cuda``) and
    restored when the resumed process sees as many devices; otherwise a warning says so.

    The restored state is applied at the first training-epoch start, not at load time:
    Lightning's fit start consumes random numbers after loading, which an uninterrupted run
    does not do between saving and the next epoch. Under DDP it also gives each rank its own
    random stream (all ranks start from the same seed). The training data does not draw from
    these: each sample's augmentations (images, captions, MLM masks) come from its draw seed
    (``tbps.data.datamodule.draw_seed``).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
                "kind": str(kind),
            },
            "python": random.getstate(),
            **_cuda_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._pending is not None:
            state, self._pending = self._pending, None
            torch.set_rng_state(state["torch"])
            n = state["numpy"]
            keys = n["keys"].numpy().astype(np.uint32)
            np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
            random.setstate(_as_tuples(state["python"]))
            if state.get("cuda") is not None:
                _restore_cuda_state(list(state["cuda"]))
        if trainer.world_size > 1:
            # every rank starts from the same seed: decorrelate augmentation and masking
            base = int(torch.randint(2**31 - 1, (1,)).item())
            seed = (base * 1_000_003 + trainer.global_rank) % 2**32
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)


def _cuda_state() -> dict[str, list[torch.Tensor]]:
    """``{"cuda": per-device generator states}`` where CUDA is in use here, else ``{}`` (a
    CPU run does not initialise CUDA for this)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"cuda": list(torch.cuda.get_rng_state_all())}
    return {}


def _restore_cuda_state(states: list[torch.Tensor]) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count != len(states):
        log.warning(
            "the checkpoint has the CUDA RNG states of %d device(s), this process sees %d: "
            "not restored (the resumed run draws other random numbers on the GPU)",
            len(states),
            count,
        )
        return
    torch.cuda.set_rng_state_all(states)


class WallClock(Callback):
    """Seconds the run has spent training, counted across resumes (saved in checkpoints).

    Testing the best checkpoint loads its callback states too: a state this process wrote
    is ignored, and an older part's never lowers the count (the last checkpoint had more)."""

    def __init__(self) -> None:
        self.start = time.time()
        self.before = 0.0  # seconds of the earlier parts of a resumed run

    def seconds(self) -> float:
        return self.before + time.time() - self.start

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds(), "process_start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("process_start") == self.start:
            return
        self.before = max(self.before, float(state.get("seconds", 0.0)))


def _as_tuples(value):
    """random.setstate needs tuples where a round trip may have produced lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def check_compatible(module: torch.nn.Module, ckpt_path: str | os.PathLike) -> None:
    """Raise a ConfigError naming the first parameter whose shape differs from the checkpoint's
    (e.g. a checkpoint of another backbone), before any training work."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read checkpoint {ckpt_path}: {e}") from e
    saved = upgrade_state_dict(ckpt.get("state_dict", {}))
    current = module.state_dict()
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    if missing or unexpected:
        raise ConfigError(
            f"{ckpt_path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]} "
            "(was it written with another backbone or objectives?)"
        )
    for key, value in current.items():
        if tuple(saved[key].shape) != tuple(value.shape):
            raise ConfigError(
                f"{ckpt_path} does not fit this model: {key} has shape {tuple(saved[key].shape)} "
                f"in the checkpoint, {tuple(value.shape)} in the model (another backbone?)"
            )
