"""Training objectives: one pure function per objective, plus their weighted composition."""

from tbps.losses.composition import OBJECTIVES, LossInputs, compute_losses, objective_weights
from tbps.losses.contrastive import itc, sdm

__all__ = ["OBJECTIVES", "LossInputs", "compute_losses", "itc", "objective_weights", "sdm"]
