"""Time all batch-level objectives together against a ViT-B/16 forward+backward at 384x128.

    python bench/bench_losses.py [--batch 64] [--dim 512] [--vit-batch 8] [--threads N]

Objectives (forward + backward, float32): SDM + ITC + N-ITC (alpha 0.5) + R-ITC + C-ITC + CMPM
on (batch, dim) embeddings with 4 captions per identity. Reference: forward + backward of a
ViT-B/16 image tower (width 768, 12 layers, 384x128 -> 192 patches + class token) at
``--vit-batch`` images, scaled linearly to ``--batch`` images when smaller (a ViT-B/16 step at
64 images needs ~35 GB on CPU). Prints both times and the overhead in percent (target < 5%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from tbps.losses import citc, cmpm, itc, nitc, ritc, sdm


def all_objectives(f: torch.Tensor, g: torch.Tensor, pids: torch.Tensor, scale: torch.Tensor):
    return (
        sdm(f, g, pids, scale)
        + itc(f, g, scale)
        + nitc(f, g, pids, scale, alpha=0.5)
        + ritc(f, g, pids, scale)
        + citc(f, g, scale)
        + cmpm(f, g, pids)
    )


def time_losses(batch: int, dim: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, dim, generator=g, requires_grad=True)
    text = torch.randn(batch, dim, generator=g, requires_grad=True)
    pids = torch.arange(batch) // 4
    scale = torch.tensor(50.0, requires_grad=True)
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        all_objectives(image, text, pids, scale).backward()
        times.append(time.perf_counter() - start)
        image.grad = text.grad = scale.grad = None
    return statistics.median(times[3:])


def time_vit(batch: int, repeats: int) -> float:
    config = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=384,
        patch_size=16,
        projection_dim=512,
    )
    model = CLIPVisionModel(config).train()
    images = torch.randn(batch, 3, 384, 128)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = model(pixel_values=images, interpolate_pos_encoding=True)
        out.pooler_output.sum().backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--vit-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20, help="loss repeats (ViT: a fifth)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    losses = time_losses(args.batch, args.dim, args.repeats)
    print(
        f"SDM+ITC+N-ITC+R-ITC+C-ITC+CMPM fwd+bwd at B={args.batch}, D={args.dim}: "
        f"{losses * 1e3:.2f} ms (median of {args.repeats})"
    )
    vit_batch = min(args.vit_batch, args.batch)
    vit = time_vit(vit_batch, max(2, args.repeats // 5))
    vit_full = vit * args.batch / vit_batch
    scaled = "" if vit_batch == args.batch else f" -> {vit_full:.2f} s scaled to {args.batch}"
    print(f"ViT-B/16 384x128 fwd+bwd at {vit_batch} images: {vit:.2f} s{scaled}")
    print(f"objective overhead: {100 * losses / vit_full:.3f}% of the ViT step (target < 5%)")


if __name__ == "__main__":
    main()
