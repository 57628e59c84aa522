"""`tbps index` throughput against bare encoding, on the synthetic gallery with `scratch_small`.

    python bench/bench_index.py [--identities 1000] [--threads 2] [--workers 0 1 2]

"bare" encodes images already decoded and preprocessed in memory (the model alone, batches of
64); "index" is `build_index` from the JPEG files (decoding and preprocessing in DataLoader
workers, shards written, manifest committed), each from an empty index folder. The target is
index >= 90% of bare: decoding must not be the bottleneck. Random weights: speed only.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from tbps.cli import compose_config
from tbps.data.synthetic import SynthConfig, generate_synthetic_dataset
from tbps.data.tokenization import train_caption_tokenizer
from tbps.inference import build_index
from tbps.model.factory import scratch_model_spec
from tbps.model.tbps import TBPSModel


def scratch_small() -> TBPSModel:
    """The default backbone as configs/backbone/scratch_small.yaml defines it, random weights."""
    from omegaconf import OmegaConf

    backbone = OmegaConf.to_container(compose_config("train", ["backbone=scratch_small"]).backbone)
    tokenizer = train_caption_tokenizer(["a man in a red jacket"] * 10, vocab_size=300)
    spec = scratch_model_spec(
        tokenizer,
        tuple(backbone["image_size"]),
        patch_size=backbone["patch_size"],
        vision=backbone["vision"],
        text=backbone["text"],
        embed_dim=backbone["embed_dim"],
        mlp_ratio=backbone["mlp_ratio"],
    )
    return TBPSModel.from_spec(spec, tokenizer=tokenizer).eval()


@torch.no_grad()
def bare(model: TBPSModel, files: list[Path], batch: int = 64) -> float:
    """Images/s of the model alone on preprocessed tensors."""
    pixels = model.preprocess([Image.open(f) for f in files])
    model.encode_images(pixels[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        model.encode_images(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - start)


def decode_only(model: TBPSModel, files: list[Path]) -> float:
    """Images/s of decoding + the eval transform alone, one process."""
    transform = model.image_transform
    start = time.perf_counter()
    for f in files:
        with Image.open(f) as img:
            transform(img.convert("RGB"))
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        generate_synthetic_dataset(
            work / "synth", SynthConfig(num_identities=args.identities), progress=False
        )
        gallery = work / "synth" / "imgs"
        files = sorted(gallery.rglob("*.jpg"))
        model = scratch_small()
        print(
            f"{len(files)} synthetic images (384x128 JPEG) -> scratch_small at 128x64, "
            f"{args.threads} torch threads"
        )
        print(f"decode + preprocess alone: {decode_only(model, files):8.1f} images/s")
        base = bare(model, files)
        print(f"bare encode (in memory):   {base:8.1f} images/s")
        for workers in args.workers:
            out = work / f"index-{workers}"
            start = time.perf_counter()
            report = build_index(
                model, gallery, out, device="cpu", num_workers=workers, progress=False
            )
            rate = report.images / (time.perf_counter() - start)
            print(
                f"tbps index, {workers} workers:  {rate:8.1f} images/s  ({rate / base:.0%} of bare)"
            )
            start = time.perf_counter()
            again = build_index(
                model, gallery, out, device="cpu", num_workers=workers, progress=False
            )
            print(
                f"  second run (nothing changed): {time.perf_counter() - start:.2f} s, "
                f"added {again.added}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
