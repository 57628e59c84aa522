"""Partial fine-tuning of a backbone: frozen towers, CLIPFit, and LoRA adapters through peft."""

from __future__ import annotations

import copy
import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from tbps.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("full", "clipfit", "lora")
TOWERS = ("vision", "text")
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
DEFAULT_FINETUNE: dict[str, Any] = {
    "mode": "full",
    "freeze": [],
    "train_heads": True,
    "lora": {
        "r": 16,
        "alpha": 16,
        "dropout": 0.1,
        "target_modules": ["q_proj", "k_proj", "v_proj", "fc1", "fc2"],
    },
}
# parameter-name prefixes (relative to the transformers model) of each tower and of the heads
TOWER_PREFIXES = {
    "vision": ("vision_model.", "visual_projection."),
    "text": ("text_model.", "text_projection."),
}
HEAD_PREFIXES = {
    "clip": ("visual_projection.", "text_projection.", "logit_scale"),
    "siglip": ("vision_model.head.", "text_model.head.", "logit_scale", "logit_bias"),
}
_TEXT_MLP_BIAS = re.compile(r"text_model\.encoder\.layers\.\d+\.mlp\.fc[12]\.bias")


def finetune_settings(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validated fine-tuning settings with defaults filled in (JSON-serialisable).

    ``mode``: ``full`` (everything trains), ``clipfit`` (vision LayerNorms, text MLP biases
    and the heads), ``lora`` (LoRA adapters on ``lora.target_modules`` of the encoder layers,
    plus the heads); ``freeze``: towers (``vision``, ``text``) kept frozen in every mode;
    ``train_heads``: projections / pooling heads / logit scale and bias train in clipfit and
    lora modes.
    """
    settings = dict(settings or {})
    unknown = set(settings) - set(DEFAULT_FINETUNE)
    if unknown:
        raise ConfigError(
            f"unknown backbone.finetune key(s) {sorted(unknown)}; valid: {sorted(DEFAULT_FINETUNE)}"
        )
    out = copy.deepcopy(DEFAULT_FINETUNE)
    lora = dict(settings.pop("lora", None) or {})
    out.update({k: v for k, v in settings.items() if v is not None})
    if out["mode"] not in MODES:
        raise ConfigError(
            f"unknown backbone.finetune.mode {out['mode']!r}; valid: {', '.join(MODES)}"
        )
    freeze = [out["freeze"]] if isinstance(out["freeze"], str) else list(out["freeze"] or [])
    bad = [t for t in freeze if t not in TOWERS]
    if bad:
        raise ConfigError(
            f"unknown tower(s) {bad} in backbone.finetune.freeze; valid: {', '.join(TOWERS)}"
        )
    out["freeze"] = [t for t in TOWERS if t in freeze]
    out["train_heads"] = bool(out["train_heads"])
    unknown = set(lora) - set(DEFAULT_FINETUNE["lora"])
    if unknown:
        raise ConfigError(
            f"unknown backbone.finetune.lora key(s) {sorted(unknown)}; "
            f"valid: {sorted(DEFAULT_FINETUNE['lora'])}"
        )
    out["lora"].update({k: v for k, v in lora.items() if v is not None})
    modules = out["lora"]["target_modules"]
    modules = [modules] if isinstance(modules, str) else list(modules)
    bad = [m for m in modules if m not in LORA_MODULES]
    if bad or not modules:
        raise ConfigError(
            f"backbone.finetune.lora.target_modules {modules} must be a non-empty subset of "
            f"{', '.join(LORA_MODULES)}"
        )
    out["lora"] = {
        "r": int(out["lora"]["r"]),
        "alpha": float(out["lora"]["alpha"]),
        "dropout": float(out["lora"]["dropout"]),
        "target_modules": modules,
    }
    if out["lora"]["r"] < 1:
        raise ConfigError(f"backbone.finetune.lora.r must be >= 1, got {out['lora']['r']}")
    if out["mode"] == "lora" and len(out["freeze"]) == len(TOWERS):
        raise ConfigError("backbone.finetune.mode=lora with both towers frozen trains no adapter")
    return out


def lora_target_pattern(towers: list[str], modules: list[str]) -> str:
    """A regex (peft full-match on module names) for ``modules`` in the encoder layers of towers."""
    tower_names = "|".join(f"{t}_model" for t in towers)
    return rf"({tower_names})\.encoder\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(modules)})"


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _tower(name: str) -> str | None:
    for tower, prefixes in TOWER_PREFIXES.items():
        if name.startswith(prefixes):
            return tower
    return None


def _vision_layer_norm_params(model: nn.Module) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        if module_name.startswith("vision_model.") and isinstance(module, nn.LayerNorm):
            names.update(f"{module_name}.{p}" for p, _ in module.named_parameters())
    return names


def apply_finetuning(
    model: nn.Module, kind: str, settings: Mapping[str, Any], train_logit_scale: bool = True
) -> nn.Module:
    """Set which parameters of a CLIP/SigLIP ``model`` train; LoRA wraps it in a ``PeftModel``.

    Returns the model to use (the peft wrapper in LoRA mode, else ``model`` itself).
    ``train_logit_scale=False`` freezes the logit scale (a fixed temperature is in use).
    """
    settings = finetune_settings(settings)
    if settings["mode"] == "lora":
        lora = settings["lora"]
        towers = [t for t in TOWERS if t not in settings["freeze"]]
        config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora_target_pattern(towers, lora["target_modules"]),
            bias="none",
        )
        with warnings.catch_warnings():  # transformers' deprecation notice reached via peft
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = get_peft_model(model, config)
    base = unwrap(model)
    layer_norms = _vision_layer_norm_params(base) if settings["mode"] == "clipfit" else set()
    for name, param in base.named_parameters():
        param.requires_grad_(
            _trains(name, kind, settings, layer_norms)
            and (train_logit_scale or name != "logit_scale")
        )
    return model


def _trains(name: str, kind: str, settings: dict[str, Any], layer_norms: set[str]) -> bool:
    if _tower(name) in settings["freeze"]:
        return False
    mode = settings["mode"]
    if mode == "full":
        return True
    if settings["train_heads"] and name.startswith(HEAD_PREFIXES[kind]):
        return True
    if mode == "clipfit":
        return name in layer_norms or bool(_TEXT_MLP_BIAS.fullmatch(name))
    return ".lora_" in name


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the base weights; returns the plain transformers model."""
    if not isinstance(model, PeftModel):
        return model
    return model.merge_and_unload()


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
