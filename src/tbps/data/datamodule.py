"""TBPSDataModule: parsed dataset -> training, validation and test DataLoaders."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from transformers import PreTrainedTokenizerBase

from tbps.data.datasets import Collator, GalleryImages, QueryCaptions, TrainPairs
from tbps.data.images import check_images
from tbps.data.mlm import TokenMasker
from tbps.data.records import DatasetSplits, gallery_and_queries, training_records
from tbps.data.samplers import SAMPLERS, IdentitySampler
from tbps.data.text_augment import TextAugmenter, TextAugmentOptions
from tbps.data.transforms import CLIP_MEAN, CLIP_STD, build_image_transforms, ss_view_transform
from tbps.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def draw_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """The seed of one training draw: the ``position``-th sample rank ``rank`` takes in
    ``epoch``. Augmentation and masking of that sample use only this seed, so they do not
    depend on the worker that loads it, on persistent workers, or on a resume; ranks differ."""
    mixed = np.random.SeedSequence([seed, epoch, rank, position]).generate_state(1)[0]
    return int(mixed)


class _DrawSeeds:
    """Sampler mixin: yield ``(index, draw_seed)`` instead of ``index`` (the dataset seeds its
    augmentation with it); the sampler's own order is unchanged."""

    seed: int
    epoch: int
    rank: int

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(super().__iter__()):  # type: ignore[misc]
            yield int(index), draw_seed(self.seed, self.epoch, self.rank, position)


class SeededRandomSampler(_DrawSeeds, DistributedSampler):
    """Shuffled, epoch-seeded training order (a ``DistributedSampler``) with draw seeds."""


class SeededIdentitySampler(_DrawSeeds, IdentitySampler):
    """:class:`IdentitySampler` (P x K batches) with draw seeds."""


#: bytes of resized uint8 training images all loading processes may keep (cache_images=auto)
CACHE_BUDGET = 2 * 2**30


