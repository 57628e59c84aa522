"""The weighted sum of objectives, built and validated from the ``objectives`` config section.

Config shape: ``{name: {enabled: bool, weight: float, <objective parameters>}}``. Each objective
declares its parameters (with defaults) in :data:`OBJECTIVES`; unknown keys are rejected with
the valid ones listed. ``resolve_objectives`` returns the enabled ones as plain dicts
``{name: {"weight": w, <every parameter>}}`` (what the training module receives).

Common options of the cross-modal objectives:
- ``mvs``: also contrast the MVS view (batch key ``aug_images``) with the captions and average
  the two views' losses (the augmented view gets gradients).
- ``tse``: also apply the objective to RDE's token-selection embeddings (a separate term
  ``<name>_tse`` with the same weight); ``tse_ratio`` / ``tse_dim`` configure that head.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from tbps.errors import ConfigError
from tbps.losses.classification import id_loss, mlm_loss
from tbps.losses.common import as_float, float32_region
from tbps.losses.consistency import citc
from tbps.losses.contrastive import CMPM_TARGET_NORMS, cmpm, itc, nitc, ritc, sdm, sigmoid_nitc
from tbps.losses.selfsup import simclr
from tbps.losses.triplet import tal


@dataclass
class LossInputs:
    """What the objectives of one training step may use (raw, unnormalised embeddings).

    Only ``image_feats``, ``text_feats``, ``pids`` and ``logit_scale`` are always present; the
    rest is filled by the training step when an enabled objective needs it.
    """

    image_feats: torch.Tensor
    text_feats: torch.Tensor
    pids: torch.Tensor
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None = None  # sigmoid-style backbones only
    weights: torch.Tensor | None = None  # per-sample (boosting)
    aug_image_feats: torch.Tensor | None = None  # MVS view
    tse_image_feats: torch.Tensor | None = None
    tse_text_feats: torch.Tensor | None = None
    ss_feats1: torch.Tensor | None = None  # projected SimCLR views
    ss_feats2: torch.Tensor | None = None
    image_logits: torch.Tensor | None = None  # ID classifier
    text_logits: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None  # (M, V) at the masked positions
    mlm_labels: torch.Tensor | None = None  # (M,)
    softlabel_ramp: float = 1.0  # fraction of the soft-label ratio in force (0 -> 1, epoch 1)

    #: per-sample tensors that batch-level objectives see over the global batch under DDP
    GATHERED = (
        "image_feats",
        "text_feats",
        "pids",
        "weights",
        "aug_image_feats",
        "tse_image_feats",
        "tse_text_feats",
        "ss_feats1",
        "ss_feats2",
    )

    def gathered(self, gather: Callable[[dict], dict]) -> LossInputs:
        """A copy whose per-sample tensors are replaced by ``gather({name: tensor})``."""
        return replace(self, **gather({name: getattr(self, name) for name in self.GATHERED}))

    def in_float32(self) -> LossInputs:
        """A copy whose half-precision (autocast) tensors are promoted to float32."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(
            self, **{n: as_float(t) for n, t in tensors.items() if isinstance(t, torch.Tensor)}
        )


