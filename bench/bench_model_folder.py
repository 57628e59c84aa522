"""The model outside its training loop: eval of an exported folder vs the run's own metrics,
folder load time, `import tbps` weight, ONNX parity and onnxruntime vs torch throughput.

    python bench/bench_model_folder.py [--epochs 1] [--threads 2]

Trains two short `scratch_small` runs (ITC+SDM and objectives=rde) on the synthetic data,
exports each (`tbps export`), evaluates the folder (`tbps eval model=DIR`) and prints the
metrics next to the run's metrics.json; then times loading and the ONNX encoders.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = [
    "backbone=scratch_small",
    "data.synth.num_identities=300",
    "trainer.enable_progress_bar=false",
    "report.failures=0",
]


def tbps(*args: str) -> None:
    cmd = [sys.executable, "-m", "tbps", *args]
    print("$", "tbps", " ".join(args), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])


def compare(work: Path, name: str, extra: list[str], epochs: int) -> None:
    run, folder, result = work / f"run-{name}", work / f"model-{name}", work / f"eval-{name}.json"
    synth = ["data.synth.num_identities=300", f"cache_dir={work / 'cache'}"]
    tbps("train", *RUN, *extra, f"trainer.max_epochs={epochs}", f"run_dir={run}", *synth[1:])
    tbps("export", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"out={folder}")
    start = time.perf_counter()
    tbps("eval", f"model={folder}", f"out={result}", *synth)
    seconds = time.perf_counter() - start
    want = json.loads((run / "metrics.json").read_text())["test"]["best"]
    got = json.loads(result.read_text())
    print(f"\n{name}: test split, best weights ({seconds:.1f} s for tbps eval incl. imports)")
    print(f"{'':<6}{'metric':<7}{'metrics.json':>14}{'eval model=DIR':>16}  equal")
    for task in ("t2i", "i2t"):
        for key in ("R1", "R5", "R10", "mAP", "mINP"):
            a, b = want[task][key], got[task][key]
            print(f"{task:<6}{key:<7}{a:>14.4f}{b:>16.4f}  {a == b}")


def load_times(folder: Path, repeats: int = 5) -> None:
    code = f"""
import statistics, sys, time
t0 = time.perf_counter(); import tbps; t_tbps = time.perf_counter() - t0
heavy = [m for m in ("torch", "transformers", "lightning", "hydra") if m in sys.modules]
from tbps import TBPSModel
import transformers.models.clip.modeling_clip, peft
times = []
for _ in range({repeats}):
    t = time.perf_counter(); TBPSModel.from_pretrained({str(folder)!r}); times.append(time.perf_counter() - t)
after = [m for m in ("lightning", "hydra", "omegaconf") if m in sys.modules]
print(t_tbps, min(times), statistics.median(times), ','.join(heavy) or '-', ','.join(after) or '-')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    t_tbps, fastest, median, heavy, after = out.stdout.split()
    print(
        f"\nimport tbps: {float(t_tbps) * 1000:.1f} ms; torch/transformers/lightning/hydra loaded: {heavy}"
    )
    print(
        f"TBPSModel.from_pretrained (scratch_small, after imports), {repeats} loads: "
        f"min {float(fastest):.3f} s, median {float(median):.3f} s; lightning/hydra/omegaconf loaded: {after}"
    )


def onnx_throughput(folder: Path, work: Path, threads: int) -> None:
    import numpy as np
    import torch

    from tbps.model.export import IMAGE_ONNX, TEXT_ONNX, export_onnx, onnx_session
    from tbps.model.tbps import TBPSModel

    torch.set_num_threads(threads)
    model = TBPSModel.from_pretrained(folder)
    out = work / "onnx"
    start = time.perf_counter()
    report = export_onnx(model, out)
    print(
        f"\nONNX export {time.perf_counter() - start:.1f} s; parity image {report['image_max_diff']:.2e}, "
        f"text {report['text_max_diff']:.2e}"
    )
    image_session = onnx_session(out / IMAGE_ONNX, threads)
    text_session = onnx_session(out / TEXT_ONNX, threads)
    pixels = torch.rand(32, 3, *model.image_size)
    tokens = model.tokenize(["a woman in a red coat carrying a black backpack"] * 64)
    feeds = {k: v.numpy() for k, v in tokens.items()}

    def best(fn, n=5):
        fn()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    with torch.no_grad():
        t_img = best(lambda: model.encode_images(pixels))
        t_txt = best(lambda: model.encode_texts(**tokens))
    o_img = best(lambda: image_session.run(None, {"pixel_values": pixels.numpy()}))
    o_txt = best(lambda: text_session.run(None, feeds))
    diff = np.abs(
        image_session.run(None, {"pixel_values": pixels.numpy()})[0]
        - model.encode_images(pixels).detach().numpy()
    ).max()
    print(f"{threads} thread(s), median of 5    torch         onnxruntime   speed-up")
    print(
        f"images/s (batch 32)       {32 / t_img:>10.1f}  {32 / o_img:>14.1f}   {t_img / o_img:.2f}x"
    )
    print(
        f"captions/s (batch 64)     {64 / t_txt:>10.1f}  {64 / o_txt:>14.1f}   {t_txt / o_txt:.2f}x"
    )
    print(f"max |diff| at batch 32: {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tbps-bench-model-"))
    compare(work, "itc_sdm", [], args.epochs)
    compare(work, "rde", ["objectives=rde"], args.epochs)
    load_times(work / "model-itc_sdm")
    onnx_throughput(work / "model-rde", work, args.threads)


if __name__ == "__main__":
    main()
