"""TBPSLightningModule: training step (weighted objectives), validation/test retrieval metrics."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader

from tbps.errors import ConfigError, TBPSError
from tbps.evaluation.encode import encode_images_batch, encode_texts_batch
from tbps.evaluation.metrics import chance_level
from tbps.evaluation.retrieval import evaluate_embeddings
from tbps.losses import (
    check_objectives_for_backbone,
    compute_losses,
    required_features,
    resolve_objectives,
    tse_settings,
)
from tbps.model.checkpoint import upgrade_state_dict
from tbps.model.tbps import TBPSModel
from tbps.training.distributed import (
    BatchGatherer,
    broadcast_from_rank_zero,
    gather_batch,
    is_rank_zero,
    world_size,
)
from tbps.training.heads import TrainingHeads
from tbps.training.optim import OptimSettings, build_scheduler, steps_per_epoch
from tbps.training.step import softlabel_ramp, step_inputs

log = logging.getLogger(__name__)

NONFINITE_POLICIES = ("error", "skip")

#: Lightning's advice to sync epoch-level logs under DDP, for values that are the same on
#: every rank already (metrics computed on rank 0 and broadcast, the boosted fraction)
_SYNCED_ALREADY = r"It is recommended to use `self\.log\('(val/|test/|train/boosted_fraction)"


class NonFiniteLossError(TBPSError):
    """A loss term became NaN or Inf during training."""


class TBPSLightningModule(L.LightningModule):
    """Wraps a :class:`TBPSModel` built from ``model_spec``.

    Training minimises ``sum_k weight_k * objective_k``; every epoch the val split is encoded
    (gallery images once, every caption a query) and ``val/t2i/R1`` etc. are logged.
    ``optim`` is the optim config section (:class:`tbps.training.optim.OptimSettings`).
    ``objectives`` is the objectives config (``{name: {enabled, weight, ...}}``, see
    :func:`tbps.losses.resolve_objectives`); the heads they need are built here (``heads``).
    ``on_nonfinite``: ``error`` stops at a NaN/Inf loss term, ``skip`` skips that batch
    (counted, logged; single-device only). ``sample_weights`` (per training-dataset index,
    set by the boosting callback) re-weight the objectives that accept per-sample weights.
    ``augment_preset`` is recorded so that older specs without ``interpolation`` still give
    the run's eval transform. RDE's token-selection head is part of the model (``tse=true``
    objectives add it), so ``self.model`` alone is what retrieval needs.
    """

    def __init__(
        self,
        model_spec: dict[str, Any],
        objectives: dict[str, Any],
        num_classes: int = 0,
        optim: dict[str, Any] | None = None,
        tokenizer_state: dict[str, Any] | None = None,
        on_nonfinite: str = "error",
        model: TBPSModel | None = None,
        augment_preset: str = "none",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer_state", "model"])
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(
                f"on_nonfinite_loss must be one of {', '.join(NONFINITE_POLICIES)}, "
                f"got {on_nonfinite!r}"
            )
        self.optim = OptimSettings.from_mapping(optim)
        self.objectives = resolve_objectives(objectives)
        # a prebuilt model carries pretrained weights; checkpoints rebuild it from the spec
        self.model = model if model is not None else TBPSModel.from_spec(model_spec)
        tse = tse_settings(self.objectives)
        if tse is not None and self.model.token_selection is None:
            self.model.add_token_selection(*tse)
        check_objectives_for_backbone(self.objectives, self.model.is_sigmoid, num_classes)
        self.heads = self._build_heads(num_classes)
        self._freeze_unused_similarity_parameters()
        self.on_nonfinite = on_nonfinite
        self.skipped_batches = 0
        self.sample_weights: torch.Tensor | None = None
        self.tokenizer_state = tokenizer_state
        self._eval_buffers: dict[str, list[torch.Tensor]] = {}
        self.results: dict[str, dict] = {}  # last metrics per prefix (val, test)
        self.test_label: str | None = None  # "best" / "last": test metrics as test/best/...
        self.embeddings: dict[str, dict[str, torch.Tensor]] = {}  # last eval embeddings per prefix
        self.chance: dict[str, dict] = {}  # chance level of the last test (rank 0's, broadcast)
        self._train_gather: BatchGatherer | None = None
        self._device_weights: tuple[torch.Tensor, torch.Tensor] | None = None
        self._chance_of: tuple[tuple[torch.Tensor, torch.Tensor], dict] | None = None

    # -- heads --------------------------------------------------------------------------------
    def _build_heads(self, num_classes: int) -> TrainingHeads:
        model, objectives = self.model, self.objectives
        return TrainingHeads(
            embed_dim=model.embed_dim,
            vision_width=model.vision_width,
            text_width=model.text_width,
            vocab_size=model.vocab_size,
            num_classes=num_classes if "id" in objectives else 0,
            mlm_layers=objectives["mlm"]["layers"] if "mlm" in objectives else None,
            ss="ss" in objectives,
        )

    def _freeze_unused_similarity_parameters(self) -> None:
        """Objectives that never read the logit scale/bias (TAL, C-ITC, ...) leave them frozen,
        so they are in no optimizer group and DDP finds no unused parameter."""
        needs = required_features(self.objectives, self.model.is_sigmoid)
        hf = self.model.hf
        unused = [n for n in ("logit_scale", "logit_bias") if n not in needs and hasattr(hf, n)]
        for name in unused:
            param = getattr(hf, name)
            if param.requires_grad:
                param.requires_grad_(False)
                log.info("%s frozen: no enabled objective uses it", name)

    # -- training -------------------------------------------------------------------------------
    def _first_epoch_steps(self) -> float:
        """Optimizer steps of one epoch (accumulation included), for the soft-label ramp."""
        trainer = self.trainer
        batches = trainer.num_training_batches
        if batches == float("inf") or not batches:
            return trainer.estimated_stepping_batches / max(1, trainer.max_epochs or 1)
        return -(-batches // trainer.accumulate_grad_batches)

    def _softlabel_ramp(self) -> float:
        if self._trainer is None or not any(
            p.get("softlabel_ratio") for p in self.objectives.values()
        ):
            return 1.0
        return softlabel_ramp(self.global_step, self._first_epoch_steps())

    def _batch_weights(self, batch: dict) -> torch.Tensor | None:
        if self.sample_weights is None or "indices" not in batch:
            return None
        cached = self._device_weights
        if (
            cached is None
            or cached[0] is not self.sample_weights
            or cached[1].device != self.device
        ):
            # one host-to-device copy per new set of weights, not one per step
            cached = (self.sample_weights, self.sample_weights.to(self.device))
            self._device_weights = cached
        return cached[1][batch["indices"].to(self.device)]

    def _fixed_train_batches(self) -> bool:
        """Whether every training batch has the same rows on every rank: a train loader with
        ``drop_last=True`` and a fixed ``batch_size`` (then the size exchange is skipped)."""
        loader = getattr(self._trainer, "train_dataloader", None) if self._trainer else None
        return isinstance(loader, DataLoader) and loader.drop_last and loader.batch_size is not None

    def _gather_inputs(self, tensors: dict) -> dict:
        if self._train_gather is None:
            self._train_gather = BatchGatherer(equal_sizes=self._fixed_train_batches())
        return self._train_gather(tensors)

    def on_train_start(self) -> None:
        self._train_gather = None  # a new fit checks the batch sizes again at its first step

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        ramp = self._softlabel_ramp()
        inputs, metrics = step_inputs(
            self.model, self.heads, self.objectives, batch, self._batch_weights(batch), ramp
        )
        distributed = world_size() > 1
        global_inputs = inputs.gathered(self._gather_inputs) if distributed else None
        losses = compute_losses(self.objectives, inputs, global_inputs)
        batch_size = batch["pids"].shape[0]
        if not self._finite(losses, batch_idx):
            return None
        # Per-step values are logged unsynced (the loggers write rank 0's): batch-level terms
        # are the same on every rank, per-sample ones (ID, MLM, accuracies) are rank 0's. Under
        # DDP the epoch means over all ranks are logged as train/<name>_epoch, reduced once at
        # the epoch end (sync_dist on a step log would all-reduce at every step).
        values = {"loss": losses["total"]}
        values.update((name, v) for name, v in losses.items() if name != "total")
        values.update(metrics)
        for name, value in values.items():
            key = f"train/{name}"
            self.log(key, value, prog_bar=(name == "loss"), batch_size=batch_size)
            if distributed:
                self.log(
                    f"{key}_epoch",
                    value.detach(),
                    on_step=False,
                    on_epoch=True,
                    batch_size=batch_size,
                    sync_dist=True,
                )
        self.log("train/logit_scale", inputs.logit_scale.detach(), batch_size=batch_size)
        if inputs.logit_bias is not None:
            self.log("train/logit_bias", inputs.logit_bias.detach(), batch_size=batch_size)
        for name, params in self.objectives.items():
            if params.get("softlabel_ratio"):
                alpha = params["softlabel_ratio"] * ramp
                self.log(f"train/{name}_alpha", alpha, batch_size=batch_size)
        return losses["total"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the global gradient norm (before clipping) at the logging interval."""
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            grads = [p.grad.detach() for p in self.parameters() if p.grad is not None]
            if grads:
                norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in grads])
                )
                self.log("train/grad_norm", norm, batch_size=1)

    def _finite(self, losses: dict[str, torch.Tensor], batch_idx: int) -> bool:
        """False when the batch is to be skipped; raises under the ``error`` policy."""
        if bool(torch.isfinite(losses["total"].detach())):
            return True
        bad = [
            f"{name} ({value.item()})"
            for name, value in losses.items()
            if name != "total" and not torch.isfinite(value.detach())
        ]
        where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if self.on_nonfinite == "error":
            raise NonFiniteLossError(
                f"non-finite loss in objective(s) {', '.join(bad)} at {where}; lower optim.lr, "
                "check the data, or set on_nonfinite_loss=skip to skip such batches"
            )
        self.skipped_batches += 1
        log.warning(
            "skipped batch at %s: non-finite loss in %s (%d skipped so far)",
            where,
            ", ".join(bad),
            self.skipped_batches,
        )
        self.log("train/skipped_batches", float(self.skipped_batches), batch_size=1)
        return False

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1:
            warnings.filterwarnings("ignore", _SYNCED_ALREADY, PossibleUserWarning)

    def on_fit_start(self) -> None:
        if self.on_nonfinite == "skip" and self.trainer.world_size > 1:
            raise ConfigError(
                "on_nonfinite_loss=skip works on one device only (ranks would disagree on the "
                "skipped step); use on_nonfinite_loss=error with several devices"
            )

    # -- encoders (evaluation and boosting) ----------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The model's unit-norm retrieval embeddings (see :meth:`TBPSModel.encode_images`)."""
        return self.model.encode_images(images)

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The model's unit-norm retrieval embeddings of captions."""
        return self.model.encode_texts(input_ids, attention_mask)

    def configure_optimizers(self):
        optimizer = self.optim.build_optimizer(self)
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)  # loads the train loader if needed
        batches = trainer.num_training_batches
        if batches == float("inf") or not batches:
            per_epoch = max(1, round(total / max(1, trainer.max_epochs or 1)))
        else:
            per_epoch = steps_per_epoch(int(batches), trainer.accumulate_grad_batches)
        scheduler = build_scheduler(optimizer, self.optim.schedule_for(per_epoch, total))
        log.info(
            "optimizer: %s, %d steps per epoch, %d steps in all", self.optim.name, per_epoch, total
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -- evaluation ---------------------------------------------------------------------------
    def _eval_start(self) -> None:
        self._eval_buffers = {
            k: [] for k in ("images", "image_pids", "image_idx", "texts", "text_pids", "text_idx")
        }

    def _eval_step(self, batch: dict, dataloader_idx: int) -> None:
        if dataloader_idx == 0:
            feats = encode_images_batch(self.model, batch, self.device)
            self._eval_buffers["images"].append(feats)
            self._eval_buffers["image_pids"].append(batch["pids"])
            self._eval_buffers["image_idx"].append(batch["indices"])
        else:
            feats = encode_texts_batch(self.model, batch, self.device)
            self._eval_buffers["texts"].append(feats)
            self._eval_buffers["text_pids"].append(batch["pids"])
            self._eval_buffers["text_idx"].append(batch["indices"])

    def _gather_split(self, feats: torch.Tensor, pids: torch.Tensor, idx: torch.Tensor):
        """Features of every rank, in dataset order, each sample once.

        Under DDP Lightning's eval sampler pads the ranks' shares with repeated samples; the
        rows of all ranks are gathered and de-duplicated by dataset index.
        """
        if world_size() > 1:
            gathered = gather_batch({"feats": feats, "pids": pids, "idx": idx})
            feats, pids, idx = gathered["feats"], gathered["pids"], gathered["idx"]
        order = torch.argsort(idx, stable=True)
        feats, pids, idx = feats[order], pids[order], idx[order]
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[1:] = idx[1:] != idx[:-1]
        return feats[keep], pids[keep]  # on the device: metrics are computed there

    def _rank_zero_scores(
        self,
        prefix: str,
        images: torch.Tensor,
        image_pids: torch.Tensor,
        texts: torch.Tensor,
        text_pids: torch.Tensor,
    ) -> tuple[dict, dict | None]:
        """(metrics, chance level or None) computed once, on rank 0 on the embeddings' device,
        and broadcast: every rank returns rank 0's numbers (or raises rank 0's error)."""
        payload: Any = None
        if is_rank_zero():
            try:
                results = evaluate_embeddings(images, image_pids, texts, text_pids)
                payload = (results, self._chance(prefix, image_pids, text_pids))
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                payload = e
        payload = broadcast_from_rank_zero(payload)
        if isinstance(payload, Exception):
            if is_rank_zero():
                raise payload
            raise TBPSError(f"rank 0 failed to compute the {prefix} metrics: {payload}")
        return payload

    def _chance(
        self, prefix: str, image_pids: torch.Tensor, text_pids: torch.Tensor
    ) -> dict | None:
        """The chance level of a test (computed again only when the scored pids change)."""
        if prefix != "test":
            return None
        key = (image_pids.cpu(), text_pids.cpu())
        cached = self._chance_of
        if cached is not None and all(
            a.shape == b.shape and torch.equal(a, b) for a, b in zip(cached[0], key)
        ):
            return cached[1]
        chance = {"t2i": chance_level(key[1], key[0]), "i2t": chance_level(key[0], key[1])}
        self._chance_of = (key, chance)
        return chance

    def _eval_end(self, prefix: str) -> None:
        buffers = {k: torch.cat(v) for k, v in self._eval_buffers.items() if v}
        self._eval_buffers = {}
        if len(buffers) != 6:
            log.warning("%s: gallery or query loader produced no batch; metrics skipped", prefix)
            return
        images, image_pids = self._gather_split(
            buffers["images"], buffers["image_pids"], buffers["image_idx"]
        )
        texts, text_pids = self._gather_split(
            buffers["texts"], buffers["text_pids"], buffers["text_idx"]
        )
        results, chance = self._rank_zero_scores(prefix, images, image_pids, texts, text_pids)
        self.results[prefix] = results
        if chance is not None:
            self.chance[prefix] = chance
        self.embeddings[prefix] = {
            "images": images.cpu(),
            "image_pids": image_pids.cpu(),
            "texts": texts.cpu(),
            "text_pids": text_pids.cpu(),
        }
        name = f"{prefix}/{self.test_label}" if prefix == "test" and self.test_label else prefix
        for task, metrics in results.items():
            for key in ("R1", "R5", "R10", "mAP", "mINP"):
                self.log(
                    f"{name}/{task}/{key}",
                    float(metrics[key]),
                    prog_bar=(key == "R1" and task == "t2i"),
                    sync_dist=False,  # rank 0's numbers on every rank: nothing to reduce
                )
        if prefix == "val" and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            when = (
                "before training"
                if self.trainer.state.fn == TrainerFn.VALIDATING
                else f"epoch {self.current_epoch + 1}/{self.trainer.max_epochs}"
            )
            log.info(
                "val %s: %s",
                when,
                "; ".join(
                    f"{task} R1 {m['R1']:.2f} R5 {m['R5']:.2f} R10 {m['R10']:.2f} mAP {m['mAP']:.2f}"
                    for task, m in results.items()
                ),
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
        if self.sample_weights is not None:
            checkpoint["tbps_sample_weights"] = self.sample_weights

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # runs before the weights are loaded: older checkpoints get today's key names
        checkpoint["state_dict"] = upgrade_state_dict(checkpoint["state_dict"])
        self.tokenizer_state = checkpoint.get("tbps_tokenizer", self.tokenizer_state)
        self.sample_weights = checkpoint.get("tbps_sample_weights", self.sample_weights)