CrossModalFn = Callable[[torch.Tensor, torch.Tensor, LossInputs, Mapping[str, Any]], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """One registered objective.

    ``cross_modal`` objectives are functions of (image_feats, text_feats) and support ``mvs``
    and ``tse``; others read what they need from the LossInputs. ``batch_level`` objectives
    use the cross-rank gathered inputs under DDP. ``needs`` lists what the model must provide:
    ``id_head``, ``mlm_head``, ``ss_head``, ``logit_bias``.
    """

    fn: Callable[..., torch.Tensor]
    params: Mapping[str, Any] = field(default_factory=dict)
    cross_modal: bool = True
    batch_level: bool = True
    accepts_weights: bool = True
    uses_logit_scale: bool = True
    needs: tuple[str, ...] = ()
    summary: str = ""


def _ramped(p: Mapping[str, Any], x: LossInputs) -> float:
    return float(p["softlabel_ratio"]) * x.softlabel_ramp


def _ritc_bias(p: Mapping[str, Any], x: LossInputs) -> torch.Tensor | None:
    form = p["form"]
    if form == "auto":
        return x.logit_bias
    return x.logit_bias if form == "sigmoid" else None


_CROSS = {"mvs": False, "tse": False, "tse_ratio": 0.3, "tse_dim": None}

#: objective name -> definition (function of (image_feats, text_feats, inputs, params))
OBJECTIVES: dict[str, Objective] = {
    "itc": Objective(
        lambda f, g, x, p: itc(f, g, x.logit_scale, weights=x.weights),
        {**_CROSS},
        summary="InfoNCE with diagonal targets",
    ),
    "sdm": Objective(
        lambda f, g, x, p: sdm(f, g, x.pids, x.logit_scale, p["epsilon"], weights=x.weights),
        {"epsilon": 1e-8, **_CROSS},
        summary="similarity distribution matching (IRRA)",
    ),
    "cmpm": Objective(
        lambda f, g, x, p: cmpm(
            f, g, x.pids, p["epsilon"], weights=x.weights, target_norm=p["target_norm"]
        ),
        {"epsilon": 1e-8, "target_norm": "l2", **_CROSS},
        uses_logit_scale=False,
        summary="cross-modal projection matching",
    ),
    "nitc": Objective(
        lambda f, g, x, p: nitc(
            f, g, x.pids, x.logit_scale, alpha=_ramped(p, x), weights=x.weights
        ),
        {"softlabel_ratio": 0.0, **_CROSS},
        summary="soft-label ITC with id targets (TBPS-CLIP)",
    ),
    "sigmoid_nitc": Objective(
        lambda f, g, x, p: sigmoid_nitc(
            f, g, x.pids, x.logit_scale, x.logit_bias, alpha=_ramped(p, x), weights=x.weights
        ),
        {"softlabel_ratio": 0.0, **_CROSS},
        needs=("logit_bias",),
        summary="SigLIP pairwise sigmoid loss, same-id pairs positive",
    ),
    "ritc": Objective(
        lambda f, g, x, p: ritc(
            f, g, x.pids, x.logit_scale, p["eps"], logit_bias=_ritc_bias(p, x), weights=x.weights
        ),
        {"eps": 0.01, "form": "auto", **_CROSS},
        summary="reverse KL to the id targets (TBPS-CLIP)",
    ),
    "citc": Objective(
        lambda f, g, x, p: citc(f, g, x.logit_scale, p["inmodal_weight"], p["intermodal_weight"]),
        {"inmodal_weight": 0.25, "intermodal_weight": 0.25, "mvs": False},
        accepts_weights=False,
        uses_logit_scale=False,
        summary="cyclic consistency of in- and cross-modal similarities (CyCLIP)",
    ),
    "tal": Objective(
        lambda f, g, x, p: tal(f, g, x.pids, p["margin"], p["tau"], weights=x.weights),
        {"margin": 0.1, "tau": 0.015, **_CROSS},
        uses_logit_scale=False,
        summary="triplet alignment loss (RDE)",
    ),
    "id": Objective(
        lambda x, p: id_loss(x.image_logits, x.text_logits, x.pids, weights=x.weights),
        {},
        cross_modal=False,
        batch_level=False,
        uses_logit_scale=False,
        needs=("id_head",),
        summary="shared identity classifier on both modalities",
    ),
    "mlm": Objective(
        lambda x, p: mlm_loss(x.mlm_logits, x.mlm_labels),
        {"layers": 4},
        cross_modal=False,
        batch_level=False,
        accepts_weights=False,
        uses_logit_scale=False,
        needs=("mlm_head",),
        summary="masked language modelling over image tokens (IRRA)",
    ),
    "ss": Objective(
        lambda x, p: simclr(x.ss_feats1, x.ss_feats2, p["temperature"]),
        {"temperature": 0.1},
        cross_modal=False,
        accepts_weights=False,
        uses_logit_scale=False,
        needs=("ss_head",),
        summary="SimCLR on two augmented image views",
    ),
}

RITC_FORMS = ("auto", "softmax", "sigmoid")


def _check_param(name: str, key: str, value: Any) -> Any:
    where = f"objectives.{name}.{key}"
    if key in ("mvs", "tse"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    choices = {"form": RITC_FORMS, "target_norm": CMPM_TARGET_NORMS}.get(key)
    if choices is not None:
        if value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
        return value
    if key in ("layers", "tse_dim"):
        if value is None and key == "tse_dim":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where} must be a positive integer, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    value = float(value)
    if key in ("softlabel_ratio", "tse_ratio", "eps") and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where} must be in [0, 1], got {value}")
    if key in ("temperature", "tau", "tse_ratio", "eps", "epsilon") and value <= 0:
        raise ConfigError(f"{where} must be positive, got {value}")
    if value < 0:
        raise ConfigError(f"{where} must be >= 0, got {value}")
    return value


