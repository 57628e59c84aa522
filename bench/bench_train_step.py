"""Training-step overhead: TBPSLightningModule under lightning.Trainer vs a bare PyTorch loop.

    python bench/bench_train_step.py [--steps 5] [--warmup 2] [--batch 8] [--threads 2]
                                     [--log-every 1] [--logger csv|none]

Model: a random ViT-B/16-sized CLIP in the openai/clip-vit-base-patch16 layout (vision width 768,
12 layers, 12 heads, patch 16; text width 512, 12 layers, 8 heads, length 77, vocabulary 49408;
projection 512), built by tbps.model at 384x128 (24x8 grid), fp32. Objectives ITC + SDM + ID
(weights 1, 11,003 identities as in the CUHK-PEDES train split), AdamW with the default optim
settings. Batches are made up front and served from memory, so data loading is not measured.

- framework: TBPSLightningModule driven by a real ``lightning.Trainer`` (CPU, 32-true, CSV
  logger or none, no checkpointing, progress bar or validation). A callback times each step from
  ``on_train_batch_start`` to ``on_train_batch_end`` ("window": forward, losses, logging calls,
  backward, optimizer and scheduler step) and also the framework's work between two steps
  ("gap": metric reduction, logger writes, fetching the next batch); "full" = gap + window.
- bare: a copy of the same architecture with the same initial weights, the same loss functions
  (tbps.losses itc, sdm, id_loss with an nn.Linear classifier), torch.optim.AdamW over the same
  parameter groups and the same warm-up schedule, in a plain function: forward, losses,
  backward, optimizer step, zero_grad, scheduler step.

The two alternate step by step in one process (the bare step on the same batch runs right after
each framework step, outside the framework's timed window), so drift on a shared CPU hits both
alike. Warm-up steps are discarded; the losses of both paths are printed side by side (same
weights, batches and schedule, so they agree: both paths do the same work). The target is a
framework/bare ratio of at most 1.10.
"""

from __future__ import annotations

import argparse
import logging
import math
import resource
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tbps.losses import id_loss, itc, sdm
from tbps.model.factory import scratch_model_spec
from tbps.model.tbps import TBPSModel
from tbps.training.module import TBPSLightningModule
from tbps.training.optim import OptimSettings

TARGET_RATIO = 1.10
NUM_CLASSES = 11003  # CUHK-PEDES train identities
OBJECTIVES = {"itc": {"weight": 1.0}, "sdm": {"weight": 1.0}, "id": {"weight": 1.0}}
BOS, EOS, VOCAB = 49406, 49407, 49408  # the CLIP tokenizer's ids


class ClipTokenIds:
    """The CLIP tokenizer's size and special ids: all that the model spec reads from one."""

    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, EOS

    def __len__(self) -> int:
        return VOCAB


def clip_b16_spec(height: int, width: int) -> dict:
    """Spec of a random CLIP in the openai/clip-vit-base-patch16 layout at height x width."""
    return scratch_model_spec(
        ClipTokenIds(),
        image_size=(height, width),
        patch_size=16,
        vision={"width": 768, "layers": 12, "heads": 12},
        text={"width": 512, "layers": 12, "heads": 8, "length": 77},
        embed_dim=512,
    )


