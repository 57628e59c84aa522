"""Training heads: shapes, initialisation, padding masks, token selection and its attention."""

import math

import pytest
import torch

from objective_fixtures import EOS, LENGTH, captions, clip_spec, siglip_spec
from tbps.model.tbps import TBPSModel
from tbps.model.token_selection import (
    TokenSelectionEmbedding,
    TokenSelectionHead,
    fused_embedding,
)
from tbps.training.heads import IdentityClassifier, MLMHead, SimCLRProjector, attention_heads


def test_identity_classifier_init_and_shape():
    torch.manual_seed(0)
    head = IdentityClassifier(256, 500)
    assert head(torch.randn(4, 256)).shape == (4, 500)
    assert head.linear.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.equal(head.linear.bias, torch.zeros(500))
    with pytest.raises(ValueError, match="at least one class"):
        IdentityClassifier(8, 0)


def test_attention_heads_follow_width_over_64():
    assert attention_heads(512) == 8 and attention_heads(96) == 1 and attention_heads(256) == 4
    assert attention_heads(200) == 2  # 200 // 64 = 3 does not divide 200


def test_mlm_head_shapes_and_padding_masks():
    torch.manual_seed(0)
    head = MLMHead(text_width=32, vision_width=40, embed_dim=128, vocab_size=50, layers=4).eval()
    assert len(head.transformer.layers) == 4
    assert head.cross_attn.num_heads == 2  # 128 / 64
    text, image = torch.randn(3, 7, 32), torch.randn(3, 5, 40)
    text_mask = torch.ones(3, 7, dtype=torch.long)
    text_mask[0, 4:] = 0
    image_mask = torch.ones(3, 5, dtype=torch.long)
    image_mask[1, 3:] = 0
    full = head(text, text_mask, image, image_mask)
    assert full.shape == (3, 7, 50)
    positions = torch.zeros(3, 7, dtype=torch.bool)
    positions[0, 1], positions[2, 5] = True, True
    picked = head(text, text_mask, image, image_mask, positions=positions)
    assert picked.shape == (2, 50)
    assert torch.allclose(picked, full[positions], atol=1e-5)
    # padded caption tokens and masked image tokens do not reach the real positions
    text2, image2 = text.clone(), image.clone()
    text2[0, 4:] = 100.0
    image2[1, 3:] = -100.0
    again = head(text2, text_mask, image2, image_mask)
    assert torch.allclose(again[0, :4], full[0, :4], atol=1e-5)
    assert torch.allclose(again[1], full[1], atol=1e-5)
    # without the text padding mask the padded tokens do change the real ones
    unmasked = head(text2, torch.ones_like(text_mask), image2, image_mask)
    assert not torch.allclose(unmasked[0, :4], full[0, :4], atol=1e-3)


def test_simclr_projector_shape():
    assert SimCLRProjector(24)(torch.randn(5, 24)).shape == (5, 24)


def test_token_selection_keeps_the_top_ratio_of_selectable_tokens():
    torch.manual_seed(0)
    tse = TokenSelectionEmbedding(token_width=6, embed_dim=8, ratio=0.5)
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.7, 0.2], [0.0, 0.1, 0.8, 0.3, 0.0, 0.0]])
    selectable = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    indices, keep = tse.select(scores, selectable)
    # sample 0: 5 selectable -> 2 kept (1, 4); sample 1: 3 selectable -> 1 kept (2)
    assert indices[0, :2].tolist() == [1, 4] and keep[0].tolist() == [True, True]
    assert indices[1, 0].item() == 2 and keep[1].tolist() == [True, False]
    tokens = torch.randn(2, 6, 6)
    out = tse(tokens, scores, selectable)
    assert out.shape == (2, 8)

    def embed(x):
        x = torch.nn.functional.normalize(x, dim=-1)
        return tse.linear(x) + tse.mlp(x)

    assert torch.allclose(out[0], embed(tokens[0, [1, 4]]).max(dim=0).values, atol=1e-6)
    assert torch.allclose(out[1], embed(tokens[1, [2]])[0], atol=1e-6)
    # tokens that are not selected do not matter
    changed = tokens.clone()
    changed[0, [0, 2, 3, 5]] = 50.0
    assert torch.allclose(tse(changed, scores, selectable)[0], out[0])
    with pytest.raises(ValueError, match="no selectable token"):
        tse.select(scores, torch.zeros_like(selectable))


