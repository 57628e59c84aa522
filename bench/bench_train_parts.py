"""Where the default `tbps train` spends a step: the model alone vs loading a batch.

    python bench/bench_train_parts.py [--compile] [--steps 10]

Builds the default config's model (scratch_small CLIP, 128x64, text 48) and times forward +
backward + AdamW of ITC + 0.1 SDM on a fixed batch of 64 real captions (eager with the full
transformers forward and with the pooled shortcut, interleaved; with torch.compile of both
towers if asked), then one epoch of the training loader with and without the resized-image
cache (the synthetic dataset is generated into the cache first if needed).
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from tbps.app.train import _build_model_spec
from tbps.cli import compose_config
from tbps.data.datamodule import TBPSDataModule
from tbps.data.sources import load_dataset_section
from tbps.data.tokenization import tokenize
from tbps.losses.contrastive import itc, sdm
from tbps.model.tbps import TBPSModel


def time_steps(
    model: TBPSModel, ids: torch.Tensor, mask: torch.Tensor, steps: int
) -> tuple[float, float]:
    """(seconds of the first 3 steps, seconds per later step) on one batch of real captions."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = ids.shape[0]
    images = torch.randn(batch, 3, *model.image_size)
    pids = torch.arange(batch) // 2

    def step() -> None:
        img, txt = model.image_embeddings(images), model.text_embeddings(ids, mask)
        (itc(img, txt, 50.0) + 0.1 * sdm(img, txt, pids, 50.0)).backward()
        opt.step()
        opt.zero_grad()

    start = time.perf_counter()
    for _ in range(3):
        step()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return warm, (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose_config("train", [])
    dataset = load_dataset_section(OmegaConf.to_container(cfg.data, resolve=True), None)
    captions = [c for image in dataset.split("train") for c in image.captions]
    spec, tokenizer, _ = _build_model_spec(cfg, captions)
    model = TBPSModel.from_spec(spec).train()
    tokens = tokenize(tokenizer, captions[: cfg.loader.batch_size], model.text_length)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    for shortcut in (False, True, False, True):  # interleaved: the machine's speed drifts
        model.pooled_shortcut = shortcut
        warm, per_step = time_steps(model, ids, mask, args.steps)
        name = "pooled shortcut" if shortcut else "full forward"
        print(f"model step, eager, {name}: {per_step:.3f} s (first 3 steps {warm:.1f} s)")
    if args.compile:
        model.image_embeddings = torch.compile(model.image_embeddings)
        model.text_embeddings = torch.compile(model.text_embeddings)
        warm, per_step = time_steps(model, ids, mask, args.steps)
        print(f"model step, torch.compile: {per_step:.3f} s (first 3 steps {warm:.1f} s)")
    for cache in (False, True):
        data = TBPSDataModule(
            dataset,
            tokenizer,
            image_size=spec["image_size"],
            text_length=cfg.backbone.text.length,
            augment=cfg.augment.preset,
            batch_size=cfg.loader.batch_size,
            cache_images=cache,
        )
        loader = data.train_dataloader()
        times = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            start = time.perf_counter()
            batches = sum(1 for _ in loader)
            times.append((time.perf_counter() - start) / batches)
        print(
            f"train batch, cache_images={cache}: epoch 0 {times[0] * 1000:.0f} ms, "
            f"later epochs {times[1] * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
