"""The forward passes of one training step: embeddings, extra views and heads -> LossInputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tbps.errors import ConfigError
from tbps.losses import LossInputs, required_features
from tbps.losses.classification import IGNORE_INDEX
from tbps.model.tbps import TBPSModel
from tbps.training.heads import TrainingHeads

#: batch key -> what produces it (for the error when the data module did not)
VIEW_KEYS = {
    "aug_images": "the MVS view (an objective sets mvs: true)",
    "ss_images1": "the first SimCLR view (objectives.ss)",
    "ss_images2": "the second SimCLR view (objectives.ss)",
    "mlm_input_ids": "the masked caption copy (objectives.mlm)",
    "mlm_labels": "the MLM labels (objectives.mlm)",
}


def _view(batch: Mapping[str, Any], key: str) -> torch.Tensor:
    if key not in batch:
        raise ConfigError(
            f"the training batch has no {key!r} ({VIEW_KEYS[key]}); the data module must be "
            "built with the views the objectives need (tbps.data.views.required_views)"
        )
    return batch[key]


def step_inputs(
    model: TBPSModel,
    heads: TrainingHeads,
    objectives: Mapping[str, Mapping[str, Any]],
    batch: Mapping[str, Any],
    weights: torch.Tensor | None = None,
    softlabel_ramp: float = 1.0,
) -> tuple[LossInputs, dict[str, torch.Tensor]]:
    """Run the towers and heads the enabled objectives need on a training batch.

    Returns the LossInputs and detached accuracies (``id_acc_image``, ``id_acc_text``,
    ``mlm_acc``) of the heads that ran. The default ITC/SDM path runs only the two pooled
    embeddings, as before.
    """
    needs = required_features(objectives)
    images, input_ids, mask = batch["images"], batch["input_ids"], batch["attention_mask"]
    want_tokens = "mlm_head" in needs
    metrics: dict[str, torch.Tensor] = {}
    tse_image = tse_text = None
    if model.token_selection is not None:
        image_out, tse_image = model.token_selection.encode_image(model, images)
        text_out, tse_text = model.token_selection.encode_text(model, input_ids, mask)
    else:
        image_out = model.image_forward(images, tokens=want_tokens)
        text_out = model.text_forward(input_ids, mask)
    inputs = LossInputs(
        image_feats=image_out.embeds,
        text_feats=text_out.embeds,
        pids=batch["pids"],
        logit_scale=model.logit_scale(),
        logit_bias=model.logit_bias() if model.is_sigmoid else None,
        weights=weights,
        tse_image_feats=tse_image,
        tse_text_feats=tse_text,
        softlabel_ramp=softlabel_ramp,
    )
    if any(p.get("mvs") for p in objectives.values()):
        inputs.aug_image_feats = model.image_embeddings(_view(batch, "aug_images"))
    if heads.ss_projector is not None and "ss_head" in needs:
        inputs.ss_feats1 = heads.ss_projector(model.image_embeddings(_view(batch, "ss_images1")))
        inputs.ss_feats2 = heads.ss_projector(model.image_embeddings(_view(batch, "ss_images2")))
    if heads.id_classifier is not None and "id_head" in needs:
        inputs.image_logits = heads.id_classifier(inputs.image_feats)
        inputs.text_logits = heads.id_classifier(inputs.text_feats)
        with torch.no_grad():
            metrics["id_acc_image"] = _accuracy(inputs.image_logits, inputs.pids)
            metrics["id_acc_text"] = _accuracy(inputs.text_logits, inputs.pids)
    if heads.mlm is not None and "mlm_head" in needs:
        labels = _view(batch, "mlm_labels")
        masked_ids = _view(batch, "mlm_input_ids")
        masked_mask = batch.get("mlm_attention_mask", mask)
        masked = model.text_forward(masked_ids, masked_mask, tokens=True)
        positions = labels != IGNORE_INDEX
        inputs.mlm_logits = heads.mlm(
            masked.tokens, masked_mask, image_out.tokens, positions=positions
        )
        inputs.mlm_labels = labels[positions]
        with torch.no_grad():
            metrics["mlm_acc"] = _accuracy(inputs.mlm_logits, inputs.mlm_labels)
    return inputs, metrics


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if labels.numel() == 0:
        return logits.new_zeros(())
    return (logits.argmax(dim=-1) == labels).float().mean()


def softlabel_ramp(step: int, first_epoch_steps: float) -> float:
    """Fraction of the soft-label ratio in force: linear from 0 at step 0 to 1 after the first
    epoch's optimizer steps, then 1."""
    if first_epoch_steps <= 0:
        return 1.0
    return min(1.0, step / first_epoch_steps)
