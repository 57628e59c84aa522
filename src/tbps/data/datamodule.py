"""TBPSDataModule: parsed dataset -> training, validation and test DataLoaders."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from tbps.data.datasets import Collator, GalleryImages, QueryCaptions, TrainPairs
from tbps.data.images import check_images
from tbps.data.records import DatasetSplits, gallery_and_queries, training_records
from tbps.data.transforms import CLIP_MEAN, CLIP_STD, build_image_transforms
from tbps.errors import DataError

log = logging.getLogger(__name__)


class TBPSDataModule(L.LightningDataModule):
    """Training pairs (pids remapped to 0..N-1) plus gallery/query loaders for val and test.

    ``val_dataloader`` / ``test_dataloader`` return ``[gallery_loader, query_loader]``.
    Model selection uses ``val_split``; the test split is only read by ``test_dataloader``.
    """

    def __init__(
        self,
        dataset: DatasetSplits,
        tokenizer: PreTrainedTokenizerBase,
        image_size: Sequence[int],
        text_length: int,
        augment: str = "irra",
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        val_split: str = "val",
        test_split: str = "test",
        on_bad_image: str = "error",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.collate = Collator(tokenizer, text_length)
        self.train_transform, self.eval_transform = build_image_transforms(
            augment, image_size, mean, std
        )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.test_split = test_split
        self.on_bad_image = on_bad_image
        self.seed = seed
        self._train: TrainPairs | None = None
        self._eval: dict[str, tuple[GalleryImages, QueryCaptions]] = {}
        self.num_classes = 0

    # -- building -------------------------------------------------------------------------
    def _images(self, split: str):
        images = check_images(self.dataset.split(split), self.on_bad_image, split)
        if not images:
            raise DataError(
                f"{self.dataset.name}: split {split!r} has no usable images ({self.dataset.root})"
            )
        return images

    def build_train(self) -> TrainPairs:
        if self._train is None:
            records, pid_map = training_records(self._images("train"))
            self.num_classes = len(pid_map)
            if len(records) < self.batch_size:
                raise DataError(
                    f"{self.dataset.name}: {len(records)} training captions, fewer than one batch "
                    f"(loader.batch_size={self.batch_size})"
                )
            self._train = TrainPairs(records, self.train_transform)
            log.info("train: %d ids, %d captions", self.num_classes, len(records))
        return self._train

    def build_eval(self, split: str) -> tuple[GalleryImages, QueryCaptions]:
        if split not in self._eval:
            gallery, queries = gallery_and_queries(self._images(split))
            self._eval[split] = (
                GalleryImages(gallery, self.eval_transform),
                QueryCaptions(queries),
            )
            log.info("%s: %d gallery images, %d queries", split, len(gallery), len(queries))
        return self._eval[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.build_train()
            self.build_eval(self.val_split)
        if stage in (None, "validate"):
            self.build_eval(self.val_split)
        if stage in (None, "test"):
            self.build_eval(self.test_split)

    # -- loaders ----------------------------------------------------------------------------
    def _loader(self, dataset, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.build_train(), self.batch_size, shuffle=True, drop_last=True)

    def eval_dataloaders(self, split: str) -> list[DataLoader]:
        gallery, queries = self.build_eval(split)
        return [
            self._loader(gallery, self.eval_batch_size, shuffle=False, drop_last=False),
            self._loader(queries, self.eval_batch_size, shuffle=False, drop_last=False),
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders(self.test_split)
