"""Evaluation: retrieval metrics, the encode loop, and scoring a TBPSModel on a split."""

from tbps.evaluation.metrics import (
    chance_level,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
)

__all__ = ["chance_level", "retrieval_metrics", "retrieval_metrics_from_embeddings"]
