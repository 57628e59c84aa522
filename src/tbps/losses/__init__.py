"""Training objectives: one pure function per objective, plus their weighted composition."""

from tbps.losses.classification import id_loss, mlm_loss
from tbps.losses.composition import (
    OBJECTIVES,
    LossInputs,
    check_objectives_for_backbone,
    compute_losses,
    objective_weights,
    required_features,
    resolve_objectives,
    tse_settings,
    uses_mvs,
)
from tbps.losses.consistency import citc
from tbps.losses.contrastive import cmpm, itc, nitc, ritc, sdm, sigmoid_nitc
from tbps.losses.selfsup import simclr
from tbps.losses.triplet import tal

__all__ = [
    "OBJECTIVES",
    "LossInputs",
    "check_objectives_for_backbone",
    "citc",
    "cmpm",
    "compute_losses",
    "id_loss",
    "itc",
    "mlm_loss",
    "nitc",
    "objective_weights",
    "required_features",
    "resolve_objectives",
    "ritc",
    "sdm",
    "sigmoid_nitc",
    "simclr",
    "tal",
    "tse_settings",
    "uses_mvs",
]
