"""TBPSDataModule: samplers, extra views and MLM keys, worker seeding; required_views."""

from collections import Counter

import pytest
import torch

from fixtures import write_cuhk_fixture
from tbps.data.datamodule import TBPSDataModule
from tbps.data.formats import parse_dataset
from tbps.data.samplers import IdentitySampler
from tbps.data.text_augment import TextAugmentOptions
from tbps.data.tokenization import train_caption_tokenizer
from tbps.data.views import DataViews, required_views
from tbps.errors import ConfigError

BASE_KEYS = {"images", "input_ids", "attention_mask", "pids", "indices", "image_ids", "captions"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuhk")
    write_cuhk_fixture(root, {"train": 8, "val": 2, "test": 2}, images_per_id=3)
    return parse_dataset("cuhk_pedes", root)


@pytest.fixture(scope="module")
def tokenizer(dataset):
    captions = [c for img in dataset.split("train") for c in img.captions]
    return train_caption_tokenizer(captions, vocab_size=300, min_frequency=1)


def _module(dataset, tokenizer, **kwargs) -> TBPSDataModule:
    args = {"image_size": (64, 32), "text_length": 24, "batch_size": 8, "augment": "none"}
    return TBPSDataModule(dataset, tokenizer, **{**args, **kwargs})


def test_default_batches_carry_only_the_base_keys(dataset, tokenizer):
    batch = next(iter(_module(dataset, tokenizer).train_dataloader()))
    assert set(batch) == BASE_KEYS and batch["images"].shape == (8, 3, 64, 32)


def test_identity_sampler_and_every_view(dataset, tokenizer):
    dm = _module(
        dataset,
        tokenizer,
        augment="irra",
        sampler="identity",
        num_instances=4,
        mvs=True,
        ss_views=True,
        mlm=True,
        text_augment=TextAugmentOptions(deletion=0.1, swap=0.1),
    )
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, IdentitySampler)
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    for batch in batches:
        assert set(batch) == BASE_KEYS | {
            "aug_images",
            "ss_images1",
            "ss_images2",
            "mlm_input_ids",
            "mlm_labels",
        }
        assert sorted(Counter(batch["pids"].tolist()).values()) == [4, 4]  # P=2 x K=4
        for key in ("aug_images", "ss_images1", "ss_images2"):
            assert batch[key].shape == batch["images"].shape
        assert not torch.equal(batch["ss_images1"], batch["ss_images2"])
        assert batch["mlm_labels"].shape == batch["input_ids"].shape
        assert not torch.equal(batch["mlm_input_ids"], batch["input_ids"])
    # eval loaders are unaffected by training views and masking
    gallery, queries = dm.val_dataloader()
    assert set(next(iter(queries))) == {
        "pids",
        "indices",
        "captions",
        "input_ids",
        "attention_mask",
    }


def _first_batches(dataset, tokenizer, seed):
    dm = _module(
        dataset,
        tokenizer,
        augment="tbps_clip",
        num_workers=1,
        seed=seed,
        text_augment=TextAugmentOptions(deletion=0.2, swap=0.2),
        mlm=True,
    )
    loader = dm.train_dataloader()
    batches = [b for _, b in zip(range(2), loader)]
    return batches


def test_workers_are_seeded_so_augmentation_is_reproducible(dataset, tokenizer):
    a = _first_batches(dataset, tokenizer, seed=11)
    b = _first_batches(dataset, tokenizer, seed=11)
    for x, y in zip(a, b):
        assert x["captions"] == y["captions"]
        for key in ("images", "mlm_input_ids", "indices"):
            assert torch.equal(x[key], y[key])
    c = _first_batches(dataset, tokenizer, seed=12)
    assert c[0]["captions"] != a[0]["captions"]


def test_bad_loader_settings(dataset, tokenizer):
    with pytest.raises(ConfigError, match="unknown loader.sampler 'pk'; valid: random, identity"):
        _module(dataset, tokenizer, sampler="pk")
    with pytest.raises(ConfigError, match="batch_size=8 must be a positive multiple"):
        _module(dataset, tokenizer, sampler="identity", num_instances=3)


def test_required_views_from_objectives():
    config = {
        "itc": {"enabled": True, "weight": 1.0},
        "nitc": {"enabled": True, "mvs": True},
        "mlm": {"enabled": True},
        "ss": {"enabled": False},
    }
    assert required_views(config) == DataViews(mvs=True, ss=False, mlm=True)
    assert required_views(["ss", "sdm"]) == DataViews(ss=True)
    assert required_views({"sdm": {"weight": 0.1}}) == DataViews()
    assert (DataViews(mvs=True) | DataViews(mlm=True)).names() == ["mvs", "mlm"]
