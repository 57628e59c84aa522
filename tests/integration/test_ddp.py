"""DDP on CPU (gloo): two torchrun processes train like one process on the same global batch."""

import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from fixtures import write_cuhk_fixture
from ranks import run_gloo_ranks
from tbps.app.train import run_training
from tbps.cli import compose_config
from tbps.data.datamodule import TBPSDataModule, draw_seed
from tbps.data.datasets import TrainPairs
from tbps.data.formats import parse_dataset
from tbps.data.images import load_image
from tbps.data.records import training_records
from tbps.data.samplers import IdentitySampler
from tbps.data.sources import ensure_synthetic, load_dataset_section, synthetic_cache_path
from tbps.data.synthetic import SYNTH_MARKER, SynthConfig, generate_synthetic_dataset
from tbps.data.tokenization import train_caption_tokenizer
from tbps.data.transforms import build_image_transforms
from tbps.errors import ConfigError, DataError
from tbps.losses.composition import OBJECTIVES
from tbps.training.distributed import RankAgreement, launched_rank_zero

GLOO = dist.is_available() and dist.is_gloo_available()
needs_gloo = pytest.mark.skipif(not GLOO, reason="torch.distributed with the gloo backend")


# -- before the process group exists ---------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "zero"),
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),  # torchrun
        ({"RANK": "1", "LOCAL_RANK": "1"}, False),
        ({"RANK": "0", "SLURM_PROCID": "1"}, True),  # torchrun inside an srun step
        ({"SLURM_PROCID": "2"}, False),  # srun
        ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # started by Lightning's launcher
        ({"NODE_RANK": "1"}, False),  # Lightning's launcher on the second node
    ],
)
def test_launched_rank_zero_reads_the_launcher_environment(monkeypatch, env, zero):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launched_rank_zero() is zero


SYNTH = {"num_identities": 6, "images_per_identity": [1, 2], "image_height": 48, "image_width": 16}


def test_other_ranks_wait_for_rank_zero_to_generate_the_synthetic_data(tmp_path):
    out = synthetic_cache_path(tmp_path, SYNTH)
    writer = threading.Timer(0.5, generate_synthetic_dataset, (out, SynthConfig(**SYNTH), False))
    writer.start()
    try:
        t0 = time.monotonic()
        assert ensure_synthetic(tmp_path, SYNTH, progress=False, generate=False) == out
        assert time.monotonic() - t0 >= 0.4 and (out / SYNTH_MARKER).is_file()
    finally:
        writer.join()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # generated once, no leftovers


def test_waiting_for_synthetic_data_times_out_with_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"waited 0 s for rank 0 .*synthetic.*no \.tbps_synth"):
        ensure_synthetic(tmp_path, SYNTH, progress=False, generate=False, wait_timeout=0.2)
    assert not (tmp_path / "synthetic").exists()


# -- two gloo ranks in forked processes: samplers and run-folder agreement --------------------
class _Strategy:
    """The two Lightning strategy calls RankAgreement makes, on the default process group."""

    def broadcast(self, obj, src=0):
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def reduce_boolean_decision(self, decision, all=True):  # noqa: A002 - Lightning's name
        votes = torch.tensor(int(decision))
        dist.all_reduce(votes)
        return int(votes) == dist.get_world_size()


def _agree(run_dir, digests):
    agreement = RankAgreement(Path(run_dir), digests)
    trainer = SimpleNamespace(world_size=dist.get_world_size(), strategy=_Strategy())
    try:
        agreement.setup(trainer, None, "fit")
    except ConfigError as e:
        return f"error: {e}"
    return str(agreement.run_dir)


def _indices(loader):
    return [batch["indices"].tolist() for batch in loader]


def _rank_main(rank, dataset, tokenizer):
    batches = {}
    for sampler in ("random", "identity"):
        dm = _datamodule(dataset, tokenizer, batch_size=4, sampler=sampler)
        batches[sampler] = _indices(dm.train_dataloader())
    folders = [
        _agree(f"/runs/stamp-of-rank-{rank}", {"config": "c", "tokenizer": "t"}),
        _agree(f"/runs/stamp-of-rank-{rank}", {"config": "c", "tokenizer": f"t{rank}"}),
        _agree(f"/runs/stamp-of-rank-{rank}", {"config": f"c{rank}", "data": "d"}),
        _agree(f"/runs/stamp-of-rank-{rank}", {"config": "c", "data": f"d{rank}"}),
    ]
    return batches, folders


def _datamodule(dataset, tokenizer, **kwargs):
    return TBPSDataModule(
        dataset, tokenizer, image_size=(32, 16), text_length=16, augment="none", seed=5, **kwargs
    )