def make_batches(
    count: int, batch: int, height: int, width: int, length: int, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Random training batches: images, captions of 15-45 tokens (BOS ... EOS, EOS padding),
    pids where every identity appears twice (SDM sees same-id pairs), dataset indices."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(count):
        ids = torch.randint(0, BOS, (batch, length), generator=gen)
        mask = torch.zeros(batch, length, dtype=torch.long)
        for row, n in enumerate(torch.randint(15, 46, (batch,), generator=gen).tolist()):
            n = min(n, length - 1)
            ids[row, 0] = BOS
            ids[row, n:] = EOS
            mask[row, : n + 1] = 1
        people = torch.randperm(NUM_CLASSES, generator=gen)[: (batch + 1) // 2]
        batches.append(
            {
                "images": torch.randn(batch, 3, height, width, generator=gen),
                "input_ids": ids,
                "attention_mask": mask,
                "pids": people.repeat_interleave(2)[:batch],
                "indices": torch.arange(b * batch, (b + 1) * batch),
            }
        )
    return batches


class PremadeBatches(Dataset):
    """Serves ready-made batch dicts (use with ``DataLoader(batch_size=None)``)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batches[index]


def warmup_cosine(warmup: int, total: int, start: float, end: float):
    """lr factor at step t: linear from ``start`` to 1 over ``warmup`` steps, then cosine to
    ``end`` at ``total`` (the framework's default schedule, written out)."""

    def factor(t: int) -> float:
        if t < warmup:
            return start + (1.0 - start) * t / warmup
        u = min(1.0, (t - warmup) / max(1, total - warmup))
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * u))

    return factor


class BareStep:
    """Plain PyTorch training step: same model, losses, optimizer and schedule, no Lightning."""

    def __init__(self, module: TBPSLightningModule, total_steps: int, warmup_steps: int) -> None:
        settings = module.optim
        self.model = TBPSModel.from_spec(module.model.spec())
        self.model.load_state_dict(module.model.state_dict())
        framework_linear = module.heads.id_classifier.linear
        self.classifier = nn.Linear(framework_linear.in_features, framework_linear.out_features)
        self.classifier.load_state_dict(framework_linear.state_dict())
        self.model.train()
        self.classifier.train()
        decay, no_decay = [], []
        for part in (self.model, self.classifier):
            for name, param in part.named_parameters():
                if param.requires_grad:
                    is_plain = param.ndim <= 1 or name.endswith(".bias")
                    (no_decay if is_plain else decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": settings.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=settings.lr,
            betas=settings.betas,
            eps=settings.eps,
        )
        factor = warmup_cosine(
            warmup_steps, total_steps, settings.warmup_start_factor, settings.end_lr_factor
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def __call__(self, batch: dict[str, torch.Tensor]) -> float:
        image = self.model.image_embeddings(batch["images"])
        text = self.model.text_embeddings(batch["input_ids"], batch["attention_mask"])
        pids, scale = batch["pids"], self.model.logit_scale()
        loss = (
            itc(image, text, scale)
            + sdm(image, text, pids, scale)
            + id_loss(self.classifier(image), self.classifier(text), pids)
        )
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(loss.detach())


@dataclass
class StepTimes:
    """Per-step wall and process-CPU seconds and the loss of one path."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


class InterleavedTimer(Callback):
    """Times each framework step (start -> end hook) and the framework's work between steps,
    and runs the bare step on the same batch right after each framework step."""

    def __init__(self, bare: BareStep) -> None:
        self.bare = bare
        self.window, self.gap, self.bare_times = StepTimes(), StepTimes(), StepTimes()
        self._start = (0.0, 0.0)
        self._end: tuple[float, float] | None = None
        self._bare_cost = (0.0, 0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = (time.perf_counter(), time.process_time())
        if self._end is not None:  # framework work since the last step's end hook
            self.gap.wall.append(now[0] - self._end[0] - self._bare_cost[0])
            self.gap.cpu.append(now[1] - self._end[1] - self._bare_cost[1])
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        end = (time.perf_counter(), time.process_time())
        self.window.wall.append(end[0] - self._start[0])
        self.window.cpu.append(end[1] - self._start[1])
        self.window.loss.append(float(outputs["loss"]))
        wall, cpu = time.perf_counter(), time.process_time()
        loss = self.bare(batch)
        bare_wall, bare_cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.bare_times.wall.append(bare_wall)
        self.bare_times.cpu.append(bare_cpu)
        self.bare_times.loss.append(loss)
        self._bare_cost = (time.perf_counter() - end[0], time.process_time() - end[1])
        self._end = end


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):7.3f} s, mean {statistics.fmean(values):7.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="measured steps per path")
    parser.add_argument("--warmup", type=int, default=2, help="discarded steps per path (>= 1)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--log-every",
        type=int,
        default=1,
        help="trainer.log_every_n_steps (1: worst case, logger write and grad norm every step; "
        "tbps train's default is 10)",
    )
    parser.add_argument("--logger", choices=["csv", "none"], default="csv")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    command = " ".join(["python", *sys.argv])

    total = args.warmup + args.steps
    spec = clip_b16_spec(args.height, args.width)
    built = time.perf_counter()
    module = TBPSLightningModule(spec, OBJECTIVES, num_classes=NUM_CLASSES, optim=None)
    # the framework's default schedule for a one-epoch run of `total` steps
    schedule = OptimSettings().schedule_for(total, total)
    bare = BareStep(module, total, schedule.warmup_steps)
    params = sum(p.numel() for p in module.parameters())
    print(
        f"model: {params / 1e6:.1f}M parameters (ID head included), {args.height}x{args.width}, "
        f"batch {args.batch}, built in {time.perf_counter() - built:.1f} s; "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )

    batches = make_batches(total, args.batch, args.height, args.width, 77)
    loader = DataLoader(PremadeBatches(batches), batch_size=None, shuffle=False)
    timer = InterleavedTimer(bare)
    with tempfile.TemporaryDirectory(prefix="tbps-bench-step-") as tmp:
        logger = CSVLogger(tmp, name="logs") if args.logger == "csv" else False
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision="32-true",
            max_steps=total,
            max_epochs=1,
            logger=logger,
            log_every_n_steps=args.log_every,
            callbacks=[timer],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            default_root_dir=tmp,
        )
        trainer.fit(module, train_dataloaders=loader)
    if len(timer.window.wall) != total:
        sys.exit(f"expected {total} framework steps, timed {len(timer.window.wall)}")

    w = args.warmup
    window, bare_wall = timer.window.wall, timer.bare_times.wall
    gap = [float("nan"), *timer.gap.wall]  # gap[k]: framework work before step k
    full = [g + s for g, s in zip(gap, window)]
    print("\nstep  framework: window    gap    full |   bare | loss framework     bare")
    for k in range(total):
        tag = " (warm-up)" if k < w else ""
        print(
            f"{k:4d}  {window[k]:17.3f} {gap[k]:6.3f} {full[k]:7.3f} | {bare_wall[k]:6.3f} |"
            f" {timer.window.loss[k]:14.6f} {timer.bare_times.loss[k]:8.6f}{tag}"
        )
    loss_diff = max(abs(a - b) for a, b in zip(timer.window.loss, timer.bare_times.loss))

    fw_window, fw_full, fw_gap, bare_m = window[w:], full[w:], gap[w:], bare_wall[w:]
    cpu_window = timer.window.cpu[w:]
    cpu_full = [g + s for g, s in zip(timer.gap.cpu[w - 1 :], cpu_window)]
    cpu_bare = timer.bare_times.cpu[w:]
    print(f"\n{args.steps} measured steps per path after {w} warm-up steps (wall clock):")
    print(f"  framework, step window (start -> end hook): {summary(fw_window)}")
    print(f"  framework, work between steps:              {summary(fw_gap)}")
    print(f"  framework, full (between-step work + step): {summary(fw_full)}")
    print(f"  bare loop:                                  {summary(bare_m)}")
    med_bare = statistics.median(bare_m)
    for label, values in (("step window", fw_window), ("full", fw_full)):
        ratio = statistics.median(values) / med_bare
        mean_ratio = statistics.fmean(values) / statistics.fmean(bare_m)
        verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
        print(
            f"  ratio framework/bare ({label}): {ratio:.3f} (median), {mean_ratio:.3f} (mean) "
            f"-> {verdict} the target <= {TARGET_RATIO:.2f}"
        )
    cpu_ratio = statistics.median(cpu_full) / statistics.median(cpu_bare)
    print(f"  ratio framework/bare (full, process CPU time, median): {cpu_ratio:.3f}")
    print(f"  largest loss difference between the paths: {loss_diff:.2e}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (both paths in one process): {peak:.0f} MiB")
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, logger {args.logger}, "
        f"log_every_n_steps {args.log_every}"
    )
    print(f"command: {command}")


if __name__ == "__main__":
    main()
