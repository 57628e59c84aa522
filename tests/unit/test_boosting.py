"""Hard-sample boosting: which captions get the weight, the callback's schedule and mode restore."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from objective_fixtures import EOS, LENGTH, VOCAB, clip_spec
from tbps.data.records import CaptionRecord
from tbps.data.transforms import eval_transform
from tbps.errors import ConfigError
from tbps.training.boosting import HardSampleBoosting, hard_caption_weights
from tbps.training.module import TBPSLightningModule


def test_toy_ranking():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    image_pids = torch.tensor([0, 1, 2])
    texts = torch.nn.functional.normalize(
        torch.tensor(
            [
                [1.0, 0.1],  # pid 0: top-1 is image 0 -> easy
                [1.0, 0.2],  # pid 1: top-1 image 0 (wrong), image 1 second -> hard
                [0.1, 1.0],  # pid 2: ranks 1, 0, then 2 (third) -> hard
                [0.0, 1.0],  # pid 1: top-1 image 1 -> easy
            ]
        ),
        dim=1,
    )
    text_pids = torch.tensor([0, 1, 2, 1])
    weights = hard_caption_weights(texts, text_pids, images, image_pids, weight=1.6)
    assert weights.tolist() == pytest.approx([1.0, 1.6, 1.6, 1.0])
    # with top_k = 2 only captions that still have a match in their top 2 are boosted
    top2 = hard_caption_weights(texts, text_pids, images, image_pids, weight=1.6, top_k=2)
    assert top2.tolist() == pytest.approx([1.0, 1.6, 1.0, 1.0])
    # chunking does not change the result; ties go to the lower image index
    chunked = hard_caption_weights(texts, text_pids, images, image_pids, 1.6, chunk_size=1)
    assert torch.equal(chunked, weights)
    tie = hard_caption_weights(
        torch.tensor([[1.0, 0.0]]), torch.tensor([5]), torch.ones(2, 2), torch.tensor([5, 6])
    )
    assert tie.tolist() == [1.0]


def _records(tmp_path, n_images=6):
    records = []
    for i in range(n_images):
        path = tmp_path / f"{i}.png"
        pixels = np.full((32, 16, 3), 30 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        for c in range(2):
            records.append(
                CaptionRecord(pid=i // 2, image_id=i, image_path=str(path), caption=f"{i} {c}")
            )
    return records


def _collate(samples):
    batch = {"pids": torch.tensor([s["pid"] for s in samples])}
    if "image" in samples[0]:
        batch["images"] = torch.stack([s["image"] for s in samples])
        return batch
    ids = torch.zeros(len(samples), LENGTH, dtype=torch.long)
    for row, s in enumerate(samples):
        words = [5 + sum(map(ord, w)) % (VOCAB - 5) for w in s["caption"].split()]
        ids[row, : len(words) + 2] = torch.tensor([3, *words, EOS])
    batch["input_ids"], batch["attention_mask"] = ids, (ids != 0).long()
    return batch


def test_callback_weights_every_caption_and_restores_modes(tmp_path):
    torch.manual_seed(0)
    module = TBPSLightningModule(clip_spec(), {"itc": {}})
    module.train()
    module.model.hf.vision_model.encoder.layers[0].eval()  # e.g. a frozen part kept in eval
    modes = {name: m.training for name, m in module.named_modules()}
    records = _records(tmp_path)
    callback = HardSampleBoosting(every_n_epochs=1, weight=1.6, batch_size=4)
    weights = callback.compute(module, records, eval_transform((32, 16)), _collate)
    assert weights.shape == (len(records),)
    assert set(weights.unique().tolist()) <= {1.0, torch.tensor(1.6).item()}
    assert modes == {name: m.training for name, m in module.named_modules()}
    # the same as ranking the encoded features directly
    module.eval()
    with torch.no_grad():
        gallery = [r for r in records if records.index(r) % 2 == 0]
        images = torch.stack([eval_transform((32, 16))(Image.open(r.image_path)) for r in gallery])
        captions = _collate([{"caption": r.caption, "pid": r.pid} for r in records])
        text = module.encode_texts(captions["input_ids"], captions["attention_mask"])
        expected = hard_caption_weights(
            text,
            captions["pids"],
            module.encode_images(images),
            torch.tensor([r.pid for r in gallery]),
            1.6,
        )
    assert torch.equal(weights, expected)
    assert (weights == 1.6).any() and (weights == 1.0).any()


def test_callback_schedule_and_settings(tmp_path):
    records = _records(tmp_path, n_images=4)
    module = TBPSLightningModule(clip_spec(), {"sdm": {}})
    module.log = lambda *a, **k: None
    datamodule = SimpleNamespace(
        build_train=lambda: SimpleNamespace(records=records),
        eval_transform=eval_transform((32, 16)),
        collate=_collate,
    )
    callback = HardSampleBoosting(every_n_epochs=2)
    for epoch, expect in ((0, False), (1, True), (2, False), (3, True), (5, False)):
        module.sample_weights = None
        trainer = SimpleNamespace(
            current_epoch=epoch, max_epochs=6, datamodule=datamodule, world_size=1
        )
        callback.on_train_epoch_end(trainer, module)
        assert (module.sample_weights is not None) == expect, epoch  # not after the last epoch
    assert callback.updates == 2 and module.sample_weights is None
    for kwargs, message in (
        ({"every_n_epochs": 0}, "boosting.every_n_epochs must be >= 1"),
        ({"weight": 0}, "boosting.weight must be positive"),
        ({"top_k": 0}, "boosting.top_k must be null or >= 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            HardSampleBoosting(**kwargs)


def _argsort_weights(text_feats, text_pids, image_feats, image_pids, weight, top_k, chunk=1024):
    """The former ranking (a full stable argsort on the CPU), as the reference."""
    weights = torch.ones(text_feats.shape[0])
    for start in range(0, text_feats.shape[0], chunk):
        sim = text_feats[start : start + chunk].float() @ image_feats.float().t()
        pids = text_pids[start : start + chunk]
        k = min(top_k or 1, sim.shape[1])
        order = sim.argsort(dim=1, descending=True, stable=True)[:, :k]
        correct = image_pids[order] == pids[:, None]
        hard = ~correct[:, 0]
        if top_k:
            hard &= correct.any(dim=1)
        weights[start : start + chunk][hard] = weight
    return weights


@pytest.mark.parametrize("coarse", [False, True])
def test_topk_ranking_equals_the_full_sort(coarse):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(40, 3, generator=g)
    texts = torch.randn(90, 3, generator=g)
    if coarse:  # many exact ties, some straddling the k-th place
        images, texts = images.round(), texts.round()
    image_pids = torch.randint(0, 8, (40,), generator=g)
    text_pids = torch.randint(0, 8, (90,), generator=g)
    for top_k in (None, 1, 2, 3, 7, 40, 100):
        for chunk in (1024, 16):
            got = hard_caption_weights(texts, text_pids, images, image_pids, 1.6, top_k, chunk)
            want = _argsort_weights(texts, text_pids, images, image_pids, 1.6, top_k, chunk)
            assert torch.equal(got, want), (top_k, chunk)


def _boost_rank_main(rank, records, top_k):
    torch.manual_seed(0)
    module = TBPSLightningModule(clip_spec(), {"itc": {}})
    encoded = {"images": 0, "texts": 0}
    model = module.model
    encode_images, encode_texts = model.encode_images, model.encode_texts

    def images(pixels):
        encoded["images"] += pixels.shape[0]
        return encode_images(pixels)

    def texts(ids, mask):
        encoded["texts"] += ids.shape[0]
        return encode_texts(ids, mask)

    model.encode_images, model.encode_texts = images, texts
    callback = HardSampleBoosting(every_n_epochs=1, top_k=top_k, batch_size=2)
    weights = callback.compute(module, records, eval_transform((32, 16)), _collate)
    return weights.tolist(), encoded


@pytest.mark.parametrize("top_k", [None, 2])
def test_two_ranks_share_the_encoding_and_get_the_single_process_weights(tmp_path, top_k):
    from ranks import run_gloo_ranks

    records = _records(tmp_path)  # 6 images (3 batches of 2), 12 captions (6 batches)
    torch.manual_seed(0)
    module = TBPSLightningModule(clip_spec(), {"itc": {}})
    callback = HardSampleBoosting(every_n_epochs=1, top_k=top_k, batch_size=2)
    single = callback.compute(module, records, eval_transform((32, 16)), _collate).tolist()
    results = run_gloo_ranks(_boost_rank_main, tmp_path / "store", records, top_k, timeout=120)
    assert results[0][0] == results[1][0] == single
    # whole batches, no repeats: rank 0 takes image batch 0 and caption batches 0-2
    assert results[0][1] == {"images": 2, "texts": 6}
    assert results[1][1] == {"images": 4, "texts": 6}


def test_encoding_follows_the_trainer_precision(tmp_path, monkeypatch):
    import tbps.training.boosting as boosting
    from tbps.training.boosting import encode_precision

    assert [encode_precision(p) for p in ("32-true", "bf16-mixed", "16-mixed", "64-true")] == [
        "32",
        "bf16",
        "fp16",
        "32",
    ]
    seen = {}
    encode_split = boosting.encode_split

    def spy(model, gallery, queries, **kwargs):
        seen.update(kwargs, pin_memory=gallery.pin_memory)
        return encode_split(model, gallery, queries, **kwargs)

    monkeypatch.setattr(boosting, "encode_split", spy)
    records = _records(tmp_path, n_images=4)
    torch.manual_seed(0)
    module = TBPSLightningModule(clip_spec(), {"itc": {}})
    module.log = lambda *a, **k: None
    datamodule = SimpleNamespace(
        build_train=lambda: SimpleNamespace(records=records),
        eval_transform=eval_transform((32, 16)),
        collate=_collate,
    )
    trainer = SimpleNamespace(
        current_epoch=0, max_epochs=3, datamodule=datamodule, world_size=1, precision="bf16-mixed"
    )
    HardSampleBoosting(every_n_epochs=1).on_train_epoch_end(trainer, module)
    assert seen["precision"] == "bf16" and seen["device"] == torch.device("cpu")
    assert seen["pin_memory"] is False  # pinned only for a CUDA device
    assert module.sample_weights.shape == (len(records),)
