"""`tbps export`: a checkpoint or model folder -> a model folder, an HF backbone, or ONNX."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tbps.app.models import load_model, model_source
from tbps.errors import ConfigError
from tbps.model.export import FORMATS, export_hf, export_onnx, require_onnx

log = logging.getLogger(__name__)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; expected a folder to create")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"out={out} exists and is not empty; choose another out or overwrite=true"
        )


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """Write the export into a temporary sibling folder, then move it into place: an export
    that fails leaves neither a half-written folder nor a damaged earlier one."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"unknown export format={cfg.format!r}; valid: {', '.join(FORMATS)}")
    out = Path(cfg.out).expanduser()
    _check_out(out, cfg.overwrite)
    source = model_source(cfg)
    if cfg.format == "onnx":
        require_onnx()  # before loading anything
    model = load_model(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    report: dict[str, Any] = {"format": cfg.format, source[0]: source[1], "out": str(out)}
    try:
        if cfg.format == "tbps":
            model.merge_lora().save_pretrained(staging)
        elif cfg.format == "hf":
            export_hf(model, staging)
        else:
            report.update(export_onnx(model, staging, opset=cfg.opset, verify=cfg.verify))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"{cfg.format} export written to {out} ({size / 2**20:.1f} MiB): {', '.join(files)}")
    if "image_max_diff" in report:
        print(
            f"onnxruntime vs torch: image max |diff| {report['image_max_diff']:.2e}, "
            f"text max |diff| {report['text_max_diff']:.2e}"
        )
    hints = {
        "tbps": f"load it with TBPSModel.from_pretrained('{out}') or tbps eval model={out}",
        "hf": f"transformers.AutoModel.from_pretrained('{out}'); train on it with "
        f"backbone={'clip_b16' if model.kind == 'clip' else 'siglip_b16'} backbone.path={out}",
        "onnx": f"run {out}/image_encoder.onnx and text_encoder.onnx with onnxruntime",
    }
    print(hints[cfg.format])
    return report
