"""Hard-sample boosting: periodically up-weight training captions that the model ranks wrongly."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from tbps.data.datasets import GalleryImages, QueryCaptions
from tbps.data.records import CaptionRecord
from tbps.errors import ConfigError
from tbps.evaluation.encode import encode_split
from tbps.training.distributed import all_gather_rows, shard_bounds, world_size

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
    cosine similarity, ties broken by the lower image index. Chunked over captions and computed
    on the text features' device with ``topk`` (no full sort); float32 weights on that device.
    """
    device = text_feats.device
    image_feats = image_feats.to(device).float()
    image_pids = image_pids.to(device)
    text_pids = text_pids.to(device)
    weights = torch.ones(text_feats.shape[0], device=device)
    columns = torch.arange(image_feats.shape[0], device=device)
    for start in range(0, text_feats.shape[0], chunk_size):
        sim = text_feats[start : start + chunk_size].float() @ image_feats.t()
        match = image_pids[None, :] == text_pids[start : start + chunk_size, None]
        k = min(top_k or 1, sim.shape[1])
        values = sim.topk(k, dim=1).values  # the values are exact whatever the tie order
        # top-1: the lowest image index among the maximal similarities
        first = torch.where(sim == values[:, :1], columns, sim.shape[1]).amin(dim=1)
        hard = ~match.gather(1, first[:, None])[:, 0]
        if top_k:
            hard &= _match_in_top_k(sim, match, values[:, -1], k)
        weights[start : start + chunk_size][hard] = weight
    return weights


def _match_in_top_k(
    sim: torch.Tensor, match: torch.Tensor, kth: torch.Tensor, k: int
) -> torch.Tensor:
    """Per row, whether a matching column is among the k first of a stable descending order
    (``kth``: the row's k-th largest value; ties at it go to the lower column index)."""
    above = sim > kth[:, None]
    at = sim == kth[:, None]
    found = (match & (above | at)).any(dim=1)
    free = k - above.sum(dim=1)  # places left for columns equal to the k-th value
    ambiguous = (at.sum(dim=1) > free).nonzero()[:, 0]  # some equal columns are cut off
    if ambiguous.numel():
        at_rows = at[ambiguous]
        kept = at_rows & (at_rows.cumsum(dim=1, dtype=torch.int32) <= free[ambiguous, None])
        found[ambiguous] = (match[ambiguous] & (above[ambiguous] | kept)).any(dim=1)
    return found


def encode_precision(precision: object) -> str:
    """The ``encode_split`` precision of a trainer's ``precision``: bf16/fp16 autocast for the
    half-precision settings (mixed or true), fp32 otherwise."""
    text = str(precision)
    if text.startswith("bf16"):
        return "bf16"
    if text.startswith("16"):
        return "fp16"
    return "32"


class HardSampleBoosting(L.Callback):
    """Every ``every_n_epochs`` epochs, rank the training captions against the training images
    and store per-caption weights (``weight`` for hard captions, 1 otherwise) in
    ``pl_module.sample_weights``, indexed by training-dataset index.

    The objectives that accept per-sample weights (ITC, SDM, CMPM, N-ITC, sigmoid N-ITC, R-ITC,
    TAL, ID) use them from the next batch on. Encoding uses the evaluation transform and the
    shared encode loop (:func:`tbps.evaluation.encode.encode_split`) under the trainer's
    precision; every module is put back in the train/eval mode it had. Under DDP the ranks
    share the encoding and the ranking (see :meth:`compute`) and all get the same weights.
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
            pl_module,
            train.records,
            datamodule.eval_transform,
            datamodule.collate,
            precision=encode_precision(getattr(trainer, "precision", "32")),
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
        # the same on every rank: nothing to reduce
        pl_module.log("train/boosted_fraction", hard / max(1, len(weights)), sync_dist=False)

    @torch.no_grad()
    def compute(
        self,
        pl_module: L.LightningModule,
        records: Sequence[CaptionRecord],
        image_transform: Callable,
        collate: Callable,
        precision: str = "32",
    ) -> torch.Tensor:
        """Weights for ``records`` (dataset index order) with the module's current encoders.

        Under DDP each rank encodes its share of the images and of the captions (whole encode
        batches, no repeats; ``precision``: the autocast of :func:`encode_split`); the image
        embeddings are gathered, each rank ranks its own captions on its device and the
        weights are gathered, so every rank ends with the same (CPU) weights.
        """
        first_of_image: dict[int, CaptionRecord] = {}
        for r in records:
            first_of_image.setdefault(r.image_id, r)
        gallery = [(r.pid, r.image_path) for r in first_of_image.values()]
        queries = [(r.pid, r.caption) for r in records]
        device = pl_module.device
        image_part = self._shard(len(gallery))
        text_part = self._shard(len(queries))
        feats = encode_split(
            pl_module.model,
            self._loader(
                Subset(GalleryImages(gallery, image_transform), image_part), collate, device
            ),
            self._loader(Subset(QueryCaptions(queries), text_part), collate, device),
            device=device,
            precision=precision,
            progress=False,
        )
        images = self._gather(feats.images, len(gallery))
        image_pids = torch.tensor([pid for pid, _ in gallery], device=device)
        weights = hard_caption_weights(
            feats.texts,
            feats.text_pids,
            images,
            image_pids,
            self.weight,
            self.top_k,
        )
        return self._gather(weights, len(queries)).cpu()

    def _bounds(self, total: int) -> list[tuple[int, int]] | None:
        """Every rank's rows of ``total`` in whole encode batches; None (every rank encodes
        everything) when not distributed or when there are fewer batches than ranks."""
        batches = -(-total // self.batch_size)
        if world_size() == 1 or batches < world_size():
            return None
        return shard_bounds(batches, self.batch_size, total)

    def _shard(self, total: int) -> range:
        bounds = self._bounds(total)
        if bounds is None:
            return range(total)
        start, end = bounds[dist.get_rank()]
        return range(start, end)

    def _gather(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        bounds = self._bounds(total)
        if bounds is None:
            return rows
        return all_gather_rows(rows, [end - start for start, end in bounds])

    def _loader(self, dataset, collate: Callable, device: torch.device | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=device is not None and device.type == "cuda",
        )

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state_dict: dict) -> None:
        self.updates = int(state_dict.get("updates", 0))
