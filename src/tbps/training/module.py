"""TBPSLightningModule: training step (weighted objectives), validation/test retrieval metrics."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from tbps.evaluation.evaluator import evaluate_embeddings
from tbps.losses import LossInputs, compute_losses
from tbps.model.tbps import TBPSModel
from tbps.training.optim import build_adamw, build_warmup_cosine

log = logging.getLogger(__name__)


class TBPSLightningModule(L.LightningModule):
    """Wraps a :class:`TBPSModel` built from ``model_spec``.

    Training minimises ``sum_k weight_k * objective_k``; every epoch the val split is encoded
    (gallery images once, every caption a query) and ``val/t2i/R1`` etc. are logged.
    """

    def __init__(
        self,
        model_spec: dict[str, Any],
        objectives: dict[str, float],
        num_classes: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_epochs: float = 1.0,
        warmup_start_factor: float = 0.01,
        end_lr_factor: float = 0.01,
        tokenizer_state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_state"])
        self.model = TBPSModel.from_spec(model_spec)
        self.objectives = dict(objectives)
        self.tokenizer_state = tokenizer_state
        self._eval_buffers: dict[str, list[torch.Tensor]] = {}
        self.results: dict[str, dict] = {}

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        inputs = LossInputs(
            image_feats=self.model.image_embeddings(batch["images"]),
            text_feats=self.model.text_embeddings(batch["input_ids"], batch["attention_mask"]),
            pids=batch["pids"],
            logit_scale=self.model.logit_scale(),
        )
        losses = compute_losses(self.objectives, inputs)
        batch_size = batch["pids"].shape[0]
        self.log("train/loss", losses["total"], prog_bar=True, batch_size=batch_size)
        for name, value in losses.items():
            if name != "total":
                self.log(f"train/{name}", value, batch_size=batch_size)
        self.log("train/logit_scale", inputs.logit_scale.detach(), batch_size=batch_size)
        return losses["total"]

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = build_adamw(self.model, hp.lr, hp.weight_decay, hp.betas, hp.eps)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = min(int(round(hp.warmup_epochs * per_epoch)), max(total - 1, 0))
        scheduler = build_warmup_cosine(
            optimizer, total, warmup, hp.warmup_start_factor, hp.end_lr_factor
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -- evaluation ---------------------------------------------------------------------------
    def _eval_start(self) -> None:
        self._eval_buffers = {"images": [], "image_pids": [], "texts": [], "text_pids": []}

    def _eval_step(self, batch: dict, dataloader_idx: int) -> None:
        if dataloader_idx == 0:
            self._eval_buffers["images"].append(self.model.encode_image(batch["images"]).float())
            self._eval_buffers["image_pids"].append(batch["pids"])
        else:
            feats = self.model.encode_text(batch["input_ids"], batch["attention_mask"])
            self._eval_buffers["texts"].append(feats.float())
            self._eval_buffers["text_pids"].append(batch["pids"])

    def _eval_end(self, prefix: str) -> None:
        buffers = {k: torch.cat(v).cpu() for k, v in self._eval_buffers.items() if v}
        self._eval_buffers = {}
        if set(buffers) != {"images", "image_pids", "texts", "text_pids"}:
            log.warning("%s: gallery or query loader produced no batch; metrics skipped", prefix)
            return
        results = evaluate_embeddings(
            buffers["images"], buffers["image_pids"], buffers["texts"], buffers["text_pids"]
        )
        self.results[prefix] = results
        for task, metrics in results.items():
            for key in ("R1", "R5", "R10", "mAP", "mINP"):
                self.log(
                    f"{prefix}/{task}/{key}",
                    float(metrics[key]),
                    prog_bar=(key == "R1" and task == "t2i"),
                )

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # -- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.tokenizer_state is not None:
            checkpoint["tbps_tokenizer"] = self.tokenizer_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokenizer_state = checkpoint.get("tbps_tokenizer", self.tokenizer_state)
