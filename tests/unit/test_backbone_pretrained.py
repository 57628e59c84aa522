"""Pretrained CLIP/SigLIP folders (safetensors and .bin): loading, encoders, tokenizers, errors."""

import json
import shutil

import pytest
import torch
from transformers import CLIPModel, SiglipModel

from tbps.data.tokenization import tokenize
from tbps.errors import ConfigError, DataError
from tbps.model.factory import check_backbone_type, pretrained_model
from tbps.model.pretrained import resolve_backbone_path
from tbps.model.tbps import TBPSModel
from tiny_backbones import CAPTIONS, write_tiny_clip, write_tiny_siglip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {
        ("clip", "safetensors"): write_tiny_clip(root / "clip-st"),
        ("clip", "bin"): write_tiny_clip(root / "clip-bin", fmt="bin"),
        ("siglip", "safetensors"): write_tiny_siglip(root / "siglip-st"),
        ("siglip", "bin"): write_tiny_siglip(root / "siglip-bin", fmt="bin"),
    }


def _stock(kind, folder):
    return (CLIPModel if kind == "clip" else SiglipModel).from_pretrained(folder).eval()


def _normalise(x):
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_same_size_load_matches_the_stock_model(folders, kind, fmt):
    folder = folders[(kind, fmt)]
    model, tok = pretrained_model(folder, kind, (32, 32), text_length=16)
    model.eval()
    stock = _stock(kind, folder)
    images = torch.randn(2, 3, 32, 32)
    tokens = tokenize(tok, CAPTIONS[:3], 16)
    with torch.no_grad():
        expected_img = stock.get_image_features(pixel_values=images).pooler_output
        expected_txt = stock.get_text_features(**tokens).pooler_output
        torch.testing.assert_close(model.image_embeddings(images), expected_img)
        torch.testing.assert_close(
            model.text_embeddings(tokens["input_ids"], tokens["attention_mask"]), expected_txt
        )
        torch.testing.assert_close(model.encode_images(images), _normalise(expected_img))
    table = model.hf.vision_model.embeddings.position_embedding.weight
    assert torch.equal(table, stock.vision_model.embeddings.position_embedding.weight)


def test_siglip_heads_temperature_bias_and_unmasked_text(folders):
    folder = folders[("siglip", "safetensors")]
    model, tok = pretrained_model(folder, "siglip", (64, 32), text_attention_mask=False)
    model.eval()
    stock = _stock("siglip", folder)
    assert model.is_sigmoid and model.kind == "siglip"
    assert model.logit_scale().item() == pytest.approx(torch.tensor(2.3).exp().item(), rel=1e-5)
    assert model.logit_bias().item() == pytest.approx(-10.0)
    assert model.logit_bias().requires_grad and model.logit_bias().dim() == 0
    assert model.embed_dim == model.vision_width == 32 and model.text_width == 32
    tokens = tokenize(tok, ["a red coat", "blue jeans", CAPTIONS[0]], 16)
    assert tokens["attention_mask"][:2].eq(0).any()
    with torch.no_grad():
        # pre-trained without a padding mask: the text tower must not receive one
        expected = stock.get_text_features(input_ids=tokens["input_ids"]).pooler_output
        masked = stock.get_text_features(**tokens).pooler_output
        got = model.text_embeddings(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, masked, atol=1e-4)  # the switch matters
    # the image embedding is the attention-pooling head's output (no projection)
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        hidden = model.hf.vision_model(pixel_values=images).last_hidden_state
        head = model.hf.vision_model.head(hidden)
        out = model.image_forward(images, tokens=True)
    torch.testing.assert_close(out.embeds, head)
    assert out.tokens.shape == (2, 4 * 2, 32)


def test_clip_fixed_temperature_and_zero_bias(folders):
    model, _ = pretrained_model(
        folders[("clip", "safetensors")], "clip", (64, 32), temperature=0.02
    )
    assert model.logit_scale().item() == pytest.approx(50.0)
    assert model.logit_bias().item() == 0.0 and not model.is_sigmoid
    assert not model.hf.logit_scale.requires_grad  # a fixed temperature leaves it unused


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_non_square_input_and_spec_round_trip(folders, kind, tmp_path):
    folder = folders[(kind, "safetensors")]
    model, tok = pretrained_model(folder, kind, (96, 32), text_length=20, mask_token=True)
    model.eval()
    assert model.image_size == (96, 32) and model.text_length == 20
    prefix = 1 if kind == "clip" else 0
    table = model.hf.vision_model.embeddings.position_embedding.weight
    assert table.shape == (prefix + 6 * 2, 32)
    images = torch.randn(2, 3, 96, 32)
    tokens = tokenize(tok, CAPTIONS[:2], model.text_length)
    emb = model.encode_images(images)
    with pytest.raises(ValueError, match="does not match the model's 96x32"):
        model.encode_images(torch.randn(1, 3, 32, 32))
    model.save_pretrained(tmp_path)
    loaded = TBPSModel.from_pretrained(tmp_path).eval()
    assert loaded.spec() == model.spec()
    assert loaded.image_size == (96, 32) and loaded.vocab_size == len(tok)
    torch.testing.assert_close(loaded.encode_images(images), emb)
    torch.testing.assert_close(
        loaded.encode_texts(tokens["input_ids"], tokens["attention_mask"]),
        model.encode_texts(tokens["input_ids"], tokens["attention_mask"]),
    )