@needs_gloo
def test_two_gloo_ranks_shard_the_training_batches_and_agree_on_the_run_folder(tmp_path):
    root = tmp_path / "cuhk"
    write_cuhk_fixture(root, {"train": 8, "val": 2, "test": 2}, images_per_id=2)
    dataset = parse_dataset("cuhk_pedes", root)
    captions = [c for img in dataset.split("train") for c in img.captions]
    tokenizer = train_caption_tokenizer(captions, vocab_size=200, min_frequency=1)

    results = run_gloo_ranks(_rank_main, tmp_path / "store", dataset, tokenizer, timeout=120)

    # random sampler: at every step the two ranks' batches of 4 make up the single-process
    # batch of 8 (rank r takes positions r, r + 2, ... of the same epoch permutation)
    single = _indices(_datamodule(dataset, tokenizer, batch_size=8).train_dataloader())
    ranks = [results[r][0]["random"] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 4
    for step, batch in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)

    # identity sampler: each rank gets whole P x K batches (P = 1, K = 4) of one global
    # schedule, the ranks' batches are disjoint and together the schedule's first 2n batches
    records = _datamodule(dataset, tokenizer, batch_size=4).build_train().records
    pids, image_ids = [r.pid for r in records], [r.image_id for r in records]
    schedule = IdentitySampler(pids, 4, 4, image_ids, num_replicas=1, rank=0, seed=5).schedule(0)
    identity = [results[r][0]["identity"] for r in range(2)]
    assert len(identity[0]) == len(identity[1]) > 0
    for batch in identity[0] + identity[1]:
        assert len(batch) == 4 and len({pids[i] for i in batch}) == 1
    assert not {tuple(b) for b in identity[0]} & {tuple(b) for b in identity[1]}
    assert identity[0] == schedule[0 : 2 * len(identity[0]) : 2]
    assert identity[1] == schedule[1 : 2 * len(identity[1]) : 2]

    # rank 1 adopts rank 0's run folder; a config, data or tokenizer mismatch stops every rank
    for rank in range(2):
        adopted, tokenizer, config, data = results[rank][1]
        assert adopted == "/runs/stamp-of-rank-0"
        assert tokenizer.startswith("error: the ranks built different tokenizers")
        assert config.startswith("error: the ranks were started with different configurations")
        assert data.startswith("error: the ranks read different data")


# -- torchrun end to end -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SEED = 3
COMMON = [
    "debug=tiny",  # tiny synthetic data, tiny scratch CLIP
    "+objectives.id={weight: 0.5}",  # a per-sample objective next to the batch-level ITC/SDM
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    f"seed={SEED}",
]


def _record_training(record: dict, setattr_, images: bool = False) -> None:
    """Patch tbps (with ``setattr_``, e.g. ``monkeypatch.setattr``) to append to ``record``:

    - ``losses``: every objective of every training step, as compute_losses returned them;
    - ``batches``: per training step the batch's dataset indices, the draw seeds its samples
      were loaded with, the loader worker that collated it (-1: the main process) and, with
      ``images``, the (augmented) images.
    The collator runs in the loader workers: patched before they start, they inherit it.
    """
    from tbps.data.datasets import Collator
    from tbps.training import module as module_mod

    collate, compute, step = (
        Collator.__call__,
        module_mod.compute_losses,
        module_mod.TBPSLightningModule.training_step,
    )

    def collate_with_draws(self, samples):
        batch = collate(self, samples)
        if "seed" in samples[0]:  # training samples: loaded as (index, draw seed)
            info = torch.utils.data.get_worker_info()
            batch["draw_seeds"] = torch.tensor([s["seed"] for s in samples], dtype=torch.long)
            batch["loader_worker"] = torch.tensor(-1 if info is None else info.id)
        return batch

    def recorded_losses(*args, **kwargs):
        losses = compute(*args, **kwargs)
        record["losses"].append({k: float(v.detach()) for k, v in losses.items()})
        return losses

    def recorded_step(self, batch, batch_idx):
        record["batches"].append(
            {
                "step": int(self.global_step),
                "indices": batch["indices"].tolist(),
                "draw_seeds": batch["draw_seeds"].tolist(),
                "worker": int(batch["loader_worker"]),
                "images": batch["images"].detach().clone() if images else None,
            }
        )
        return step(self, batch, batch_idx)

    setattr_(Collator, "__call__", collate_with_draws)
    setattr_(module_mod, "compute_losses", recorded_losses)
    setattr_(module_mod.TBPSLightningModule, "training_step", recorded_step)


def _recording_main() -> None:
    """torchrun entry point (``-m test_ddp``): ``tbps <argv>`` with :func:`_record_training`;
    each rank saves its record in ``$TBPS_TEST_RECORD/rank<RANK>.pt``."""
    from tbps.cli import main

    record: dict = {"losses": [], "batches": []}
    _record_training(record, setattr, images=os.environ.get("TBPS_TEST_RECORD_IMAGES") == "1")
    code = main(sys.argv[1:])
    torch.save(record, Path(os.environ["TBPS_TEST_RECORD"]) / f"rank{os.environ['RANK']}.pt")
    sys.exit(code)


