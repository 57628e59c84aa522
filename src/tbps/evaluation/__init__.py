"""Evaluation: retrieval metrics and the gallery/query evaluator."""

from tbps.evaluation.metrics import chance_level, retrieval_metrics

__all__ = ["chance_level", "retrieval_metrics"]
