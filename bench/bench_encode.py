"""Encoding throughput of a ViT-B/16-sized random backbone at 384x128, ours vs bare transformers.

python bench/bench_encode.py [--kind clip|siglip] [--images 8] [--captions 32] [--repeats 5]
                             [--threads 2] [--height 384 --width 128]

"ours" is TBPSModel.encode_image / encode_text (stored 24x8 position grid, pooling, projection,
L2 norm); "bare" calls the same transformers model directly (get_image_features /
get_text_features + L2 norm); "stock" is an unmodified transformers model re-interpolating its
square position table at every call (interpolate_pos_encoding=True), what plain HF code does.
Variants run interleaved, so a noisy shared CPU affects them alike; throughput comes from the
best repeat, the overhead from median process CPU times (and from best wall times).
"""

import argparse
import statistics
import time

import torch
from torch.nn.functional import normalize
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from tbps.model.backbone import set_image_size
from tbps.model.tbps import TBPSModel


def vit_b16_config(kind: str):
    """ViT-B/16 towers as released (CLIP: 512-wide 12-layer text; SigLIP: 768-wide, 64 tokens)."""
    vision = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    )
    if kind == "clip":
        text = dict(
            vocab_size=49408,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
            projection_dim=512,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
        return CLIPConfig(
            text_config=text, vision_config={**vision, "projection_dim": 512}, projection_dim=512
        )
    text = dict(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=1,
    )
    return SiglipConfig(text_config=text, vision_config=vision)


def captions(kind: str, batch: int, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Token ids shaped like tokenised TBPS captions (15-45 tokens, then end-of-text/padding)."""
    vocab, eos = (49406, 49407) if kind == "clip" else (32000, 1)
    ids = torch.randint(3, vocab - 2, (batch, length), generator=gen)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row, n in enumerate(torch.randint(15, 46, (batch,), generator=gen).tolist()):
        n = min(n, length - 1)
        ids[row, n:] = eos
        mask[row, : n + 1] = 1
    if kind == "clip":
        ids[:, 0] = 49406
    return {"input_ids": ids, "attention_mask": mask}


def timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call; CPU time is what a busy shared CPU distorts least."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["clip", "siglip"], default="clip")
    parser.add_argument("--images", type=int, default=8, help="images per batch")
    parser.add_argument("--captions", type=int, default=32, help="captions per batch")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = vit_b16_config(args.kind)
    model_cls = CLIPModel if args.kind == "clip" else SiglipModel
    stock = model_cls(config).eval()
    backbone = model_cls(config).eval()
    backbone.load_state_dict(stock.state_dict())
    text_mask = args.kind == "clip"  # SigLIP runs unmasked, as it was pre-trained
    ours = TBPSModel(
        set_image_size(backbone, (args.height, args.width)), text_attention_mask=text_mask
    ).eval()
    bare = ours.hf
    params = sum(p.numel() for p in ours.parameters())

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, args.height, args.width, generator=gen)
    tokens = captions(args.kind, args.captions, ours.text_length, gen)
    bare_tokens = tokens if text_mask else {"input_ids": tokens["input_ids"]}

    image_runs = {
        "ours": lambda: ours.encode_images(images),
        "bare": lambda: normalize(
            bare.get_image_features(pixel_values=images).pooler_output, dim=-1
        ),
        "stock": lambda: normalize(
            stock.get_image_features(
                pixel_values=images, interpolate_pos_encoding=True
            ).pooler_output,
            dim=-1,
        ),
    }
    text_runs = {
        "ours": lambda: ours.encode_texts(**tokens),
        "bare": lambda: normalize(bare.get_text_features(**bare_tokens).pooler_output, dim=-1),
    }
    times: dict[str, dict[str, list[tuple[float, float]]]] = {"image": {}, "text": {}}
    with torch.inference_mode():
        torch.testing.assert_close(image_runs["ours"](), image_runs["bare"]())
        torch.testing.assert_close(text_runs["ours"](), text_runs["bare"]())
        for runs in (image_runs, text_runs):  # warm-up
            for fn in runs.values():
                fn()
        for r in range(args.repeats):
            for tower, runs in (("image", image_runs), ("text", text_runs)):
                names = list(runs) if r % 2 == 0 else list(reversed(runs))
                for name in names:
                    times[tower].setdefault(name, []).append(timed(runs[name]))

    print(
        f"{args.kind} ViT-B/16-sized, {params / 1e6:.1f}M parameters, fp32, "
        f"{args.threads} threads, {args.repeats} interleaved repeats. Throughput: best wall time. "
        "Overhead vs bare: median CPU time ratio (best wall time ratio)."
    )
    for tower, unit, batch in (
        ("image", "images", args.images),
        ("text", "captions", args.captions),
    ):
        shape = f"{args.height}x{args.width}" if tower == "image" else f"length {ours.text_length}"
        bare_wall = min(w for w, _ in times[tower]["bare"])
        bare_cpu = statistics.median(c for _, c in times[tower]["bare"])
        for name, values in times[tower].items():
            best = min(w for w, _ in values)
            wall, cpu = (statistics.median(v) for v in zip(*values))
            line = (
                f"{tower:<5} {shape:<10} batch {batch:>3}  {name:<5} {batch / best:7.2f} {unit}/s "
                f"(wall best {best:.3f} s, median {wall:.3f} s; CPU median {cpu:.3f} s)"
            )
            if name != "bare":
                line += (
                    f"  overhead {100 * (cpu / bare_cpu - 1):+.1f}% "
                    f"({100 * (best / bare_wall - 1):+.1f}%)"
                )
            print(line)


if __name__ == "__main__":
    main()