def _eager_last_attention(tower, **inputs):
    return tower(**inputs, output_attentions=True).attentions[-1].mean(dim=1)  # (B, N, N)


def test_clip_importance_equals_the_last_layer_attention():
    torch.manual_seed(0)
    model = TBPSModel.from_spec(clip_spec()).eval()
    head = TokenSelectionHead(model.vision_width, model.text_width, 16, ratio=0.5).eval()
    images = torch.randn(3, 3, 32, 16)
    ids, mask = captions(3)
    recorded = {}

    def record(name):
        def hook(module, args):
            recorded[name] = args[1]

        return hook

    handles = [head.image.register_forward_pre_hook(record("image"))]
    handles.append(head.text.register_forward_pre_hook(record("text")))
    _, image_tse = head.encode_image(model, images)
    _, text_tse = head.encode_text(model, ids, mask)
    for h in handles:
        h.remove()
    assert image_tse.shape == text_tse.shape == (3, 16)

    model.hf.set_attn_implementation("eager")
    vision = _eager_last_attention(model.hf.vision_model, pixel_values=images)
    assert torch.allclose(recorded["image"], vision[:, 0], atol=1e-5)  # class token's row
    text = _eager_last_attention(model.hf.text_model, input_ids=ids, attention_mask=mask)
    eos = (ids == EOS).int().argmax(dim=1)
    assert torch.allclose(recorded["text"], text[torch.arange(3), eos], atol=1e-5)


def test_text_selection_skips_special_and_padding_tokens():
    torch.manual_seed(1)
    model = TBPSModel.from_spec(clip_spec()).eval()
    head = TokenSelectionHead(model.vision_width, model.text_width, 16, ratio=1.0).eval()
    ids, mask = captions(3)
    seen = {}
    head.text.select = _spy(head.text.select, seen)
    head.encode_text(model, ids, mask)
    indices, keep = seen["result"]
    for i in range(3):
        chosen = set(indices[i][keep[i]].tolist())
        words = {j for j in range(LENGTH) if mask[i, j] and ids[i, j] > EOS}
        assert chosen == words  # ratio 1: exactly the real, non-special tokens


def _spy(fn, seen):
    def wrapper(*args):
        seen["result"] = fn(*args)
        return seen["result"]

    return wrapper


def test_siglip_tse_uses_the_probe_attention():
    torch.manual_seed(2)
    model = TBPSModel.from_spec(siglip_spec()).eval()
    head = TokenSelectionHead(model.vision_width, model.text_width, 12, ratio=0.3).eval()
    images = torch.randn(2, 3, 32, 16)
    out, tse = head.encode_image(model, images)
    assert out.tokens.shape == (2, 2, model.vision_width) and tse.shape == (2, 12)
    ids, mask = captions(2)
    out, tse = head.encode_text(model, ids, mask)
    assert tse.shape == (2, 12)


def test_fused_embedding_is_the_mean_of_both_cosines():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)
    c, d = torch.randn(5, 6, generator=g), torch.randn(5, 3, generator=g)
    fused = fused_embedding(a, b) @ fused_embedding(c, d).t()
    cos = torch.nn.functional.cosine_similarity
    expected = (cos(a[:, None], c[None], dim=-1) + cos(b[:, None], d[None], dim=-1)) / 2
    assert torch.allclose(fused, expected, atol=1e-6)
    assert torch.allclose(fused_embedding(a, b).norm(dim=1), torch.ones(4))
    assert math.isclose(fused_embedding(a, a[:, :3]).norm(dim=1)[0].item(), 1.0, rel_tol=1e-6)
