"""One-shot GPU check: IRRA training speed (tbps vs bare PyTorch), ICFG-size eval, 2-GPU DDP.

    python bench/gpu_check.py [--device auto|cuda|cpu] [--steps N] [--tiny] [--json PATH]
                              [--budget SECONDS] [--sections a,b,c]

(a) train: the IRRA recipe (SDM + ID + MLM, configs/objectives/irra.yaml, optimizer
    configs/optim/irra.yaml, fixed temperature 0.02) on a random CLIP ViT-B/16 (vision 768 wide,
    12 layers, 12 heads, patch 16; text 512/12/8, 77 tokens, vocabulary 49408; embedding 512) at
    384x128, batch 64, 11,003 identities, synthetic batches made up front. "framework" is
    ``TBPSLightningModule`` under a real ``lightning.Trainer`` (bf16-mixed, CSV logger,
    LearningRateMonitor, log_every_n_steps 10, as ``tbps train``); "bare" is a plain loop over the
    same weights, batches, optimizer groups and schedule: forward under ``torch.autocast``
    (bf16), the tbps loss functions (sdm, id_loss, mlm_loss) called directly, backward, step.
    Order bare -> framework -> bare; s/iteration over the measured steps after warm-up (wall
    clock, synchronised), images/s and peak GPU memory of the measured steps.
(b) eval: ``tbps eval`` (``tbps.cli.main``) of a random ViT-B/16 model folder (CLIP BPE
    tokenizer) on a generated dataset in the ICFG-PEDES format with the size of its test split
    (1,000 identities, 19,848 images, one caption each); images rendered by the synthetic
    generator at 384x128 (past the render budget the rest are copies of rendered ones).
    Encoding and metrics are timed by wrapping tbps.evaluation.split's two calls.
(c) ddp: the framework path of (a) on 2 GPUs (strategy ddp), when there are two.

``--tiny`` runs the same code paths at tiny sizes (on CPU within about a minute). The results go
to a markdown table on stdout and to JSON (``--json``, default ``$OUT/gpu_check.json`` when OUT
is set). Each section has a time budget; the whole stays under ``--budget`` (default 450 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "src" / "tbps" / "configs"
BOS, EOS, VOCAB = 49406, 49407, 49408  # the CLIP tokenizer's ids
MASK = 49405  # stand-in mask id (pretrained tokenizers get an added <|mask|>)
NUM_CLASSES = 11003  # CUHK-PEDES train identities (IRRA's anchor is on CUHK-PEDES)
ICFG_TEST_IDS, ICFG_TEST_IMAGES = 1000, 19848
ANCHOR_IRRA = "IRRA: ~0.42 s/it, batch 64, A6000"
ANCHOR_RDE = "RDE: 9.5-10.5 GB, 3090"
TARGET_RATIO = 1.05
SECTIONS = ("a", "b", "c")
SECTION_NAMES = {"a": "a: IRRA train step", "b": "b: tbps eval ICFG-size", "c": "c: 2-GPU DDP"}


# -- sizes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Model, batch and data sizes of one run (real or tiny)."""

    height: int = 384
    width: int = 128
    vision: tuple[int, int, int] = (768, 12, 12)  # width, layers, heads
    text: tuple[int, int, int, int] = (512, 12, 8, 77)  # width, layers, heads, length
    embed: int = 512
    batch: int = 64
    num_classes: int = NUM_CLASSES
    warmup: int = 5
    steps: int = 40
    eval_ids: int = ICFG_TEST_IDS
    eval_images: int = ICFG_TEST_IMAGES
    render: tuple[int, int] = (384, 128)  # rendered image size (height, width) for (b)
    eval_batch: int = 256


TINY = Sizes(
    height=64,
    width=32,
    vision=(64, 2, 2),
    text=(64, 2, 2, 32),
    embed=64,
    batch=8,
    num_classes=100,
    warmup=2,
    steps=3,
    eval_ids=20,
    eval_images=50,
    render=(64, 32),
    eval_batch=16,
)


@dataclass
class Result:
    """One section's outcome: status (ok / failed / skipped), metrics, table rows, notes."""

    name: str
    status: str = "ok"
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # metric, value, anchor
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def row(self, metric: str, value: str, anchor: str = "") -> None:
        self.rows.append((metric, value, anchor))


def say(*parts: Any) -> None:
    """Print progress at once (the output may go to a pipe)."""
    print(*parts, flush=True)


# -- shared pieces -------------------------------------------------------------------------------
class TokenIds:
    """The CLIP tokenizer's size and special ids: all that the model spec reads from one."""

    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, EOS

    def __len__(self) -> int:
        return VOCAB


