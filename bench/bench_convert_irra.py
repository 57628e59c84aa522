"""Time `tbps convert` of a ViT-B/16-sized IRRA best.pth (random weights in IRRA's layout).

    python bench/bench_convert_irra.py

Writes an OpenAI-layout CLIP ViT-B/16 (12 + 12 layers, 768/512 wide, 512-d embedding, 77
tokens, a 24x8 + 1 position table for 384x128) as IRRA stores it (base_model. prefix, fp16
linear weights, configs.yaml with tuples), then converts it to a model folder and loads it.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from tbps.model.published import convert_irra
from tbps.model.tbps import TBPSModel


def vit_b16_irra_state() -> dict[str, torch.Tensor]:
    s: dict[str, torch.Tensor] = {}

    def tower(prefix: str, width: int, layers: int) -> None:
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            s[b + "attn.in_proj_weight"] = torch.randn(3 * width, width).half() * 0.02
            s[b + "attn.in_proj_bias"] = torch.zeros(3 * width).half()
            s[b + "attn.out_proj.weight"] = torch.randn(width, width).half() * 0.02
            s[b + "attn.out_proj.bias"] = torch.zeros(width).half()
            s[b + "mlp.c_fc.weight"] = torch.randn(4 * width, width).half() * 0.02
            s[b + "mlp.c_fc.bias"] = torch.zeros(4 * width).half()
            s[b + "mlp.c_proj.weight"] = torch.randn(width, 4 * width).half() * 0.02
            s[b + "mlp.c_proj.bias"] = torch.zeros(width).half()
            for ln in ("ln_1", "ln_2"):
                s[b + f"{ln}.weight"], s[b + f"{ln}.bias"] = torch.ones(width), torch.zeros(width)

    tower("visual.", 768, 12)
    tower("", 512, 12)
    s["visual.conv1.weight"] = torch.randn(768, 3, 16, 16).half() * 0.02
    s["visual.class_embedding"] = torch.randn(768) * 0.02
    s["visual.positional_embedding"] = torch.randn(24 * 8 + 1, 768) * 0.02
    s["visual.proj"] = torch.randn(768, 512).half() * 0.02
    s["token_embedding.weight"] = torch.randn(49408, 512) * 0.02
    s["positional_embedding"] = torch.randn(77, 512) * 0.02
    s["text_projection"] = torch.randn(512, 512).half() * 0.02
    s["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    for ln, width in (("visual.ln_pre", 768), ("visual.ln_post", 768), ("ln_final", 512)):
        s[f"{ln}.weight"], s[f"{ln}.bias"] = torch.ones(width), torch.zeros(width)
    return {"base_model." + k: v for k, v in s.items()}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-irra-"))
    try:
        model = vit_b16_irra_state()
        model["classifier.weight"] = torch.randn(11003, 512).half()
        torch.save({"model": model, "optimizer": {}, "epoch": 60}, work / "best.pth")
        args = {"img_size": (384, 128), "stride_size": 16, "temperature": 0.02}
        (work / "configs.yaml").write_text(yaml.dump(args))
        size = (work / "best.pth").stat().st_size / 2**20
        start = time.perf_counter()
        convert_irra(work / "best.pth", work / "model")
        converted = time.perf_counter() - start
        start = time.perf_counter()
        TBPSModel.from_pretrained(work / "model")
        loaded = time.perf_counter() - start
        print(
            f"IRRA best.pth, ViT-B/16 at 384x128 ({size:.0f} MiB): converted in {converted:.1f} s, "
            f"folder loaded in {loaded:.1f} s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
