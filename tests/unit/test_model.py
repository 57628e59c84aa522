"""Scratch CLIP with non-square inputs, position-table resizing, save/load, tokenizer agreement."""

import pytest
import torch

from tbps.data.tokenization import tokenize, train_caption_tokenizer
from tbps.errors import ConfigError
from tbps.model.backbone import resize_vision_positions, set_image_size
from tbps.model.factory import scratch_model_spec
from tbps.model.tbps import TBPSModel
from tiny_backbones import tiny_spec

CAPTIONS = [
    "a woman in a red coat with a black backpack",
    "a man wearing blue jeans and a white shirt",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(CAPTIONS, vocab_size=200, min_frequency=1)


def test_non_square_encoders_are_normalised(tokenizer):
    model = TBPSModel.from_spec(tiny_spec(tokenizer, (96, 32))).eval()
    assert model.image_size == (96, 32)
    assert model.backbone.vision_model.embeddings.position_embedding.weight.shape == (1 + 6 * 2, 32)
    img = model.encode_images(torch.randn(3, 3, 96, 32))
    tokens = tokenize(tokenizer, CAPTIONS[:3], model.text_length)
    txt = model.encode_texts(tokens["input_ids"], tokens["attention_mask"])
    assert img.shape == txt.shape == (3, 24)
    assert torch.allclose(img.norm(dim=1), torch.ones(3)) and torch.allclose(
        txt.norm(dim=1), torch.ones(3)
    )
    with pytest.raises(ValueError, match="input image size 64x32 does not match the model's 96x32"):
        model.encode_images(torch.randn(1, 3, 64, 32))


def test_text_pools_at_end_of_text_token(tokenizer):
    model = TBPSModel.from_spec(tiny_spec(tokenizer)).eval()
    tokens = tokenize(tokenizer, CAPTIONS[:2], model.text_length)
    assert model.backbone.config.text_config.eos_token_id == tokenizer.eos_token_id != 2
    ids = tokens["input_ids"].clone()
    ids[tokens["attention_mask"] == 0] = tokenizer.unk_token_id  # padding after EOS must not matter
    a = model.encode_texts(tokens["input_ids"], tokens["attention_mask"])
    b = model.encode_texts(ids, tokens["attention_mask"])
    assert torch.allclose(a, b, atol=1e-6)


def test_position_resize_identity_and_direct_interpolation():
    table = torch.randn(1 + 4 * 4, 8)
    assert torch.equal(resize_vision_positions(table, (4, 4), (4, 4)), table)
    out = resize_vision_positions(table, (4, 4), (8, 2))
    assert torch.equal(out[0], table[0])
    grid = table[1:].reshape(4, 4, 8)
    # bilinear, align_corners=False: new row y samples source row (y + 0.5) * 4/8 - 0.5
    # column x of a 2-wide grid samples source column (x + 0.5) * 2 - 0.5 = 0.5 or 2.5
    y, x = 3, 1
    src_y = (y + 0.5) * 0.5 - 0.5  # 1.25
    src_x = (x + 0.5) * 2 - 0.5  # 2.5
    y0, x0, wy, wx = 1, 2, 0.25, 0.5
    direct = (
        (1 - wy) * (1 - wx) * grid[y0, x0]
        + (1 - wy) * wx * grid[y0, x0 + 1]
        + wy * (1 - wx) * grid[y0 + 1, x0]
        + wy * wx * grid[y0 + 1, x0 + 1]
    )
    assert src_y == 1.25 and src_x == 2.5
    assert torch.allclose(out[1 + y * 2 + x], direct, atol=1e-6)


def test_set_image_size_keeps_class_and_patch_weights(tokenizer):
    model = TBPSModel.from_spec(tiny_spec(tokenizer, (64, 64)))
    before = model.backbone.vision_model.embeddings
    set_image_size(model.backbone, (128, 32))
    after = model.backbone.vision_model.embeddings
    assert after.grid == (8, 2)
    assert torch.equal(after.class_embedding, before.class_embedding)
    assert torch.equal(after.patch_embedding.weight, before.patch_embedding.weight)
    assert torch.equal(after.position_embedding.weight[0], before.position_embedding.weight[0])


def test_save_and_load_round_trip(tokenizer, tmp_path):
    model = TBPSModel.from_spec(tiny_spec(tokenizer)).eval()
    model.save_pretrained(tmp_path)
    loaded = TBPSModel.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 64, 32)
    assert torch.equal(model.encode_images(x), loaded.encode_images(x))
    assert loaded.spec() == model.spec()


