"""Benchmark: training-data throughput per augmentation preset (python bench/bench_data.py).

Decode JPEG + augment + tokenise (+ collate), at 384x128, through a DataLoader with one worker
process (``--workers``), on a generated dataset of 384x128 JPEGs with two captions each. The
tokenizer is a BPE trained on the captions (CLIP's needs a download), text length 77.
Target: the ``irra`` preset at least 150 images/s per worker.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from tbps.data.datamodule import SeededRandomSampler
from tbps.data.datasets import Collator, TrainPairs
from tbps.data.formats import parse_dataset
from tbps.data.mlm import TokenMasker
from tbps.data.records import training_records
from tbps.data.synthetic import SynthConfig, generate_synthetic_dataset
from tbps.data.text_augment import TextAugmenter, TextAugmentOptions
from tbps.data.tokenization import train_caption_tokenizer
from tbps.data.transforms import PRESETS, build_image_transforms, ss_view_transform


def throughput(loader: DataLoader, samples: int) -> float:
    """Images per second over ``samples`` samples, after one warm-up batch."""
    seen, start = 0, None
    while seen < samples:
        for batch in loader:
            if start is None:  # warm-up: worker start, first batch
                start = time.perf_counter()
                continue
            seen += batch["images"].shape[0]
            if seen >= samples:
                break
    return seen / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=None, help="a CUHK-PEDES-format folder")
    ap.add_argument("--samples", type=int, default=1536, help="images timed per preset")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--presets", default=",".join(sorted(PRESETS)))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = None
    root = args.root
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix="tbps_bench_data_"))
        root = tmp / "ds"
        generate_synthetic_dataset(root, SynthConfig(num_identities=100, seed=0), progress=False)
    try:
        images = parse_dataset("cuhk_pedes", root).split("train")
        records, _ = training_records(images)
        tokenizer = train_caption_tokenizer([r.caption for r in records])
        size = (384, 128)
        print(
            f"{len(records)} training captions, {args.workers} worker(s), batch "
            f"{args.batch_size}, {size[0]}x{size[1]}, text length 77"
        )
        variants = [(p, False) for p in args.presets.split(",")] + [("irra", True)]
        for preset, extras in variants:
            train, _ = build_image_transforms(preset, size)
            dataset = TrainPairs(
                records,
                train,
                mvs=extras,
                ss_transform=ss_view_transform(size, preset=preset) if extras else None,
                text_augment=TextAugmenter(TextAugmentOptions(0.05, 0.1, 0.1, 0.1))
                if extras
                else None,
            )
            masker = TokenMasker.from_tokenizer(tokenizer) if extras else None
            loader = DataLoader(
                dataset,
                batch_size=args.batch_size,
                # the training sampler: each draw carries its augmentation seed
                sampler=SeededRandomSampler(
                    dataset, num_replicas=1, rank=0, seed=0, drop_last=True
                ),
                drop_last=True,
                num_workers=args.workers,
                persistent_workers=args.workers > 0,
                collate_fn=Collator(tokenizer, 77, masker),
                generator=torch.Generator().manual_seed(0),
            )
            rate = throughput(loader, args.samples)
            name = preset + (" + MVS + 2 SS views + EDA + MLM" if extras else "")
            print(
                f"{name:<40} {rate:8.1f} images/s  ({rate / max(1, args.workers):.1f} per worker)"
            )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