class TBPSDataModule(L.LightningDataModule):
    """Training pairs (pids remapped to 0..N-1) plus gallery/query loaders for val and test.

    ``val_dataloader`` / ``test_dataloader`` return ``[gallery_loader, query_loader]``.
    Model selection uses ``val_split``; the test split is only read by ``test_dataloader``.

    Training batches: ``sampler`` ``random`` (shuffled, seeded) or ``identity`` (P x K:
    ``batch_size / num_instances`` persons, ``num_instances`` samples each; see
    :class:`IdentitySampler`). Under DDP the identity sampler shards the batches itself and is
    a ``DistributedSampler``, so Lightning leaves it in place; the random sampler is an
    epoch-seeded ``DistributedSampler`` too (reproducible order across resumes and world sizes).
    Extra views (off by default): ``mvs`` -> ``aug_images``, ``ss_views`` -> ``ss_images1/2``,
    ``mlm`` -> ``mlm_input_ids`` / ``mlm_labels`` (masking a copy; ``input_ids`` stay intact),
    ``text_augment`` -> EDA on training captions.
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
        sampler: str = "random",
        num_instances: int = 4,
        mvs: bool = False,
        ss_views: bool = False,
        mlm: bool = False,
        mlm_probability: float = 0.15,
        text_augment: TextAugmentOptions | None = None,
        cache_images: bool | str = "auto",
    ) -> None:
        super().__init__()
        if cache_images not in (True, False, "auto"):
            raise ConfigError(f"loader.cache_images={cache_images!r}; valid: auto, true, false")
        if cache_images is True and ss_views:
            raise ConfigError(
                "loader.cache_images=true cannot be used with SS views (objectives.ss): they crop "
                "the full-size image; use auto or false"
            )
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown loader.sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        if sampler == "identity" and (num_instances < 1 or batch_size % num_instances):
            raise ConfigError(
                f"loader.batch_size={batch_size} must be a positive multiple of "
                f"loader.num_instances={num_instances} for the identity sampler"
            )
        self.dataset = dataset
        self.collate = Collator(tokenizer, text_length)
        masker = TokenMasker.from_tokenizer(tokenizer, mlm_probability) if mlm else None
        self.train_collate = Collator(tokenizer, text_length, masker)
        self.train_transform, self.eval_transform = build_image_transforms(
            augment, image_size, mean, std
        )
        self.ss_transform = ss_view_transform(image_size, mean, std, augment) if ss_views else None
        self.mvs = mvs
        self.text_augment = text_augment
        self.sampler = sampler
        self.num_instances = num_instances
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.test_split = test_split
        self.on_bad_image = on_bad_image
        self.seed = seed
        self.cache_images = cache_images
        self.image_size = tuple(image_size)
        self._train: TrainPairs | None = None
        self._eval: dict[str, tuple[GalleryImages, QueryCaptions]] = {}
        self.num_classes = 0
        self._resume_epoch: int | None = None

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
            augmenter = TextAugmenter(self.text_augment, self.seed) if self.text_augment else None
            self._train = TrainPairs(
                records,
                self.train_transform,
                self.mvs,
                self.ss_transform,
                augmenter,
                cache_images=self._decide_cache(records),
            )
            log.info("train: %d ids, %d captions", self.num_classes, len(records))
        return self._train

    def _decide_cache(self, records) -> bool:
        """Whether to keep the resized training images in memory: ``auto`` when every
        process that loads them (the workers, or this one) fits them in CACHE_BUDGET bytes."""
        if self.cache_images is not True and (
            self.cache_images is False or self.ss_transform is not None
        ):
            return False
        images = len({r.image_path for r in records})
        height, width = self.image_size
        need = images * 3 * height * width * max(1, self.num_workers)
        if self.cache_images == "auto" and need > CACHE_BUDGET:
            log.info(
                "train images not cached: %d images need %.1f GiB (budget %.1f GiB)",
                images,
                need / 2**30,
                CACHE_BUDGET / 2**30,
            )
            return False
        log.info(
            "train images cached after their first decoding: %d images, %.0f MiB per process",
            images,
            images * 3 * height * width / 2**20,
        )
        return True

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
    def _loader(
        self,
        dataset,
        batch_size: int,
        drop_last: bool,
        collate: Collator | None = None,
        sampler: DistributedSampler | None = None,
    ) -> DataLoader:
        """Persistent workers (their randomness comes with each draw, see :func:`draw_seed`),
        pinned memory when the trainer runs on CUDA, and a private generator for the workers'
        base seed, so that making an iterator does not advance the global RNG."""
        trainer = self._trainer_or_none()
        on_cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=collate or self.collate,
            pin_memory=on_cuda,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _trainer_or_none(self) -> L.Trainer | None:
        try:
            return self.trainer
        except RuntimeError:  # not attached to a trainer (e.g. built for a test)
            return None

    def random_sampler(self) -> SeededRandomSampler:
        """Shuffled training order that depends only on ``seed`` and the epoch (``set_epoch``),
        so a resumed run sees the same batches; under DDP rank r takes positions r, r + W, ...
        of the permutation, so the global batch equals the single-process one."""
        initialised = dist.is_available() and dist.is_initialized()
        return SeededRandomSampler(
            self.build_train(),
            num_replicas=dist.get_world_size() if initialised else 1,
            rank=dist.get_rank() if initialised else 0,
            seed=self.seed,
            drop_last=True,
        )

    def identity_sampler(self) -> SeededIdentitySampler:
        """The P x K sampler over the training captions (ranks from torch.distributed)."""
        train = self.build_train()
        return SeededIdentitySampler(
            [r.pid for r in train.records],
            self.batch_size,
            self.num_instances,
            image_ids=[r.image_id for r in train.records],
            seed=self.seed,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = self.identity_sampler() if self.sampler == "identity" else self.random_sampler()
        if self._resume_epoch is not None:
            # Lightning makes the first iterator of a resumed run before it sets the epoch
            sampler.set_epoch(self._resume_epoch)
        return self._loader(
            self.build_train(),
            self.batch_size,
            drop_last=True,
            collate=self.train_collate,
            sampler=sampler,
        )

    def state_dict(self) -> dict:
        """Checkpointed: the epoch a resumed run starts with."""
        trainer = self.trainer
        if trainer is None:
            return {}
        return {"resume_epoch": trainer.fit_loop.epoch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume_epoch = state.get("resume_epoch")

    def eval_dataloaders(self, split: str) -> list[DataLoader]:
        gallery, queries = self.build_eval(split)
        return [
            self._loader(gallery, self.eval_batch_size, drop_last=False),
            self._loader(queries, self.eval_batch_size, drop_last=False),
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders(self.test_split)
