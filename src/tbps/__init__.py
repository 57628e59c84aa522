"""tbps: train, evaluate and deploy Text-Based Person Search models."""

__version__ = "0.1.0"
