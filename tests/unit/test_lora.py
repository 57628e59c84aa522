"""Partial fine-tuning: frozen towers, CLIPFit, LoRA (counts, checkpoint round trip, merge)."""

import re

import pytest
import torch

from tbps.data.tokenization import tokenize
from tbps.errors import ConfigError
from tbps.model.checkpoint import model_from_checkpoint, tokenizer_state
from tbps.model.factory import pretrained_model
from tbps.model.finetune import count_parameters, finetune_settings
from tbps.model.tbps import TBPSModel
from tiny_backbones import CAPTIONS, write_tiny_clip, write_tiny_siglip

WIDTH, MLP, LAYERS = 32, 64, 2  # the tiny towers: width 32, MLP 64, 2 layers each


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return {"clip": write_tiny_clip(root / "clip"), "siglip": write_tiny_siglip(root / "siglip")}


def trainable_names(model: TBPSModel) -> set[str]:
    return {n for n, p in model.hf.named_parameters() if p.requires_grad}


def numel(model: TBPSModel, names) -> int:
    params = dict(model.hf.named_parameters())
    return sum(params[n].numel() for n in names)


def lora_size(r: int, modules: list[str], towers: int) -> int:
    """LoRA adds A (r x in) and B (out x r) per adapted linear layer."""
    shapes = {"q_proj": (WIDTH, WIDTH), "k_proj": (WIDTH, WIDTH), "v_proj": (WIDTH, WIDTH)}
    shapes |= {"out_proj": (WIDTH, WIDTH), "fc1": (WIDTH, MLP), "fc2": (MLP, WIDTH)}
    per_layer = sum(r * (shapes[m][0] + shapes[m][1]) for m in modules)
    return per_layer * LAYERS * towers


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_default_lora_trains_adapters_and_heads_only(folders, kind):
    plain, _ = pretrained_model(folders[kind], kind, (32, 32))
    model, _ = pretrained_model(folders[kind], kind, (32, 32), finetune={"mode": "lora"})
    assert model.finetune["lora"] == {
        "r": 16,
        "alpha": 16.0,
        "dropout": 0.1,
        "target_modules": ["q_proj", "k_proj", "v_proj", "fc1", "fc2"],
    }
    names = trainable_names(model)
    lora = {n for n in names if ".lora_" in n}
    heads = names - lora
    expected_heads = {
        "clip": {"visual_projection.weight", "text_projection.weight", "logit_scale"},
        "siglip": {n for n in names if n.startswith(("vision_model.head.", "text_model.head."))}
        | {"logit_scale", "logit_bias"},
    }[kind]
    assert heads == expected_heads
    if kind == "siglip":  # the attention-pooling head trains whole (it is a head)
        assert "vision_model.head.probe" in heads
    adapted = {re.sub(r"\.lora_[AB]\.default\.weight$", "", n) for n in lora}
    assert all(re.search(r"_model\.encoder\.layers\.\d+\.", n) for n in adapted)
    assert len(adapted) == 5 * LAYERS * 2
    expected_lora = lora_size(16, ["q_proj", "k_proj", "v_proj", "fc1", "fc2"], towers=2)
    assert numel(model, lora) == expected_lora
    trainable, total = count_parameters(model)
    assert trainable == expected_lora + numel(model, heads)
    assert total == count_parameters(plain)[1] + expected_lora


def test_lora_with_a_frozen_tower_and_chosen_modules(folders):
    model, _ = pretrained_model(
        folders["clip"],
        "clip",
        (32, 32),
        finetune={
            "mode": "lora",
            "freeze": ["text"],
            "lora": {"r": 4, "target_modules": ["v_proj"]},
        },
    )
    names = trainable_names(model)
    assert not any(n.startswith(("text_model.", "text_projection.")) for n in names)
    lora = {n for n in names if ".lora_" in n}
    assert numel(model, lora) == lora_size(4, ["v_proj"], towers=1)
    assert names - lora == {"visual_projection.weight", "logit_scale"}


