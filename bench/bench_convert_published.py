"""Time `tbps convert` of ViT-B/16-sized released checkpoints (random weights, real layouts).

    python bench/bench_convert_published.py

Writes an OpenAI-layout CLIP ViT-B/16 (12 + 12 layers, 768/512 wide, 512-d embedding, 77
tokens) as each method stores it, converts it to a model folder and loads it:
IRRA (base_model. prefix, fp16 linear weights, a 24x8 + 1 position table for 384x128,
configs.yaml with tuples), RDE (the same plus its 1024-d token-selection branches) and
TBPS-CLIP (fp32, encode_text. prefix, 224x224, a pickled EasyDict config).
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import yaml

from tbps.model.published import convert_published
from tbps.model.tbps import TBPSModel


def vit_b16_openai_state(grid: tuple[int, int]) -> dict[str, torch.Tensor]:
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
    s["visual.positional_embedding"] = torch.randn(grid[0] * grid[1] + 1, 768) * 0.02
    s["visual.proj"] = torch.randn(768, 512).half() * 0.02
    s["token_embedding.weight"] = torch.randn(49408, 512) * 0.02
    s["positional_embedding"] = torch.randn(77, 512) * 0.02
    s["text_projection"] = torch.randn(512, 512).half() * 0.02
    s["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    for ln, width in (("visual.ln_pre", 768), ("visual.ln_post", 768), ("ln_final", 512)):
        s[f"{ln}.weight"], s[f"{ln}.bias"] = torch.ones(width), torch.zeros(width)
    return s


def rde_branches(dim: int = 1024) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for module, linears in (
        ("visul_emb_layer", ("fc", "linear")),
        ("texual_emb_layer", ("linear",)),
    ):
        shapes = {name: (dim, 512) for name in linears}
        shapes.update({"mlp.layers.0": (dim // 2, 512), "mlp.layers.1": (dim, dim // 2)})
        for name, shape in shapes.items():
            out[f"{module}.{name}.weight"] = torch.randn(*shape).half() * 0.02
            out[f"{module}.{name}.bias"] = torch.zeros(shape[0]).half()
        for i, n in ((0, dim // 2), (1, dim)):
            bn = f"{module}.mlp.bns.{i}."
            out[bn + "weight"], out[bn + "bias"] = torch.ones(n), torch.zeros(n)
            out[bn + "running_mean"], out[bn + "running_var"] = torch.zeros(n), torch.ones(n)
            out[bn + "num_batches_tracked"] = torch.tensor(0)
    return out


class EasyDict(dict):
    """Pickles as easydict.EasyDict does (the class TBPS-CLIP's config is)."""


def write(method: str, work: Path) -> Path:
    folder = work / method
    folder.mkdir()
    if method == "tbps_clip":
        state = {
            k if k.startswith("visual.") or k == "logit_scale" else "encode_text." + k: v.float()
            for k, v in vit_b16_openai_state((14, 14)).items()
        }
        EasyDict.__module__ = "easydict"
        sys.modules.setdefault("easydict", types.ModuleType("easydict")).EasyDict = EasyDict
        config = EasyDict(experiment={"input_resolution": [224, 224], "text_length": 77})
        path = folder / "checkpoint_best.pth"
        torch.save({"model": state, "optimizer": {}, "config": config}, path)
        return path
    state = {"base_model." + k: v for k, v in vit_b16_openai_state((24, 8)).items()}
    state["classifier.weight"] = torch.randn(11003, 512).half()
    if method == "rde":
        state.update(rde_branches())
    torch.save({"model": state, "optimizer": {}, "epoch": 60}, folder / "best.pth")
    args = {"img_size": (384, 128), "stride_size": 16, "temperature": 0.02}
    (folder / "configs.yaml").write_text(yaml.dump({**args, "select_ratio": 0.3}))
    return folder / "best.pth"


def main() -> None:
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        print("| method | file | convert | load folder |")
        print("|---|---|---|---|")
        for method in ("irra", "rde", "tbps_clip"):
            src = write(method, work)
            size = src.stat().st_size / 2**20
            start = time.perf_counter()
            convert_published(method, src, work / f"{method}-model")
            converted = time.perf_counter() - start
            start = time.perf_counter()
            TBPSModel.from_pretrained(work / f"{method}-model")
            loaded = time.perf_counter() - start
            print(f"| {method} | {src.name}, {size:.0f} MiB | {converted:.1f} s | {loaded:.1f} s |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