def test_clip_tokenizer_and_model_special_tokens_agree(folders):
    model, tok = pretrained_model(folders[("clip", "safetensors")], "clip", (32, 32), 16)
    text = model.hf.config.text_config
    assert (
        (tok.bos_token_id, tok.eos_token_id)
        == (49406, 49407)
        == (
            text.bos_token_id,
            text.eos_token_id,
        )
    )
    assert model.vocab_size == len(tok) == 49408
    tokens = tokenize(tok, CAPTIONS[:2], 16)
    ids = tokens["input_ids"]
    assert (ids[:, 0] == tok.bos_token_id).all()
    ends = tokens["attention_mask"].sum(1) - 1
    assert (ids[torch.arange(2), ends] == tok.eos_token_id).all()
    # CLIP pools at the first end-of-text token: what follows it must not matter
    model.eval()
    changed = ids.clone()
    changed[tokens["attention_mask"] == 0] = 320
    torch.testing.assert_close(
        model.encode_texts(ids, tokens["attention_mask"]),
        model.encode_texts(changed, tokens["attention_mask"]),
    )


def test_siglip_tokenizer_pads_with_eos_and_pools_the_last_token(folders):
    model, tok = pretrained_model(folders[("siglip", "safetensors")], "siglip", (32, 32), 16)
    assert tok.eos_token_id == tok.pad_token_id == 1 and len(tok) == model.vocab_size
    tokens = tokenize(tok, ["a red coat", CAPTIONS[0] * 3], 16)
    assert tokens["input_ids"][0, -1] == tok.pad_token_id  # short caption: padded with </s>
    assert tokens["input_ids"][1, -1] == tok.eos_token_id  # truncated caption keeps its </s>


def test_mask_token_grows_the_embedding_by_one_row(folders):
    for kind in ("clip", "siglip"):
        plain, tok0 = pretrained_model(folders[(kind, "safetensors")], kind, (32, 32), 16)
        model, tok = pretrained_model(
            folders[(kind, "safetensors")], kind, (32, 32), 16, mask_token=True
        )
        assert tok0.mask_token is None and tok.mask_token == "<|mask|>"
        assert tok.mask_token_id == plain.vocab_size == model.vocab_size - 1
        old = plain.hf.text_model.embeddings.token_embedding.weight
        new = model.hf.text_model.embeddings.token_embedding.weight
        assert torch.equal(new[:-1], old)
        assert model.hf.config.text_config.vocab_size == len(tok)
        ids = tok("a <|mask|> coat")["input_ids"]
        assert tok.mask_token_id in ids


def _copy(folder, tmp_path):
    dest = tmp_path / folder.name
    shutil.copytree(folder, dest)
    return dest