def model_spec(sizes: Sizes, tokenizer: Any = None) -> dict[str, Any]:
    """Spec of a random CLIP (openai/clip-vit-base-patch16 layout at real sizes), tau 0.02."""
    from tbps.model.factory import scratch_model_spec

    vw, vl, vh = sizes.vision
    tw, tl, th, length = sizes.text
    return scratch_model_spec(
        tokenizer if tokenizer is not None else TokenIds(),
        image_size=(sizes.height, sizes.width),
        patch_size=16,
        vision={"width": vw, "layers": vl, "heads": vh},
        text={"width": tw, "layers": tl, "heads": th, "length": length},
        embed_dim=sizes.embed,
        temperature=0.02,  # IRRA's fixed tau (configs/recipe/irra.yaml)
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """A plain config file (no Hydra defaults or interpolation)."""
    import yaml

    return yaml.safe_load(path.read_text())


def irra_objectives() -> dict[str, Any]:
    return read_yaml(CONFIGS / "objectives" / "irra.yaml")


def irra_optim() -> dict[str, Any]:
    return read_yaml(CONFIGS / "optim" / "irra.yaml")


def make_batches(count: int, sizes: Sizes, seed: int = 0) -> list[dict[str, Any]]:
    """Random IRRA batches: images, captions of 15-45 tokens, their MLM copy (tbps's masker,
    15%), pids where each identity appears twice, dataset indices."""
    import torch

    from tbps.data.mlm import TokenMasker

    length = sizes.text[3]
    masker = TokenMasker(MASK, VOCAB, [BOS, EOS, MASK], probability=0.15)
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(count):
        batch = sizes.batch
        ids = torch.randint(0, MASK, (batch, length), generator=gen)
        mask = torch.zeros(batch, length, dtype=torch.long)
        for row, n in enumerate(torch.randint(15, 46, (batch,), generator=gen).tolist()):
            n = min(n, length - 1)
            ids[row, 0] = BOS
            ids[row, n:] = EOS
            mask[row, : n + 1] = 1
        masked, labels = masker(ids, mask, generator=gen)
        people = torch.randperm(sizes.num_classes, generator=gen)[: (batch + 1) // 2]
        batches.append(
            {
                "images": torch.randn(batch, 3, sizes.height, sizes.width, generator=gen),
                "input_ids": ids,
                "attention_mask": mask,
                "mlm_input_ids": masked,
                "mlm_labels": labels,
                "pids": people.repeat_interleave(2)[:batch],
                "indices": torch.arange(b * batch, (b + 1) * batch),
            }
        )
    return batches


class Cycle:
    """A map-style dataset of ``length`` items cycling over ready-made batches."""

    def __init__(self, batches: list[dict[str, Any]], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batches[index % len(self.batches)]


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: Any) -> tuple[float, float]:
    """(peak allocated, peak reserved) GiB since the last reset; NaN off CUDA."""
    import torch

    if device.type != "cuda":
        return math.nan, math.nan
    gib = 1024**3
    return (
        torch.cuda.max_memory_allocated(device) / gib,
        torch.cuda.max_memory_reserved(device) / gib,
    )


def memory(allocated: float, reserved: float) -> str:
    """``allocated / reserved GiB``, or n/a off CUDA."""
    if math.isnan(allocated):
        return "n/a (no GPU)"
    return f"{allocated:.2f} / {reserved:.2f} GiB"


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_module(spec: dict[str, Any], sizes: Sizes):
    """The framework's module, as ``tbps train`` builds it for the IRRA recipe."""
    from tbps.losses import resolve_objectives
    from tbps.training.module import TBPSLightningModule

    return TBPSLightningModule(
        model_spec=spec,
        objectives=resolve_objectives(irra_objectives()),
        num_classes=sizes.num_classes,
        optim=irra_optim(),
    )


# -- (a) bare loop -------------------------------------------------------------------------------
class BareIRRA:
    """Plain PyTorch IRRA step: the same towers, heads, optimizer groups and schedule, the tbps
    loss functions called directly, no Lightning and no tbps training step."""

    def __init__(
        self,
        spec: dict[str, Any],
        state: dict[str, Any],
        trainable: dict[str, bool],
        sizes: Sizes,
        total_steps: int,
        device: Any,
        amp: bool,
    ) -> None:
        import torch
        from torch import nn

        from tbps.model.tbps import TBPSModel
        from tbps.training.heads import TrainingHeads
        from tbps.training.optim import OptimSettings, build_scheduler

        net = nn.Module()
        net.model = TBPSModel.from_spec(spec)
        model = net.model
        net.heads = TrainingHeads(
            embed_dim=model.embed_dim,
            vision_width=model.vision_width,
            text_width=model.text_width,
            vocab_size=model.vocab_size,
            num_classes=sizes.num_classes,
            mlm_layers=irra_objectives()["mlm"]["layers"],
        )
        net.load_state_dict(state)
        for name, param in net.named_parameters():
            param.requires_grad_(trainable[name])
        self.net = net.to(device).train()
        self.weights = {k: float(v["weight"]) for k, v in irra_objectives().items()}
        settings = OptimSettings.from_mapping(irra_optim())
        self.optimizer = settings.build_optimizer(self.net)  # torch.optim.Adam over groups
        schedule = settings.schedule_for(total_steps, total_steps)
        self.scheduler = build_scheduler(self.optimizer, schedule)  # torch LambdaLR
        self.device, self.amp = device, amp
        self.dtype = torch.bfloat16

    def __call__(self, batch: dict[str, Any]):
        import torch

        from tbps.losses import id_loss, mlm_loss, sdm

        b = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        model, heads, w = self.net.model, self.net.heads, self.weights
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
            image = model.image_forward(b["images"], tokens=True)
            text = model.text_forward(b["input_ids"], b["attention_mask"])
            masked = model.text_forward(b["mlm_input_ids"], b["attention_mask"], tokens=True)
            positions = b["mlm_labels"] != -100
            mlm_logits = heads.mlm(
                masked.tokens, b["attention_mask"], image.tokens, positions=positions
            )
            classifier = heads.id_classifier
            loss = (
                w["sdm"] * sdm(image.embeds, text.embeds, b["pids"], model.logit_scale())
                + w["id"] * id_loss(classifier(image.embeds), classifier(text.embeds), b["pids"])
                + w["mlm"] * mlm_loss(mlm_logits, b["mlm_labels"][positions])
            )
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss.detach()


def run_bare(
    spec: dict[str, Any],
    state: dict[str, Any],
    trainable: dict[str, bool],
    batches: list[dict[str, Any]],
    sizes: Sizes,
    steps: int | Callable[[float], int],
    device: Any,
    amp: bool,
) -> dict[str, Any]:
    """Warm-up, then ``steps`` timed steps (a callable gets the warm-up step time and returns
    the count). Returns s/it, peak memory, first loss and the warm-up step time."""
    warm = sizes.warmup
    total = warm + (steps if isinstance(steps, int) else 10_000)
    bare = BareIRRA(spec, state, trainable, sizes, total, device, amp)
    first_loss = None
    warm_times = []
    for k in range(warm):
        synchronize(device)
        t = time.perf_counter()
        loss = bare(batches[k % len(batches)])
        synchronize(device)
        warm_times.append(time.perf_counter() - t)
        if k == 0:
            first_loss = float(loss)
    estimate = warm_times[-1]
    n = steps if isinstance(steps, int) else steps(estimate)
    reset_peak(device)
    synchronize(device)
    t0 = time.perf_counter()
    losses = [bare(batches[(warm + k) % len(batches)]) for k in range(n)]
    synchronize(device)
    seconds = (time.perf_counter() - t0) / n
    allocated, reserved = peak_gib(device)
    last = float(losses[-1])
    del bare, losses
    free_memory()
    return {
        "s_per_it": seconds,
        "steps": n,
        "warmup_step_s": estimate,
        "first_loss": first_loss,
        "last_loss": last,
        "peak_alloc_gib": allocated,
        "peak_reserved_gib": reserved,
    }


# -- (a) framework -------------------------------------------------------------------------------
def window_timer(start: int, end: int, device: Any):
    """A Lightning callback timing batches [start, end) (start hook to start hook, so each
    measured step includes the framework's work between steps) and the peak memory there."""
    from lightning.pytorch.callbacks import Callback

    class WindowTimer(Callback):
        def __init__(self) -> None:
            self.t0 = self.t1 = None
            self.first_loss: float | None = None
            self.peak = (math.nan, math.nan)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx in (start, end):
                synchronize(device)
                now = time.perf_counter()
                if batch_idx == start:
                    self.t0 = now
                    reset_peak(device)
                else:
                    self.t1 = now
                    self.peak = peak_gib(device)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 0:
                self.first_loss = float(outputs["loss"])

    return WindowTimer()


def framework_trainer_kwargs(precision: str, accelerator: str, devices: int) -> dict[str, Any]:
    """The Trainer settings ``tbps train`` uses (configs/trainer/default.yaml, logger csv)."""
    kwargs = {
        "accelerator": accelerator,
        "devices": devices,
        "precision": precision,
        "log_every_n_steps": 10,
        "enable_progress_bar": False,  # tbps train: off when stdout is no terminal
        "enable_checkpointing": False,  # only at epoch ends, outside a max_steps run
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    if devices > 1:
        kwargs["strategy"] = "ddp"
    return kwargs


def run_framework(
    module: Any,
    batches: list[dict[str, Any]],
    sizes: Sizes,
    steps: int,
    device: Any,
    precision: str,
    devices: int = 1,
) -> dict[str, Any]:
    """Fit ``module`` for warm-up + ``steps`` (+1) steps under lightning.Trainer; time the
    measured window."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    warm = sizes.warmup
    total = warm + steps + 1  # the last step only closes the window
    timer = window_timer(warm, warm + steps, device)
    # under DDP each rank reads 1/devices of the items: give every rank `total` batches
    loader = DataLoader(Cycle(batches, total * devices), batch_size=None, shuffle=False)
    accelerator = "cuda" if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory(prefix="tbps-gpu-check-") as tmp:
        trainer = L.Trainer(
            max_steps=total,
            max_epochs=1,
            logger=CSVLogger(tmp, name="logs"),
            callbacks=[timer, LearningRateMonitor(logging_interval="step")],
            default_root_dir=tmp,
            **framework_trainer_kwargs(precision, accelerator, devices),
        )
        trainer.fit(module, train_dataloaders=loader)
        rank = trainer.global_rank
    if timer.t0 is None or timer.t1 is None:
        raise RuntimeError(f"the measured window was not reached ({trainer.global_step} steps)")
    return {
        "s_per_it": (timer.t1 - timer.t0) / steps,
        "steps": steps,
        "first_loss": timer.first_loss,
        "peak_alloc_gib": timer.peak[0],
        "peak_reserved_gib": timer.peak[1],
        "rank": rank,
    }


def section_train(ctx: Context) -> Result:
    """(a): bare -> framework -> bare on the same weights and batches."""
    import torch

    res = Result(SECTION_NAMES["a"])
    sizes, device = ctx.sizes, ctx.device
    budget = ctx.budget_for("a")
    t_start = time.perf_counter()
    amp = ctx.precision == "bf16-mixed"
    torch.manual_seed(0)
    spec = model_spec(sizes)
    module = build_module(spec, sizes)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainable = {n: p.requires_grad for n, p in module.named_parameters()}
    params = sum(p.numel() for p in module.parameters())
    batches = make_batches(min(8, sizes.warmup + sizes.steps + 1), sizes)
    build_s = time.perf_counter() - t_start
    say(
        f"[a] model {params / 1e6:.1f}M parameters (heads included), {sizes.height}x{sizes.width}, "
        f"batch {sizes.batch}, {ctx.precision}, built in {build_s:.1f} s"
    )

    def choose_steps(step_s: float) -> int:
        # three timed runs plus warm-ups and two model builds share what is left of the budget
        left = budget - (time.perf_counter() - t_start) - 3 * build_s
        per_run = left / 3 - sizes.warmup * step_s
        n = max(min(3, ctx.steps), min(ctx.steps, int(per_run / max(step_s, 1e-6))))
        if n < ctx.steps:
            res.notes.append(
                f"steps cut from {ctx.steps} to {n} by the time budget ({budget:.0f} s)"
            )
        return n

    bare1 = run_bare(spec, state, trainable, batches, sizes, choose_steps, device, amp)
    n = bare1["steps"]
    say(f"[a] bare (1): {bare1['s_per_it']:.4f} s/it over {n} steps")
    fw = run_framework(module, batches, sizes, n, device, ctx.precision)
    say(f"[a] framework: {fw['s_per_it']:.4f} s/it over {n} steps")
    del module
    free_memory()
    bare2 = run_bare(spec, state, trainable, batches, sizes, n, device, amp)
    say(f"[a] bare (2): {bare2['s_per_it']:.4f} s/it over {n} steps")
    # the faster bare run is the reference (conservative: noise can only raise the ratio)
    bare_s = min(bare1["s_per_it"], bare2["s_per_it"])
    ratio = fw["s_per_it"] / bare_s
    ratio_mean = fw["s_per_it"] / statistics.fmean([bare1["s_per_it"], bare2["s_per_it"]])
    res.metrics = {
        "parameters_m": round(params / 1e6, 2),
        "batch": sizes.batch,
        "image_size": [sizes.height, sizes.width],
        "precision": ctx.precision,
        "warmup_steps": sizes.warmup,
        "measured_steps": n,
        "framework": fw,
        "bare_1": bare1,
        "bare_2": bare2,
        "ratio_framework_over_bare": ratio,
        "ratio_framework_over_bare_mean": ratio_mean,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
    }
    b = sizes.batch
    res.row("framework s/it", f"{fw['s_per_it']:.4f}", ANCHOR_IRRA)
    res.row("framework images/s", f"{b / fw['s_per_it']:.1f}")
    res.row(
        "bare s/it (faster of 2 runs; both)",
        f"{bare_s:.4f} ({bare1['s_per_it']:.4f}, {bare2['s_per_it']:.4f})",
    )
    res.row("bare images/s", f"{b / bare_s:.1f}")
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    res.row(
        "ratio framework/bare",
        f"{ratio:.3f} ({verdict} <= {TARGET_RATIO}; vs mean bare {ratio_mean:.3f})",
    )
    res.row(
        "framework peak GPU memory (alloc / reserved)",
        memory(fw["peak_alloc_gib"], fw["peak_reserved_gib"]),
        ANCHOR_RDE,
    )
    res.row(
        "bare peak GPU memory (alloc / reserved)",
        memory(bare1["peak_alloc_gib"], bare1["peak_reserved_gib"]),
    )
    res.row(
        "first-step loss framework / bare",
        f"{fw['first_loss']:.4f} / {bare1['first_loss']:.4f}",
    )
    res.notes.append(
        f"{n} measured steps after {sizes.warmup} warm-up steps per run; batch {b}, "
        f"{sizes.height}x{sizes.width}, {ctx.precision}"
    )
    return res


# -- (b) eval ------------------------------------------------------------------------------------
_PERSONS: list[Any] = []


def _render_init(num_identities: int) -> None:
    from tbps.data import synthetic as S

    _PERSONS[:] = S.sample_identities(S.SynthConfig(num_identities=num_identities))


def _render_one(task: tuple[str, int, int, str, int, int]) -> tuple[str, int, str, str]:
    """Render and save one image of ``pid``; returns (split, pid, relative path, caption)."""
    from tbps.data import synthetic as S

    split, pid, k, root, height, width = task
    person = _PERSONS[pid - 1]
    rng = S.image_rng(0, pid, k)
    shot = S.sample_shot(rng)
    img = S.render_image(person, shot, rng, height, width)
    rel = f"{split}/{pid:04d}/{pid:04d}_{k + 1:02d}.jpg"
    path = Path(root) / "imgs" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)
    en, _ = S.make_captions(person, shot, 1, 0, k, vietnamese=False)
    return split, pid, rel, en[0]


def icfg_tasks(sizes: Sizes, root: Path) -> list[tuple[str, int, int, str, int, int]]:
    """Test split with ``eval_ids`` identities and exactly ``eval_images`` images (ICFG-PEDES
    test: 1,000 / 19,848), plus a small train split (the format's val is carved from it)."""
    ids, images = sizes.eval_ids, sizes.eval_images
    base, extra = divmod(images, ids)
    h, w = sizes.render
    tasks = []
    for i in range(ids):
        pid = i + 1
        for k in range(base + (1 if i < extra else 0)):
            tasks.append(("test", pid, k, str(root), h, w))
    train_ids = max(4, ids // 50)
    for i in range(train_ids):
        pid = ids + i + 1
        for k in range(2):
            tasks.append(("train", pid, k, str(root), h, w))
    return tasks


def write_icfg_dataset(sizes: Sizes, root: Path, budget_s: float) -> dict[str, Any]:
    """Render the images in a process pool; past ``budget_s`` the rest reuse (copy) a rendered
    image of the same person, so the split keeps its size. Writes ICFG-PEDES.json."""
    import multiprocessing as mp

    tasks = icfg_tasks(sizes, root)
    n_ids = sizes.eval_ids + max(4, sizes.eval_ids // 50)
    workers = max(1, min(16, os.cpu_count() or 1))
    t0 = time.perf_counter()
    done: dict[int, tuple[str, int, str, str]] = {}
    # first each person's first image (so every later one has something to copy), then the rest
    order = sorted(range(len(tasks)), key=lambda i: (tasks[i][2] > 0, i))
    firsts = sum(1 for t in tasks if t[2] == 0)
    ctx = mp.get_context("spawn")  # the parent may hold CUDA; spawned workers import no torch
    with ctx.Pool(workers, initializer=_render_init, initargs=(n_ids,)) as pool:
        results = pool.imap(_render_one, [tasks[i] for i in order], chunksize=16)
        for i in order:
            done[i] = next(results)
            if len(done) >= firsts and time.perf_counter() - t0 > budget_s:
                pool.terminate()
                break
    rendered = len(done)
    first: dict[int, str] = {pid: rel for (_, pid, rel, _) in done.values()}
    captions: dict[int, str] = {pid: cap for (_, pid, _, cap) in done.values()}
    for i, (split, pid, k, _, _, _) in enumerate(tasks):
        if i in done:
            continue
        rel = f"{split}/{pid:04d}/{pid:04d}_{k + 1:02d}.jpg"
        shutil.copyfile(root / "imgs" / first[pid], root / "imgs" / rel)
        done[i] = (split, pid, rel, captions[pid] + f" (view {k + 1})")
    records = [
        {"split": s, "id": pid, "file_path": rel, "captions": [cap]}
        for s, pid, rel, cap in (done[i] for i in range(len(tasks)))
    ]
    (root / "ICFG-PEDES.json").write_text(json.dumps(records))
    test = [r for r in records if r["split"] == "test"]
    return {
        "test_ids": len({r["id"] for r in test}),
        "test_images": len(test),
        "test_captions": len(test),
        "train_images": len(records) - len(test),
        "rendered": rendered,
        "copied": len(records) - rendered,
        "render_size": list(sizes.render),
        "workers": workers,
        "seconds": time.perf_counter() - t0,
    }


def write_model_folder(sizes: Sizes, folder: Path) -> int:
    """A random ViT-B/16 (same sizes as (a)) with CLIP's BPE tokenizer, as tbps export writes."""
    import torch

    from tbps.model.convert import clip_bpe_tokenizer, default_bpe_path
    from tbps.model.tbps import TBPSModel

    torch.manual_seed(1)
    tokenizer = clip_bpe_tokenizer(default_bpe_path())
    model = TBPSModel.from_spec(model_spec(sizes, tokenizer), tokenizer=tokenizer)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def timed_eval_hooks(device: Any) -> tuple[dict[str, float], Callable[[], None]]:
    """Wrap tbps.evaluation.split's encode_split and evaluate_embeddings with synchronised
    timers (no change in what they do); returns the timings and an undo function."""
    import tbps.evaluation.split as split_mod

    times: dict[str, float] = {}
    originals = {n: getattr(split_mod, n) for n in ("encode_split", "evaluate_embeddings")}

    def wrap(name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            synchronize(device)
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize(device)
            times[name] = times.get(name, 0.0) + time.perf_counter() - t
            return out

        return timed

    for name, fn in originals.items():
        setattr(split_mod, name, wrap(name, fn))

    def undo() -> None:
        for name, fn in originals.items():
            setattr(split_mod, name, fn)

    return times, undo


def section_eval(ctx: Context) -> Result:
    """(b): ``tbps eval model=DIR data=icfg_pedes`` on a generated ICFG-size test split."""
    import torch

    res = Result(SECTION_NAMES["b"])
    sizes, device = ctx.sizes, ctx.device
    budget = ctx.budget_for("b")
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="tbps-gpu-check-eval-"))
    try:
        data = write_icfg_dataset(sizes, work / "icfg", budget_s=budget * 0.4)
        say(
            f"[b] data: {data['test_images']} test images / {data['test_ids']} ids "
            f"({data['rendered']} rendered at {sizes.render[0]}x{sizes.render[1]}, "
            f"{data['copied']} copies) in {data['seconds']:.1f} s with {data['workers']} workers"
        )
        params = write_model_folder(sizes, work / "model")
        from tbps.cli import main as tbps_main

        precision = "bf16" if ctx.precision == "bf16-mixed" else "32"
        workers = max(0, min(8, (os.cpu_count() or 1) - 1)) if not ctx.tiny else 0
        out = work / "eval.json"
        argv = [
            "eval",
            f"model={work / 'model'}",
            "data=icfg_pedes",
            f"data.root={work / 'icfg'}",
            "split=test",
            f"device={'cuda' if device.type == 'cuda' else 'cpu'}",
            f"precision={precision}",
            f"loader.eval_batch_size={sizes.eval_batch}",
            f"loader.num_workers={workers}",
            f"cache_dir={work / 'cache'}",
            f"out={out}",
        ]
        say("[b] $ tbps " + " ".join(argv))
        times, undo = timed_eval_hooks(device)
        reset_peak(device)
        t = time.perf_counter()
        try:
            code = tbps_main(argv)
        finally:
            undo()
        total = time.perf_counter() - t
        if code != 0:
            raise RuntimeError(f"tbps eval exited with code {code}")
        allocated, reserved = peak_gib(device)
        metrics = json.loads(out.read_text())
        encode_s, metric_s = (
            times.get("encode_split", math.nan),
            times.get("evaluate_embeddings", math.nan),
        )
        n_img, n_cap = data["test_images"], data["test_captions"]
        res.metrics = {
            "data": data,
            "parameters_m": round(params / 1e6, 2),
            "eval_batch_size": sizes.eval_batch,
            "num_workers": workers,
            "precision": precision,
            "encode_s": encode_s,
            "metrics_s": metric_s,
            "eval_total_s": total,
            "peak_alloc_gib": allocated,
            "peak_reserved_gib": reserved,
            "t2i_R1": metrics["t2i"]["R1"],
            "torch_threads": torch.get_num_threads(),
        }
        res.row(
            "dataset (ICFG-PEDES test size)",
            f"{n_img} images / {n_cap} captions / {data['test_ids']} ids, rendered "
            f"{sizes.render[0]}x{sizes.render[1]} -> {sizes.height}x{sizes.width}",
            "ICFG-PEDES test: 19,848 / 19,848 / 1,000",
        )
        res.row("encode (images + captions) s", f"{encode_s:.2f}")
        res.row("encode images+captions /s", f"{(n_img + n_cap) / encode_s:.0f}")
        res.row("metrics (t2i + i2t) s", f"{metric_s:.2f}")
        res.row("tbps eval total s (load, parse, encode, metrics)", f"{total:.2f}")
        res.row("eval peak GPU memory (alloc / reserved)", memory(allocated, reserved))
        if data["copied"]:
            res.notes.append(
                f"{data['copied']} of {data['rendered'] + data['copied']} images are copies "
                "(render budget reached)"
            )
        res.notes.append(f"random-weight t2i R1 {metrics['t2i']['R1']:.2f} (chance level)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.seconds = time.perf_counter() - t_start
    return res


# -- (c) DDP -------------------------------------------------------------------------------------
def ddp_worker(args: argparse.Namespace) -> None:
    """Run by the (c) subprocess (and by the rank Lightning starts): the framework path on
    ``--ddp-devices`` devices; rank 0 writes its timing to ``--ddp-out``."""
    import torch

    sizes = TINY if args.tiny else Sizes()
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    module = build_module(model_spec(sizes), sizes)
    batches = make_batches(min(8, sizes.warmup + args.steps + 1), sizes)
    fw = run_framework(module, batches, sizes, args.steps, device, args.precision, args.ddp_devices)
    if fw["rank"] == 0:
        Path(args.ddp_out).write_text(json.dumps(fw))


def run_group(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own process group (Lightning starts the other ranks as its
    children); past ``timeout`` the whole group is killed. Returns (exit code, output)."""
    import signal

    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        return -9, (text or "") + f"\ntimed out after {timeout:.0f} s (process group killed)"
    finally:
        with contextlib.suppress(ProcessLookupError):  # ranks left behind by a failed rank 0
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, text or ""


def section_ddp(ctx: Context) -> Result:
    """(c): 2-process DDP throughput of the framework path (per-GPU batch as in (a))."""
    import torch

    res = Result(SECTION_NAMES["c"])
    gpus = torch.cuda.device_count() if ctx.device.type == "cuda" else 0
    if gpus < 2 and not ctx.ddp_on_cpu:
        res.status = "skipped"
        res.notes.append(f"skipped: torch.cuda.device_count() = {gpus} < 2")
        res.row("2-GPU DDP", f"skipped ({gpus} GPU{'s' if gpus != 1 else ''})")
        return res
    budget = ctx.budget_for("c")
    steps = ctx.train_steps or ctx.sizes.steps
    if ctx.train_s_per_it:  # one DDP step costs about one single-GPU step plus the all-reduce
        steps = max(3, min(steps, int(budget * 0.5 / (1.3 * ctx.train_s_per_it))))
    with tempfile.TemporaryDirectory(prefix="tbps-gpu-check-ddp-") as tmp:
        out = Path(tmp) / "ddp.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--ddp-worker",
            "--ddp-devices=2",
            f"--ddp-out={out}",
            f"--device={ctx.device.type}",
            f"--steps={steps}",
            f"--precision={ctx.precision}",
            *(["--tiny"] if ctx.tiny else []),
        ]
        say("[c] $ " + " ".join(cmd))
        code, text = run_group(cmd, timeout=max(30.0, budget))
        if code != 0 or not out.is_file():
            tail = text.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"DDP run failed (exit {code}): {tail[0]}")
        fw = json.loads(out.read_text())
    b = ctx.sizes.batch
    res.metrics = {"world_size": 2, "per_device_batch": b, **fw}
    res.row(f"DDP x2 s/it (per-GPU batch {b})", f"{fw['s_per_it']:.4f}")
    res.row("DDP x2 images/s", f"{2 * b / fw['s_per_it']:.1f}")
    if ctx.train_s_per_it:
        eff = ctx.train_s_per_it / fw["s_per_it"]
        res.metrics["scaling_efficiency"] = eff
        res.row("scaling efficiency vs 1 GPU", f"{eff:.2f}")
    res.row(
        "DDP rank-0 peak GPU memory (alloc / reserved)",
        memory(fw["peak_alloc_gib"], fw["peak_reserved_gib"]),
    )
    return res


# -- driver --------------------------------------------------------------------------------------
@dataclass
class Context:
    """What every section needs: sizes, device, precision and the time budget."""

    sizes: Sizes
    device: Any
    precision: str
    steps: int
    tiny: bool
    budget: float
    start: float
    sections: tuple[str, ...]
    shares: dict[str, float]
    ddp_on_cpu: bool = False
    train_s_per_it: float | None = None
    train_steps: int | None = None

    def budget_for(self, name: str) -> float:
        """This section's share of the time left (the later sections' shares reserved)."""
        left = self.budget - (time.perf_counter() - self.start)
        later = self.sections[self.sections.index(name) :]
        total = sum(self.shares[s] for s in later)
        return max(10.0, left * self.shares[name] / total)


def environment(device: Any) -> dict[str, Any]:
    import lightning
    import torch
    import transformers

    env = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU)",
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        import hydra
        import omegaconf

        env["hydra"], env["omegaconf"] = hydra.__version__, omegaconf.__version__
    except ImportError as e:
        env["hydra"] = f"missing ({e})"
    return env


def finite(value: Any) -> Any:
    """``value`` with NaN/Inf floats as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def last_line(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return lines[-1].strip() if lines else repr(error)


def markdown(env: dict[str, Any], results: list[Result]) -> str:
    head = (
        f"GPU: {env['gpu']} (x{env['gpu_count']}); torch {env['torch']} (CUDA {env['cuda']}), "
        f"transformers {env['transformers']}, lightning {env['lightning']}, "
        f"python {env['python']}"
    )
    lines = [head, "", "| section | metric | value | anchor |", "| --- | --- | --- | --- |"]
    for r in results:
        if r.status == "failed":
            lines.append(f"| {r.name} | FAILED | {r.error} | |")
        for metric, value, anchor in r.rows:
            lines.append(f"| {r.name} | {metric} | {value} | {anchor} |")
        if not r.rows and r.status != "failed":
            lines.append(f"| {r.name} | {r.status} | | |")
    notes = [f"- {r.name}: {n}" for r in results for n in r.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--steps", type=int, default=None, help="measured training steps per run")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU smoke test)")
    p.add_argument("--json", default=None, help="JSON results (default $OUT/gpu_check.json)")
    p.add_argument("--budget", type=float, default=None, help="seconds for all sections")
    p.add_argument("--sections", default="a,b,c", help="comma-separated subset of a,b,c")
    p.add_argument(
        "--precision",
        default=None,
        choices=["bf16-mixed", "32-true"],
        help="default: bf16-mixed on CUDA, 32-true on CPU (bf16 is many times slower there)",
    )
    p.add_argument("--ddp-on-cpu", action="store_true", help="run (c) with 2 CPU processes")
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ddp-devices", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--ddp-out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    start = time.perf_counter()
    import logging
    import warnings

    import torch

    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    tiny = args.tiny
    sizes = TINY if tiny else Sizes()
    if device.type == "cpu" and not tiny:
        say("note: real sizes on CPU - the time budget will cut the steps hard (use --tiny)")
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    sections = tuple(s for s in SECTIONS if s in args.sections.split(","))
    ctx = Context(
        sizes=sizes,
        device=device,
        precision=args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true"),
        steps=args.steps or sizes.steps,
        tiny=tiny,
        budget=args.budget or (100.0 if tiny else 450.0),
        start=start,
        sections=sections,
        shares={"a": 0.45, "b": 0.4, "c": 0.15 if not args.ddp_on_cpu else 0.3},
        ddp_on_cpu=args.ddp_on_cpu,
    )
    env = environment(device)
    say(json.dumps(env))
    runners = {"a": section_train, "b": section_eval, "c": section_ddp}
    results = []
    for name in sections:
        t = time.perf_counter()
        say(f"== {SECTION_NAMES[name]} (budget {ctx.budget_for(name):.0f} s)")
        try:
            result = runners[name](ctx)
        except Exception as e:  # one section's failure must not hide the others
            traceback.print_exc()
            result = Result(SECTION_NAMES[name], status="failed", error=last_line(e))
            say(f"[{name}] FAILED: {result.error}")
        finally:
            free_memory()
        result.seconds = time.perf_counter() - t
        if name == "a" and result.status == "ok":
            ctx.train_s_per_it = result.metrics["framework"]["s_per_it"]
            ctx.train_steps = result.metrics["measured_steps"]
        say(f"== {SECTION_NAMES[name]}: {result.status} in {result.seconds:.1f} s")
        results.append(result)
    total = time.perf_counter() - start
    table = markdown(env, results)
    say(
        "\n"
        + table
        + f"\n\ntotal {total:.1f} s (budget {ctx.budget:.0f} s); command: "
        + " ".join(["python", *sys.argv])
    )
    path = args.json or (
        str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else None
    )
    if path:
        payload = {
            "environment": env,
            "sizes": {"tiny": tiny, **{k: getattr(sizes, k) for k in sizes.__dataclass_fields__}},
            "total_s": total,
            "sections": {
                name: {
                    "name": r.name,
                    "status": r.status,
                    "error": r.error,
                    "seconds": r.seconds,
                    "metrics": r.metrics,
                    "notes": r.notes,
                }
                for name, r in zip(sections, results)
            },
            "rows": [[r.name, *row] for r in results for row in r.rows],
            "markdown": table,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(finite(payload), indent=2, default=str))
        say(f"results written to {path}")
    return 0 if all(r.status != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