def resolve_objectives(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate the objectives config and return the enabled ones with every parameter filled.

    ``{name: {enabled, weight, **params}}`` -> ``{name: {"weight": w, **params}}``; a bare
    number is read as ``{weight: number}``. Raises :class:`ConfigError` naming the key.
    """
    resolved: dict[str, dict[str, Any]] = {}
    for name, entry in config.items():
        if name not in OBJECTIVES:
            raise ConfigError(
                f"unknown objective objectives.{name}; valid: {', '.join(sorted(OBJECTIVES))}"
            )
        if isinstance(entry, (int, float)) and not isinstance(entry, bool):
            entry = {"weight": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"objectives.{name} must be a mapping with 'enabled', 'weight' and parameters"
            )
        spec = OBJECTIVES[name]
        valid = ["enabled", "weight", *spec.params]
        unknown = sorted(set(entry) - set(valid))
        if unknown:
            raise ConfigError(
                f"objectives.{name}: unknown key(s) {unknown}; valid: {', '.join(valid)}"
            )
        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"objectives.{name}.enabled must be true or false, got {enabled!r}")
        if not enabled:
            continue
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"objectives.{name}.weight must be a number, got {weight!r}")
        if weight < 0:
            raise ConfigError(f"objectives.{name}.weight must be >= 0, got {weight}")
        params = {
            key: _check_param(name, key, entry.get(key, default))
            for key, default in spec.params.items()
        }
        resolved[name] = {"weight": float(weight), **params}
    if not resolved:
        raise ConfigError(
            "no objective enabled: set objectives.<name>.enabled=true for at least one"
        )
    _check_tse_settings(resolved)
    return resolved


def _check_tse_settings(objectives: Mapping[str, Mapping[str, Any]]) -> None:
    users = {n: (p["tse_ratio"], p["tse_dim"]) for n, p in objectives.items() if p.get("tse")}
    if len(set(users.values())) > 1:
        detail = ", ".join(f"{n}: ratio {r}, dim {d}" for n, (r, d) in users.items())
        raise ConfigError(
            "objectives with tse=true share one token-selection head but set different "
            f"tse_ratio/tse_dim ({detail}); give them the same values"
        )


def objective_weights(config: Mapping[str, Any]) -> dict[str, float]:
    """The enabled objectives' weights (validated like :func:`resolve_objectives`)."""
    return {name: p["weight"] for name, p in resolve_objectives(config).items()}


def tse_settings(objectives: Mapping[str, Mapping[str, Any]]) -> tuple[float, int | None] | None:
    """(ratio, dim) of the token-selection head when an objective uses it, else None."""
    for params in objectives.values():
        if params.get("tse"):
            return params["tse_ratio"], params["tse_dim"]
    return None


def uses_mvs(objectives: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether an enabled objective contrasts the MVS view (batch key ``aug_images``)."""
    return any(p.get("mvs") for p in objectives.values())


def required_features(
    objectives: Mapping[str, Mapping[str, Any]], sigmoid_backbone: bool = False
) -> set[str]:
    """What the model must provide for these objectives: heads (``id_head``, ``mlm_head``,
    ``ss_head``, ``tse_head``) and the similarity parameters they read (``logit_scale``,
    ``logit_bias``; softmax objectives never read the bias, it cancels in a softmax)."""
    needs = {need for name in objectives for need in OBJECTIVES[name].needs}
    if tse_settings(objectives) is not None:
        needs.add("tse_head")
    if any(OBJECTIVES[n].uses_logit_scale for n in objectives):
        needs.add("logit_scale")
    if "ritc" in objectives:
        form = objectives["ritc"]["form"]
        if form == "sigmoid" or (form == "auto" and sigmoid_backbone):
            needs.add("logit_bias")
    return needs


def check_objectives_for_backbone(
    objectives: Mapping[str, Mapping[str, Any]], sigmoid_backbone: bool, num_classes: int
) -> None:
    """Reject combinations that cannot train, before training starts (key and fix named)."""
    if "sigmoid_nitc" in objectives and not sigmoid_backbone:
        raise ConfigError(
            "objectives.sigmoid_nitc needs a sigmoid-style backbone with a learnable logit bias "
            "(SigLIP); choose such a backbone or use objectives.nitc with this one"
        )
    if "ritc" in objectives and objectives["ritc"]["form"] == "sigmoid" and not sigmoid_backbone:
        raise ConfigError(
            "objectives.ritc.form=sigmoid needs a sigmoid-style backbone with a logit bias "
            "(SigLIP); set objectives.ritc.form=auto or softmax for this backbone"
        )
    if "id" in objectives and num_classes < 2:
        raise ConfigError(
            f"objectives.id needs the number of training identities (got {num_classes}); "
            "it comes from the training split, which must have at least 2 identities"
        )


def compute_losses(
    objectives: Mapping[str, Mapping[str, Any] | float],
    inputs: LossInputs,
    global_inputs: LossInputs | None = None,
) -> dict[str, torch.Tensor]:
    """Each weighted term as ``{name: weight * loss}`` (plus ``<name>_tse``) and ``total``.

    ``objectives`` as returned by :func:`resolve_objectives` (a bare weight is accepted for
    the parameterless defaults). Batch-level objectives read ``global_inputs`` (the cross-rank
    gathered batch under DDP) when given; per-sample ones (ID, MLM) the local ``inputs``.
    Every objective runs in float32, autocast or not (:func:`float32_region`).
    """
    with float32_region(inputs.image_feats.device):
        return _compute_losses(
            objectives,
            inputs.in_float32(),
            None if global_inputs is None else global_inputs.in_float32(),
        )


def _compute_losses(
    objectives: Mapping[str, Mapping[str, Any] | float],
    inputs: LossInputs,
    global_inputs: LossInputs | None,
) -> dict[str, torch.Tensor]:
    terms: dict[str, torch.Tensor] = {}
    for name, params in objectives.items():
        if not isinstance(params, Mapping):
            params = {"weight": float(params), **_defaults(name)}
        spec = OBJECTIVES[name]
        x = global_inputs if (spec.batch_level and global_inputs is not None) else inputs
        weight = params["weight"]
        if not spec.cross_modal:
            terms[name] = weight * spec.fn(x, params)
            continue
        views = [x.image_feats]
        if params.get("mvs"):
            if x.aug_image_feats is None:
                raise ValueError(f"objectives.{name}.mvs is on but no MVS view was computed")
            views.append(x.aug_image_feats)
        loss = sum(spec.fn(f, x.text_feats, x, params) for f in views) / len(views)
        terms[name] = weight * loss
        if params.get("tse"):
            if x.tse_image_feats is None or x.tse_text_feats is None:
                raise ValueError(f"objectives.{name}.tse is on but no TSE embedding was computed")
            terms[f"{name}_tse"] = weight * spec.fn(x.tse_image_feats, x.tse_text_feats, x, params)
    terms["total"] = torch.stack(list(terms.values())).sum()
    return terms


def _defaults(name: str) -> dict[str, Any]:
    return dict(OBJECTIVES[name].params)
