"""Hard-sample boosting: periodically up-weight training captions that the model ranks wrongly."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from tbps.data.datasets import GalleryImages, QueryCaptions
from tbps.data.records import CaptionRecord
from tbps.errors import ConfigError
from tbps.evaluation.encode import encode_split

log = logging.getLogger(__name__)


def hard_caption_weights(
    text_feats: torch.Tensor,
    text_pids: torch.Tensor,
    image_feats: torch.Tensor,
    image_pids: torch.Tensor,
    weight: float = 1.6,
    top_k: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Per-caption weights: ``weight`` where the caption's top-ranked image has another pid.

    With ``top_k``, only captions that still have a match within their top k are boosted
    (hard but not hopeless); others keep weight 1. Features are L2-normalised; ranking is by
    cosine similarity, ties broken by the lower image index. Chunked over captions.
    """
    weights = torch.ones(text_feats.shape[0])
    for start in range(0, text_feats.shape[0], chunk_size):
        sim = text_feats[start : start + chunk_size].float() @ image_feats.float().t()
        pids = text_pids[start : start + chunk_size]
        k = min(top_k or 1, sim.shape[1])
        # stable descending order so that ties go to the lower gallery index
        order = sim.argsort(dim=1, descending=True, stable=True)[:, :k]
        correct = image_pids[order] == pids[:, None]
        hard = ~correct[:, 0]
        if top_k:
            hard &= correct.any(dim=1)
        weights[start : start + chunk_size][hard] = weight
    return weights


class HardSampleBoosting(L.Callback):
    """Every ``every_n_epochs`` epochs, rank the training captions against the training images
    and store per-caption weights (``weight`` for hard captions, 1 otherwise) in
    ``pl_module.sample_weights``, indexed by training-dataset index.

    The objectives that accept per-sample weights (ITC, SDM, CMPM, N-ITC, sigmoid N-ITC, R-ITC,
    TAL, ID) use them from the next batch on. Encoding uses the evaluation transform and the
    shared encode loop (:func:`tbps.evaluation.encode.encode_split`); every module is put back
    in the train/eval mode it had. Under DDP every rank computes the same weights.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        weight: float = 1.6,
        top_k: int | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        if every_n_epochs < 1:
            raise ConfigError(f"boosting.every_n_epochs must be >= 1, got {every_n_epochs}")
        if weight <= 0:
            raise ConfigError(f"boosting.weight must be positive, got {weight}")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"boosting.top_k must be null or >= 1, got {top_k}")
        self.every_n_epochs = every_n_epochs
        self.weight = weight
        self.top_k = top_k
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.updates = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs or (trainer.max_epochs and epoch >= trainer.max_epochs):
            return
        datamodule = trainer.datamodule
        train = datamodule.build_train()
        weights = self.compute(
            pl_module, train.records, datamodule.eval_transform, datamodule.collate
        )
        pl_module.sample_weights = weights
        self.updates += 1
        hard = int((weights != 1).sum())
        log.info(
            "boosting after epoch %d: %d of %d training captions weighted %.2f",
            epoch,
            hard,
            len(weights),
            self.weight,
        )
        pl_module.log(
            "train/boosted_fraction",
            hard / max(1, len(weights)),
            sync_dist=trainer.world_size > 1,  # the same on every rank
        )

    @torch.no_grad()
    def compute(
        self,
        pl_module: L.LightningModule,
        records: Sequence[CaptionRecord],
        image_transform: Callable,
        collate: Callable,
    ) -> torch.Tensor:
        """Weights for ``records`` (dataset index order) with the module's current encoders."""
        first_of_image: dict[int, CaptionRecord] = {}
        for r in records:
            first_of_image.setdefault(r.image_id, r)
        gallery = [(r.pid, r.image_path) for r in first_of_image.values()]
        queries = [(r.pid, r.caption) for r in records]
        feats = encode_split(
            pl_module.model,
            self._loader(GalleryImages(gallery, image_transform), collate),
            self._loader(QueryCaptions(queries), collate),
            device=pl_module.device,
            progress=False,
        )
        return hard_caption_weights(
            feats.texts.cpu(),
            feats.text_pids.cpu(),
            feats.images.cpu(),
            feats.image_pids.cpu(),
            self.weight,
            self.top_k,
        )

    def _loader(self, dataset, collate: Callable) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate
        )

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state_dict: dict) -> None:
        self.updates = int(state_dict.get("updates", 0))
