"""The weighted sum of objectives, built from the ``objectives`` config section."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from tbps.errors import ConfigError
from tbps.losses.contrastive import itc, sdm


@dataclass
class LossInputs:
    """What the objectives of one training step may use (raw, unnormalised embeddings)."""

    image_feats: torch.Tensor
    text_feats: torch.Tensor
    pids: torch.Tensor
    logit_scale: torch.Tensor


#: objective name -> function of the step's LossInputs
OBJECTIVES: dict[str, Callable[[LossInputs], torch.Tensor]] = {
    "itc": lambda x: itc(x.image_feats, x.text_feats, x.logit_scale),
    "sdm": lambda x: sdm(x.image_feats, x.text_feats, x.pids, x.logit_scale),
}


def objective_weights(config: Mapping[str, Mapping]) -> dict[str, float]:
    """Validate ``{name: {enabled: bool, weight: float}}`` and return the enabled weights."""
    weights: dict[str, float] = {}
    for name, entry in config.items():
        if name not in OBJECTIVES:
            raise ConfigError(
                f"unknown objective objectives.{name}; valid: {', '.join(sorted(OBJECTIVES))}"
            )
        if not isinstance(entry, Mapping):
            raise ConfigError(f"objectives.{name} must be a mapping with 'enabled' and 'weight'")
        unknown = set(entry) - {"enabled", "weight"}
        if unknown:
            raise ConfigError(
                f"objectives.{name}: unknown key(s) {sorted(unknown)}; valid: enabled, weight"
            )
        if not entry.get("enabled", True):
            continue
        weight = float(entry.get("weight", 1.0))
        if weight < 0:
            raise ConfigError(f"objectives.{name}.weight must be >= 0, got {weight}")
        weights[name] = weight
    if not weights:
        raise ConfigError(
            "no objective enabled: set objectives.<name>.enabled=true for at least one"
        )
    return weights


def compute_losses(weights: Mapping[str, float], inputs: LossInputs) -> dict[str, torch.Tensor]:
    """Each weighted term as ``{name: weight * loss}`` plus ``total`` (their sum)."""
    terms = {name: weight * OBJECTIVES[name](inputs) for name, weight in weights.items()}
    terms["total"] = torch.stack(list(terms.values())).sum()
    return terms
