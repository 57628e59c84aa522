"""The pooled shortcut (tbps.model.pooled) computes what CLIP's own forward computes."""

import pytest
import torch

from tbps.model.backbone import build_clip, scratch_clip_config
from tbps.model.pooled import (
    image_pooled,
    pooled_positions,
    supports_pooled_shortcut,
    text_pooled,
)
from tbps.model.tbps import TBPSModel
from tiny_backbones import _perturb, tiny_siglip_config

EOS, PAD, BOS = 3, 0, 1


def clip(layers: int = 2, eos: int = EOS, seed: int = 0, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = scratch_clip_config(
        vocab_size=50,
        bos_token_id=BOS,
        eos_token_id=eos if eos != 2 else 3,
        pad_token_id=PAD,
        vision_width=32,
        vision_layers=layers,
        vision_heads=2,
        text_width=32,
        text_layers=layers,
        text_heads=4,
        text_length=12,
        embed_dim=16,
    )
    if eos == 2:  # the old configs transformers pools at the largest token id for
        config.text_config.eos_token_id = 2
    for key, value in extra.items():
        setattr(config.text_config, key, value)
        setattr(config.vision_config, key, value)
    model = build_clip(config, (48, 32))
    _perturb(model, seed)  # LayerNorms and biases away from their initial values too
    return model


def captions(lengths, length: int = 12, eos: int = EOS, seed: int = 0):
    """Token ids: BOS, random words, EOS at position ``n``, padding after (mask 0)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (len(lengths), length), generator=gen)
    mask = torch.ones_like(ids)
    ids[:, 0] = BOS
    for row, n in enumerate(lengths):
        ids[row, n], ids[row, n + 1 :], mask[row, n + 1 :] = eos, PAD, 0
    return ids, mask


def full_text(model, ids, mask):
    return model.text_model(input_ids=ids, attention_mask=mask).pooler_output


def full_image(model, images):
    return model.vision_model(pixel_values=images).pooler_output


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_image_pooled_equals_the_transformers_forward(layers):
    model = clip(layers)
    images = torch.randn(5, 3, 48, 32)
    assert torch.allclose(image_pooled(model, images), full_image(model, images), atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize(
    "lengths",
    [[3, 7, 11, 1, 5], [11, 11], [4, 4, 4]],  # mixed, no padding at all, all equal
    ids=["mixed", "full", "equal"],
)
def test_text_pooled_equals_the_transformers_forward(layers, lengths):
    model = clip(layers)
    ids, mask = captions(lengths)
    got, want = text_pooled(model, ids, mask), full_text(model, ids, mask)
    assert torch.allclose(got, want, atol=1e-5)
    # without the padding mask (text_attention_mask=False) the causal mask alone hides padding
    got, want = text_pooled(model, ids, None), full_text(model, ids, None)
    assert torch.allclose(got, want, atol=1e-5)


def test_text_pooled_odd_masks_and_captions_without_an_end():
    model = clip(2).eval()
    ids, mask = captions([6, 9, 3])
    mask[0, 2] = 0  # a masked token before the end
    ids[1, 9:] = 17  # no end-of-text token at all: pooled at position 0, as transformers does
    left = torch.cat([torch.full((1, 4), PAD), captions([7])[0][:, :8]], dim=1)
    left_mask = (torch.arange(12) >= 4).long()[None]  # left padding
    for batch_ids, batch_mask in ((ids, mask), (left, left_mask), (ids[2:], mask[2:])):
        got, want = (
            text_pooled(model, batch_ids, batch_mask),
            full_text(model, batch_ids, batch_mask),
        )
        assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="13 tokens per caption; the text tower holds 12"):
        text_pooled(model, torch.cat([ids, ids[:, :1]], dim=1), None)


def test_shortcut_equals_the_full_forward_under_bf16_autocast():
    model = clip(2).eval()
    images = torch.randn(3, 3, 48, 32)
    ids, mask = captions([4, 11, 7])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pairs = [
            (image_pooled(model, images), full_image(model, images)),
            (text_pooled(model, ids, mask), full_text(model, ids, mask)),
        ]
    for got, want in pairs:  # same ops in the same dtypes: bf16 rounding alike
        assert got.dtype == want.dtype
        assert torch.allclose(got.float(), want.float(), atol=2e-2)


def test_text_pooled_reads_the_first_end_of_text_and_ignores_what_follows():
    model = clip()
    ids, mask = captions([4, 9])
    noisy = ids.clone()
    noisy[0, 5:] = torch.arange(10, 17)  # garbage (and a second EOS) after row 0's end
    noisy[0, 8] = EOS
    assert pooled_positions(noisy, EOS).tolist() == [4, 9]
    assert torch.allclose(text_pooled(model, noisy, mask), full_text(model, ids, mask), atol=1e-5)


def test_text_pooled_legacy_eos_2_pools_at_the_largest_id():
    model = clip(eos=2)
    ids, mask = captions([3, 8], eos=49)  # the largest id marks the end
    assert pooled_positions(ids, 2).tolist() == [3, 8]
    assert torch.allclose(text_pooled(model, ids, mask), full_text(model, ids, mask), atol=1e-5)


def test_gradients_equal_the_transformers_forward():
    model = clip(2)
    images = torch.randn(4, 3, 48, 32)
    ids, mask = captions([2, 6, 11, 5])
    weights = torch.randn(32)

    def grads(fast: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        if fast:
            out = image_pooled(model, images), text_pooled(model, ids, mask)
        else:
            out = full_image(model, images), full_text(model, ids, mask)
        ((out[0] @ weights).square().sum() + (out[1] @ weights).square().sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast, full = grads(True), grads(False)
    assert fast.keys() == full.keys()
    for name in full:
        assert torch.allclose(fast[name], full[name], atol=1e-4, rtol=1e-4), name


def test_tbps_model_takes_the_shortcut_only_for_pooled_clip_embeddings(monkeypatch):
    model = TBPSModel(clip(2))
    images = torch.randn(3, 3, 48, 32)
    ids, mask = captions([2, 7, 10])
    want_image = model.image_embeddings(images)
    want_text = model.text_embeddings(ids, mask)
    model.pooled_shortcut = False
    assert torch.allclose(model.image_embeddings(images), want_image, atol=1e-5)
    assert torch.allclose(model.text_embeddings(ids, mask), want_text, atol=1e-5)

    model.pooled_shortcut = True

    def refuse(*args, **kwargs):
        raise AssertionError("the transformers forward ran")

    monkeypatch.setattr(type(model.hf.vision_model), "forward", refuse)
    monkeypatch.setattr(type(model.hf.text_model), "forward", refuse)
    model.encode_images(images)
    model.encode_texts(ids, mask)
    with pytest.raises(AssertionError, match="transformers forward ran"):
        model.image_forward(images, tokens=True)  # token states need every token
    with pytest.raises(AssertionError, match="transformers forward ran"):
        model.text_forward(ids, mask, tokens=True)


@pytest.mark.parametrize(
    "finetune",
    [{"mode": "lora", "lora": {"r": 2, "dropout": 0.0}}, {"freeze": ["vision"]}],
    ids=["lora", "frozen vision"],
)
def test_trainable_parameters_get_the_full_forward_gradients(finetune):
    """LoRA adapters and frozen towers: the shortcut uses the modules as they are."""
    model = TBPSModel(clip(2), finetune=finetune).train()
    _perturb(model, 3)  # LoRA's B starts at zero: give the adapters an effect
    images = torch.randn(2, 3, 48, 32)
    ids, mask = captions([5, 9])

    def run() -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        model.zero_grad()
        out = [model.image_embeddings(images), model.text_embeddings(ids, mask)]
        (out[0].square().sum() + out[1].square().sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    fast, fast_grads = run()
    model.pooled_shortcut = False
    full, full_grads = run()
    for a, b in zip(fast, full):
        assert torch.allclose(a, b, atol=1e-5)
    assert fast_grads.keys() == full_grads.keys() and fast_grads
    for name in full_grads:
        assert torch.allclose(fast_grads[name], full_grads[name], atol=1e-4, rtol=1e-4), name


def test_shortcut_refused_where_it_would_differ():
    from transformers import SiglipModel

    assert supports_pooled_shortcut(clip(2))
    assert not supports_pooled_shortcut(SiglipModel(tiny_siglip_config(vocab=50)))
    dropout = clip(2, attention_dropout=0.1)
    assert supports_pooled_shortcut(dropout.eval())  # dropout is off in evaluation
    assert not supports_pooled_shortcut(dropout.train())
    dropout.eval().text_model.encoder.layers[0].train()  # one layer in training mode is enough
    assert not supports_pooled_shortcut(dropout)
    checkpointed = clip(2)
    checkpointed.gradient_checkpointing_enable()
    assert not supports_pooled_shortcut(checkpointed.train())