def test_fixed_and_learnable_temperature(tokenizer):
    spec = tiny_spec(tokenizer)
    assert TBPSModel.from_spec(spec).logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-4)
    spec["temperature"] = 0.02
    assert TBPSModel.from_spec(spec).logit_scale().item() == pytest.approx(50.0)


def test_clip_logit_scale_is_clamped_at_100_and_siglip_is_not(tokenizer):
    from objective_fixtures import siglip_spec

    clip = TBPSModel.from_spec(tiny_spec(tokenizer))
    siglip = TBPSModel.from_spec(siglip_spec())
    for model in (clip, siglip):
        with torch.no_grad():
            model.hf.logit_scale.fill_(torch.tensor(300.0).log())  # exp = 300
    assert clip.logit_scale().item() == pytest.approx(100.0)
    assert siglip.logit_scale().item() == pytest.approx(300.0, rel=1e-5)
    with torch.no_grad():
        clip.hf.logit_scale.fill_(torch.tensor(30.0).log())
    assert clip.logit_scale().item() == pytest.approx(30.0, rel=1e-5)  # below: unchanged


def test_bad_architecture_settings(tokenizer):
    with pytest.raises(ConfigError, match="not divisible by the patch size 16"):
        TBPSModel.from_spec(tiny_spec(tokenizer, (60, 32)))
    with pytest.raises(ConfigError, match="width=30 is not divisible by heads=4"):
        scratch_model_spec(
            tokenizer,
            (64, 32),
            16,
            {"width": 30, "layers": 1, "heads": 4},
            {"width": 32, "layers": 1, "heads": 2, "length": 8},
            16,
        )
    with pytest.raises(TypeError, match="image size set"):
        TBPSModel(_plain_clip())


def _plain_clip():
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(
        CLIPConfig(
            text_config=dict(
                hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
            ),
            vision_config=dict(
                hidden_size=16,
                intermediate_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=32,
                patch_size=16,
            ),
        )
    )


def test_vit_b16_patch_layout_at_384x128():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=16,
            eos_token_id=4,
            bos_token_id=3,
            pad_token_id=0,
            vocab_size=50,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=224,
            patch_size=16,
            projection_dim=16,
        ),
        projection_dim=16,
    )
    clip = CLIPModel(config)
    square = clip.vision_model.embeddings.position_embedding.weight.detach().clone()
    model = TBPSModel(set_image_size(clip, (384, 128))).eval()
    table = model.backbone.vision_model.embeddings.position_embedding.weight
    assert table.shape == (1 + 24 * 8, 32) and torch.equal(table[0], square[0])
    assert torch.allclose(table[1:], resize_vision_positions(square, (14, 14), (24, 8))[1:])
    assert model.encode_images(torch.randn(2, 3, 384, 128)).shape == (2, 16)


def test_tower_outputs_widths_and_similarity_parameters(tokenizer):
    model = TBPSModel.from_spec(tiny_spec(tokenizer, (64, 32))).eval()
    assert model.kind == "clip" and not model.is_sigmoid
    assert (model.vision_width, model.text_width, model.embed_dim) == (32, 32, 24)
    assert model.vocab_size == len(tokenizer)
    assert model.logit_bias().item() == 0.0 and model.logit_bias().dim() == 0
    images = torch.randn(2, 3, 64, 32)
    out = model.image_forward(images, tokens=True)
    assert out.embeds.shape == (2, 24) and out.tokens.shape == (2, 1 + 4 * 2, 32)
    assert model.image_forward(images).tokens is None
    assert torch.allclose(out.embeds, model.image_embeddings(images))
    # token states are after the final LayerNorm: the class token's is the pooled state
    pooled = model.hf.vision_model(pixel_values=images).pooler_output
    assert torch.allclose(out.tokens[:, 0], pooled, atol=1e-6)
    tokens = tokenize(tokenizer, CAPTIONS[:2], model.text_length)
    text = model.text_forward(tokens["input_ids"], tokens["attention_mask"], tokens=True)
    assert text.embeds.shape == (2, 24) and text.tokens.shape == (2, model.text_length, 32)
    assert model.spec()["finetune"]["mode"] == "full" and model.spec()["text_attention_mask"]