def _torchrun(tmp_path: Path, cache: Path, record: Path, *overrides: str, images: bool = False):
    """``tbps train COMMON overrides`` on 2 CPU ranks (DDP, gloo) started by torchrun, each
    recording its steps (:func:`_recording_main`); returns the two ranks' records."""
    record.mkdir()
    tests = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TBPS_CACHE": str(cache),
        "TBPS_TEST_RECORD": str(record),
        "TBPS_TEST_RECORD_IMAGES": "1" if images else "0",
        "PYTHONPATH": os.pathsep.join(
            [str(tests / "integration"), str(tests), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "SLURM_PROCID"):
        env.pop(key, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",  # what the torchrun script runs
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "test_ddp",  # this file: `tbps` plus the recording
        "train",
        *COMMON,
        "trainer.strategy=ddp",
        "trainer.devices=2",
        *overrides,
    ]
    proc = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(record / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _column(run_dir: Path, name: str) -> dict[int, float]:
    """``{step: value}`` of one metrics.csv column (the rows that have it)."""
    with open(run_dir / "logs" / "metrics.csv") as f:
        return {int(r["step"]): float(r[name]) for r in csv.DictReader(f) if r.get(name)}


def _train_captions(cache: Path) -> int:
    cfg = compose_config("train", COMMON)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    dataset = load_dataset_section(data, cache, progress=False, generate=False)
    return sum(len(image.captions) for image in dataset.split("train"))


@needs_gloo
def test_torchrun_two_processes_match_one_process_on_the_same_global_batch(tmp_path, monkeypatch):
    """2 ranks x batch 8 (random sampler) against 1 process x batch 16, same seed and data,
    objectives ITC + SDM (batch-level: over the gathered global batch) + ID (per sample).

    Per-step losses, gradient norms and test metrics agree up to float rounding, not bit for
    bit: each rank encodes 8 samples instead of 16 (other matmul blocking), gathers the
    embeddings in another order, and DDP averages two partial gradients (another reduction
    order), so the weights drift by ~1e-7 relative per step. The gradient norm checks the
    gradients' scale, which AdamW's normalised updates (and so the losses) would hide.
    """
    cache = tmp_path / "cache"  # not pre-generated: rank 1 waits for rank 0 to write it
    runs = tmp_path / "runs"
    ranks = _torchrun(
        tmp_path,
        cache,
        tmp_path / "record-ddp",
        f"runs_dir={runs}",  # default timestamped folder: the ranks must agree on it
        "loader.batch_size=8",
    )
    folders = list((runs / "synthetic-scratch_tiny").iterdir())
    assert len(folders) == 1, folders  # rank 1 created no folder of its own
    ddp_dir = folders[0]
    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and ddp["run_dir"] == str(ddp_dir)
    assert (
        "DDP: 2 processes x loader.batch_size 8 x 1 accumulated = 16 samples per step"
        in (ddp_dir / "train.log").read_text()
    )

    single_record: dict = {"losses": [], "batches": []}
    _record_training(single_record, monkeypatch.setattr)
    cfg = compose_config(
        "train",
        [*COMMON, f"run_dir={tmp_path / 'single'}", f"cache_dir={cache}", "loader.batch_size=16"],
    )
    single = run_training(cfg)
    monkeypatch.undo()
    assert single["world_size"] == 1

    captions = _train_captions(cache)
    steps = captions // 16  # one epoch, the last partial global batch dropped
    assert steps >= 3
    assert ddp["steps"] == single["steps"] == steps
    assert [len(r["losses"]) for r in ranks] == [steps, steps]
    assert len(single_record["losses"]) == steps
    # at every step the two ranks' batches of 8 are the single process's batch of 16
    seen = set()
    for step in range(steps):
        batches = [r["batches"][step] for r in ranks]
        assert [b["step"] for b in batches] == [step, step]
        assert single_record["batches"][step]["step"] == step
        assert [len(b["indices"]) for b in batches] == [8, 8]
        assert sorted(batches[0]["indices"] + batches[1]["indices"]) == sorted(
            single_record["batches"][step]["indices"]
        )
        seen.update(batches[0]["indices"] + batches[1]["indices"])
    assert len(seen) == steps * 16 and seen <= set(range(captions))

    # per step: batch-level objectives are the same on both ranks and equal the single
    # process's; per-sample ones (ID) average over the ranks to the single process's
    names = set(single_record["losses"][0])
    assert names == {"total", "itc", "sdm", "id"}
    assert {n for n in names if n != "total" and not OBJECTIVES[n].batch_level} == {"id"}
    for step, want in enumerate(single_record["losses"]):
        got = [r["losses"][step] for r in ranks]
        assert set(got[0]) == set(got[1]) == names
        for name in names:
            mean = (got[0][name] + got[1][name]) / 2
            assert mean == pytest.approx(want[name], rel=1e-4), (step, name)
            if name != "total" and OBJECTIVES[name].batch_level:
                assert got[0][name] == pytest.approx(got[1][name], rel=1e-5), (step, name)
        assert got[0]["id"] != got[1]["id"]  # each rank's own samples
    # the logs: per-step values are rank 0's (unsynced); the epoch means over both ranks are
    # reduced once; the gradient norm (DDP-averaged gradients) is the single process's
    logged, logged_single = (
        _column(ddp_dir, "train/loss"),
        _column(tmp_path / "single", "train/loss"),
    )
    assert sorted(logged) == sorted(logged_single) == list(range(steps))
    for step in range(steps):
        assert logged[step] == pytest.approx(ranks[0]["losses"][step]["total"], rel=1e-6)
        assert logged_single[step] == pytest.approx(
            single_record["losses"][step]["total"], rel=1e-6
        )
    for name in names:
        column = "train/loss_epoch" if name == "total" else f"train/{name}_epoch"
        (epoch_mean,) = _column(ddp_dir, column).values()
        want = sum(r[name] for r in single_record["losses"]) / steps
        assert epoch_mean == pytest.approx(want, rel=1e-4), name
    assert not _column(tmp_path / "single", "train/loss_epoch")  # one process: as before
    norms, norms_single = (
        _column(ddp_dir, "train/grad_norm"),
        _column(tmp_path / "single", "train/grad_norm"),
    )
    assert sorted(norms) == sorted(norms_single) == list(range(steps))
    for step, norm in norms_single.items():
        assert norms[step] == pytest.approx(norm, rel=1e-3), step

    for which in ("last", "best"):
        for task in ("t2i", "i2t"):
            got, want = ddp["test"][which][task], single["test"][which][task]
            assert got["num_queries"] == want["num_queries"] > 0
            for key in ("R1", "R5", "R10", "mAP", "mINP"):
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-4), (which, task)
    assert ddp["best_val"]["val/t2i/R1"] == pytest.approx(single["best_val"]["val/t2i/R1"])


@needs_gloo
def test_torchrun_ranks_loader_workers_draw_different_augmentations(tmp_path):
    """IRRA augmentation, 2 loader workers per rank: every training sample is augmented (in a
    worker) from its draw seed alone, and the seeds depend on the rank, so the two ranks'
    workers draw different augmentations (not the same crops, flips and erasings)."""
    cache = tmp_path / "cache"
    limit = 2
    ranks = _torchrun(
        tmp_path,
        cache,
        tmp_path / "record",
        f"run_dir={tmp_path / 'run'}",
        "augment=irra",
        "loader.num_workers=2",
        "loader.batch_size=8",
        f"trainer.limit_train_batches={limit}",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "report.failures=0",
        images=True,
    )
    cfg = compose_config("train", [*COMMON, "augment=irra"])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    records, _ = training_records(
        load_dataset_section(data, cache, progress=False, generate=False).split("train")
    )
    train, plain = build_image_transforms(
        "irra", cfg.backbone.image_size, cfg.augment.mean, cfg.augment.std
    )
    pairs = TrainPairs(records, train)
    draws = []
    for rank, record in enumerate(ranks):
        batches = record["batches"]
        assert [b["step"] for b in batches] == list(range(limit))
        assert {b["worker"] for b in batches} == {0, 1}  # loaded by the two workers in turn
        flat = [(i, s) for b in batches for i, s in zip(b["indices"], b["draw_seeds"])]
        # the seed of the position-th draw of this rank in epoch 0
        assert [s for _, s in flat] == [draw_seed(SEED, 0, rank, p) for p in range(len(flat))]
        images = torch.cat([b["images"] for b in batches])
        augmented = 0
        for (index, seed), image in zip(flat, images):
            # the worker's image is the seeded augmentation of the sample, nothing else
            assert torch.equal(image, pairs[(index, seed)]["image"]), (rank, index)
            augmented += not torch.allclose(image, plain(load_image(records[index].image_path)))
        assert augmented >= len(flat) - 1  # an augmentation may leave one image as it was
        draws.append(flat)
    assert not {s for _, s in draws[0]} & {s for _, s in draws[1]}  # no seed in common
    # rank 1's samples drawn with rank 0's seeds (same positions) would look different
    differ = sum(
        not torch.equal(pairs[(index, seed)]["image"], pairs[(index, other)]["image"])
        for (index, seed), (_, other) in zip(draws[1], draws[0])
    )
    assert differ >= len(draws[1]) - 1


if __name__ == "__main__":  # `python -m test_ddp ...`: a torchrun rank of the tests above
    _recording_main()
