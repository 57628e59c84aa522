"""TBPSDataModule: samplers, extra views and MLM keys, draw seeding; required_views."""

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


def _epoch_batches(dataset, tokenizer, seed=11, workers=0, rank=0, epochs=(0,), world=1):
    dm = _module(
        dataset,
        tokenizer,
        augment="tbps_clip",
        num_workers=workers,
        seed=seed,
        text_augment=TextAugmentOptions(deletion=0.2, swap=0.2),
        mlm=True,
    )
    loader = dm.train_dataloader()
    sampler = loader.sampler
    sampler.num_replicas, sampler.rank = world, rank  # as torch.distributed would set them
    sampler.num_samples = len(sampler.dataset) // world
    sampler.total_size = sampler.num_samples * world
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


def _same(a, b) -> bool:
    return a["captions"] == b["captions"] and all(
        torch.equal(a[k], b[k]) for k in ("images", "mlm_input_ids", "indices")
    )


def test_augmentation_depends_on_the_draw_not_on_workers_or_global_rng(dataset, tokenizer):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    (serial_0, serial_1) = _epoch_batches(dataset, tokenizer, epochs=(0, 1))
    assert torch.equal(torch.get_rng_state(), before)  # data loading leaves the global RNG
    torch.manual_seed(123)  # another global state: the same batches
    (again,) = _epoch_batches(dataset, tokenizer)
    # two persistent workers, two epochs: batch for batch what one process drew
    (parallel_0, parallel_1) = _epoch_batches(dataset, tokenizer, workers=2, epochs=(0, 1))
    for expected, got in ((serial_0, again), (serial_0, parallel_0), (serial_1, parallel_1)):
        assert len(expected) == len(got) > 0
        assert all(_same(x, y) for x, y in zip(expected, got))
    assert not _same(serial_0[0], serial_1[0])  # a new epoch draws anew
    (other_seed,) = _epoch_batches(dataset, tokenizer, seed=12)
    assert other_seed[0]["captions"] != serial_0[0]["captions"]


def test_ranks_draw_different_augmentations(dataset, tokenizer):
    (rank0,) = _epoch_batches(dataset, tokenizer, rank=0, world=2, workers=1)
    (rank1,) = _epoch_batches(dataset, tokenizer, rank=1, world=2, workers=1)
    seeds0 = {int(i): b for b in rank0 for i in b["indices"]}
    assert seeds0 and not set(seeds0) & {int(i) for b in rank1 for i in b["indices"]}
    # the same sample position on two ranks gets different random numbers
    from tbps.data.datamodule import draw_seed

    assert draw_seed(11, 0, 0, 0) != draw_seed(11, 0, 1, 0)
    assert draw_seed(11, 0, 0, 0) == draw_seed(11, 0, 0, 0)
    assert (
        len({draw_seed(11, e, r, p) for e in range(3) for r in range(2) for p in range(50)}) == 300
    )


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


def test_cached_images_give_the_same_batches_and_are_decoded_once(dataset, tokenizer, monkeypatch):
    from tbps.data import datasets

    decoded = Counter()
    load = datasets.load_image

    def counting(path):
        decoded[path] += 1
        return load(path)

    monkeypatch.setattr(datasets, "load_image", counting)
    runs = {}
    for cache in (False, True):
        dm = _module(dataset, tokenizer, augment="irra", mvs=True, cache_images=cache)
        loader = dm.train_dataloader()
        decoded.clear()
        epochs = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            epochs.append(list(loader))
        runs[cache] = (epochs, dict(decoded))
    (plain, plain_decoded), (cached, cached_decoded) = runs[False], runs[True]
    for a, b in zip(plain, cached):
        assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("images", "aug_images"))
    assert max(plain_decoded.values()) > 1 and set(cached_decoded.values()) == {1}
    # one preallocated block holds every image (no tensor per image to fragment the heap)
    cache = loader.dataset._resized
    assert cache._block.shape == (len(cached_decoded), 3, *dm.image_size)
    assert cache._block.dtype == torch.uint8 and all(cache._filled)
    with pytest.raises(ConfigError, match="cannot be used with SS views"):
        _module(dataset, tokenizer, cache_images=True, ss_views=True)
    auto = _module(dataset, tokenizer, ss_views=True)  # auto: SS views crop the full image
    assert auto.build_train()._resized is None
    assert _module(dataset, tokenizer).build_train()._resized is not None  # small: cached