def test_clipfit_trains_vision_layernorms_text_mlp_biases_and_heads(folders):
    model, _ = pretrained_model(folders["clip"], "clip", (32, 32), finetune={"mode": "clipfit"})
    names = trainable_names(model)
    layer_norms = {
        f"vision_model.{m}.{p}"
        for m in ["pre_layrnorm", "post_layernorm"]
        + [f"encoder.layers.{i}.layer_norm{j}" for i in range(LAYERS) for j in (1, 2)]
        for p in ("weight", "bias")
    }
    biases = {
        f"text_model.encoder.layers.{i}.mlp.fc{j}.bias" for i in range(LAYERS) for j in (1, 2)
    }
    heads = {"visual_projection.weight", "text_projection.weight", "logit_scale"}
    assert names == layer_norms | biases | heads
    no_heads, _ = pretrained_model(
        folders["clip"], "clip", (32, 32), finetune={"mode": "clipfit", "train_heads": False}
    )
    assert trainable_names(no_heads) == layer_norms | biases


def test_freezing_either_tower_in_full_fine_tuning(folders):
    model, _ = pretrained_model(
        folders["siglip"], "siglip", (32, 32), finetune={"freeze": "vision"}
    )
    names = trainable_names(model)
    assert not any(n.startswith("vision_model.") for n in names)
    assert {"logit_scale", "logit_bias", "text_model.head.weight"} <= names
    everything = {n for n, _ in model.hf.named_parameters()}
    assert names == {n for n in everything if not n.startswith("vision_model.")}


def test_lora_checkpoint_round_trip_and_merge(folders, tmp_path):
    model, tok = pretrained_model(
        folders["siglip"], "siglip", (64, 32), text_length=16, finetune={"mode": "lora"}
    )
    with torch.no_grad():  # non-zero adapters, so the round trip and the merge are visible
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    model.eval()
    images = torch.randn(2, 3, 64, 32)
    tokens = tokenize(tok, CAPTIONS[:2], 16)
    img, txt = model.encode_images(images), model.encode_texts(**tokens)

    # a training checkpoint as `tbps train` writes it: spec + state dict + tokenizer
    ckpt = tmp_path / "best.ckpt"
    torch.save(
        {
            "hyper_parameters": {"model_spec": model.spec()},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "tbps_tokenizer": tokenizer_state(tok),
        },
        ckpt,
    )
    loaded = model_from_checkpoint(ckpt)
    loaded_tok = loaded.tokenizer
    assert loaded.finetune["mode"] == "lora"
    assert any(".lora_A." in k for k in loaded.state_dict())
    assert trainable_names(loaded) == trainable_names(model)
    torch.testing.assert_close(loaded.encode_images(images), img)
    reloaded = tokenize(loaded_tok, CAPTIONS[:2], 16)
    assert torch.equal(reloaded["input_ids"], tokens["input_ids"])
    torch.testing.assert_close(loaded.encode_texts(**reloaded), txt)

    merged = loaded.merge_lora()
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    assert merged.spec()["finetune"]["mode"] == "full"
    torch.testing.assert_close(merged.encode_images(images), img, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged.encode_texts(**tokens), txt, atol=1e-5, rtol=1e-4)
    merged.save_pretrained(tmp_path / "export")
    exported = TBPSModel.from_pretrained(tmp_path / "export").eval()
    torch.testing.assert_close(exported.encode_images(images), merged.encode_images(images))


def test_bad_finetune_settings():
    with pytest.raises(ConfigError, match="unknown tower\\(s\\) \\['audio'\\]"):
        finetune_settings({"freeze": ["audio"]})
    with pytest.raises(ConfigError, match="must be a non-empty subset of q_proj, k_proj"):
        finetune_settings({"lora": {"target_modules": ["qkv"]}})
    with pytest.raises(ConfigError, match="both towers frozen trains no adapter"):
        finetune_settings({"mode": "lora", "freeze": ["vision", "text"]})
    with pytest.raises(ConfigError, match="unknown backbone.finetune key\\(s\\) \\['rank'\\]"):
        finetune_settings({"rank": 8})