def test_folder_without_weights(folders, tmp_path):
    folder = _copy(folders[("clip", "safetensors")], tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(
        DataError, match=rf"{folder} has no weights: expected one of model.safetensors"
    ):
        pretrained_model(folder, "clip", (32, 32))


def test_weights_that_do_not_fit_the_config(folders, tmp_path):
    folder = _copy(folders[("clip", "bin")], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["projection_dim"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        DataError,
        match=r"pytorch_model.bin: weight '\w+_projection.weight' has shape \(24, 32\) but "
        r"config.json expects \(16, 32\)",
    ):
        pretrained_model(folder, "clip", (32, 32))
    state = torch.load(folders[("clip", "bin")] / "pytorch_model.bin", weights_only=True)
    del state["logit_scale"]
    config["projection_dim"] = 24
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(DataError, match=r"1 missing \(e.g. 'logit_scale'\)"):
        pretrained_model(folder, "clip", (32, 32))


def test_tokenizer_that_does_not_match_the_model(folders, tmp_path):
    folder = _copy(folders[("siglip", "safetensors")], tmp_path)
    for name in ("spiece.model", "tokenizer_config.json"):
        (folder / name).unlink()
    for path in folders[("clip", "safetensors")].glob("tokenizer*.json"):
        shutil.copy(path, folder / path.name)
    with pytest.raises(DataError, match=r"the tokenizer has 49408 tokens but config.json "):
        pretrained_model(folder, "siglip", (32, 32))
    for path in folder.glob("tokenizer*.json"):
        path.unlink()
    with pytest.raises(DataError, match="has no tokenizer: expected tokenizer.json"):
        pretrained_model(folder, "siglip", (32, 32))


def test_wrong_type_unknown_type_and_bad_settings(folders, tmp_path):
    with pytest.raises(DataError, match="model_type is 'siglip' but backbone.type expects 'clip'"):
        pretrained_model(folders[("siglip", "bin")], "clip", (32, 32))
    with pytest.raises(ConfigError, match="unknown backbone.type 'vit'; valid: clip_scratch, clip"):
        check_backbone_type("vit")
    with pytest.raises(ConfigError, match="unknown backbone.finetune.mode 'half'"):
        pretrained_model(folders[("clip", "bin")], "clip", (32, 32), finetune={"mode": "half"})
    with pytest.raises(ConfigError, match="not divisible by the patch size 16"):
        pretrained_model(folders[("clip", "bin")], "clip", (40, 32))
    with pytest.raises(DataError, match="backbone folder /no/such/dir does not exist"):
        resolve_backbone_path("/no/such/dir")
    weights = folders[("clip", "safetensors")] / "model.safetensors"
    with pytest.raises(DataError, match="is a file; expected a Hugging Face folder"):
        resolve_backbone_path(weights)


def test_hub_id_offline_says_how_to_fetch(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        resolve_backbone_path("tbps-tests/no-such-model")
    message = str(err.value)
    assert "backbone.path=tbps-tests/no-such-model is not a local folder" in message
    assert "hf download tbps-tests/no-such-model --local-dir no-such-model" in message
    assert "set backbone.path=/path/to/no-such-model" in message


def test_cli_rejects_bad_backbones_before_creating_a_run(folders, tmp_path, monkeypatch, capsys):
    from tbps.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TBPS_CACHE", str(tmp_path / "cache"))
    assert main(["train", "backbone=clip_tiny"]) == 2
    assert "backbone=clip_tiny needs backbone.path=DIR" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "backbone=siglip_tiny", f"backbone.path={empty}"]) == 2
    assert f"{empty} has no config.json" in capsys.readouterr().err
    siglip = folders[("siglip", "bin")]
    assert main(["train", "backbone=clip_tiny", f"backbone.path={siglip}"]) == 2
    assert "model_type is 'siglip' but backbone.type expects 'clip'" in capsys.readouterr().err
    assert main(["train", "backbone=clip_tiny", "backbone.type=vit", "backbone.path=x"]) == 2
    assert "unknown backbone.type 'vit'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_legacy_clip_config_eos_2_gets_the_tokenizer_ids(folders, tmp_path):
    folder = _copy(folders[("clip", "safetensors")], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"].update(bos_token_id=0, eos_token_id=2, pad_token_id=1)  # as on the hub
    (folder / "config.json").write_text(json.dumps(config))
    model, tok = pretrained_model(folder, "clip", (32, 32), 16, mask_token=True)
    assert model.hf.config.text_config.eos_token_id == model.hf.text_model.eos_token_id == 49407
    stock = _stock("clip", folder)  # legacy argmax pooling: the same position for CLIP's ids
    tokens = tokenize(tok, CAPTIONS[:3], 16)
    with torch.no_grad():
        expected = stock.get_text_features(**tokens).pooler_output
        torch.testing.assert_close(model.eval().text_embeddings(**tokens), expected)
        # with the mask token (id 49408, above end-of-text) argmax pooling would move; ours not
        masked = tokens["input_ids"].clone()
        masked[:, 2] = tok.mask_token_id
        pooled = model.hf.text_model(input_ids=masked).pooler_output
        hidden = model.hf.text_model(input_ids=masked).last_hidden_state
        ends = (masked == tok.eos_token_id).int().argmax(dim=1)
        torch.testing.assert_close(pooled, hidden[torch.arange(3), ends])


def test_mask_token_added_after_building_keeps_the_finetune_flags(folders):
    model, tok = pretrained_model(
        folders[("siglip", "bin")], "siglip", (32, 32), 16, finetune={"mode": "clipfit"}
    )
    before = model.vocab_size
    mask_id = model.add_mask_token(tok)
    assert mask_id == before and model.vocab_size == before + 1 == len(tok)
    assert not model.hf.text_model.embeddings.token_embedding.weight.requires_grad
    assert model.add_mask_token(tok) == mask_id and model.vocab_size == before + 1  # idempotent
    rebuilt = TBPSModel.from_spec(model.spec())
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.vocab_size == len(tok)


def test_init_temperature_reinitialises_the_learnable_scale(tmp_path):
    folder = write_tiny_clip(tmp_path / "clip")
    model, _ = pretrained_model(folder, "clip", (32, 32), init_temperature=0.07)
    assert model.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert model.hf.logit_scale.requires_grad
    with pytest.raises(ConfigError, match="init_temperature must be positive"):
        pretrained_model(folder, "clip", (32, 32), init_temperature=0.0)
