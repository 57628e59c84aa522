"""Training heads: shapes, initialisation, padding masks, token selection and its attention."""

import math

import pytest
import torch

from objective_fixtures import EOS, LENGTH, captions, clip_spec, siglip_spec
from tbps.model import token_selection
from tbps.model.tbps import TBPSModel
from tbps.model.token_selection import (
    TokenSelectionEmbedding,
    TokenSelectionHead,
    fused_embedding,
    select_tokens,
    selection_size,
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


def test_selection_ranks_selectable_tokens_and_counts_at_most_n():
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.7, 0.2], [0.9, 0.1, 0.8, 0.3, 0.0, 0.0]])
    selectable = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    indices, keep = select_tokens(scores, selectable, k=3)
    assert indices[0].tolist() == [1, 4, 3] and keep[0].tolist() == [True] * 3
    # 2 selectable of k=3: both ranked first (the 0.9 of a non-selectable token ranks last)
    assert indices[1, :2].tolist() == [2, 1] and keep[1].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="no selectable token"):
        select_tokens(scores, torch.zeros_like(selectable), k=2)
    assert selection_size(0.3, 192) == 57 and selection_size(0.3, 75) == 22  # RDE's k
    assert selection_size(0.3, 2) == 1


def test_branch_is_the_max_of_linear_plus_mlp_over_kept_normalised_tokens():
    torch.manual_seed(0)
    branch = TokenSelectionEmbedding(token_width=6, embed_dim=8)
    bn = branch.mlp.bn
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    branch.eval()
    tokens = torch.randn(2, 3, 6) * 4
    keep = torch.tensor([[True, True, True], [True, False, False]])
    out = branch(tokens, keep)

    def embed(x):  # from the formula, eval-mode BatchNorm written out
        x = x / x.norm(dim=-1, keepdim=True)
        h = x @ branch.mlp.fc1.weight.T + branch.mlp.fc1.bias
        h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        mlp = h.clamp(min=0) @ branch.mlp.fc2.weight.T + branch.mlp.fc2.bias
        return x @ branch.linear.weight.T + branch.linear.bias + mlp

    assert torch.allclose(out[0], embed(tokens[0]).max(dim=0).values, atol=1e-5)
    assert torch.allclose(out[1], embed(tokens[1, :1])[0], atol=1e-5)
    changed = tokens.clone()
    changed[1, 1:] = 50.0  # tokens that do not count do not matter
    assert torch.allclose(branch(changed, keep)[1], out[1])


def _eager_last_attention(tower, **inputs):
    return tower(**inputs, output_attentions=True).attentions[-1].mean(dim=1)  # (B, N, N)


def _record_selection(monkeypatch):
    """Spy on select_tokens: the (scores, selectable, k) and result of each call."""
    calls = []

    def spy(scores, selectable, k):
        result = select_tokens(scores, selectable, k)
        calls.append((scores, selectable, k, result))
        return result

    monkeypatch.setattr(token_selection, "select_tokens", spy)
    return calls


def test_clip_importance_equals_the_last_layer_attention(monkeypatch):
    torch.manual_seed(0)
    model = TBPSModel.from_spec(clip_spec()).eval()
    head = TokenSelectionHead(model.embed_dim, 16, ratio=0.5).eval()
    images = torch.randn(3, 3, 32, 16)
    ids, mask = captions(3)
    calls = _record_selection(monkeypatch)
    _, image_tse = head.encode_image(model, images)
    _, text_tse = head.encode_text(model, ids, mask)
    assert image_tse.shape == text_tse.shape == (3, 16)
    (image_scores, _, image_k, _), (text_scores, _, text_k, _) = calls
    assert image_k == int(0.5 * 2) and text_k == int(0.5 * (LENGTH - 2))  # 2 patches

    model.hf.set_attn_implementation("eager")
    vision = _eager_last_attention(model.hf.vision_model, pixel_values=images)
    assert torch.allclose(image_scores, vision[:, 0], atol=1e-5)  # class token's row
    text = _eager_last_attention(model.hf.text_model, input_ids=ids, attention_mask=mask)
    eos = (ids == EOS).int().argmax(dim=1)
    assert torch.allclose(text_scores, text[torch.arange(3), eos], atol=1e-5)


def test_tse_tokens_are_the_projected_token_features(monkeypatch):
    torch.manual_seed(3)
    model = TBPSModel.from_spec(clip_spec()).eval()
    head = TokenSelectionHead(model.embed_dim, 16, ratio=1.0).eval()
    ids, mask = captions(2)
    images = torch.randn(2, 3, 32, 16)
    calls = _record_selection(monkeypatch)
    seen = []
    for branch in (head.image, head.text):
        monkeypatch.setattr(branch, "forward", lambda tokens, keep: seen.append(tokens))
    head.encode_image(model, images)
    head.encode_text(model, ids, mask)
    hf = model.hf
    vision = hf.vision_model(pixel_values=images).last_hidden_state
    expected_image = hf.vision_model.post_layernorm(vision) @ hf.visual_projection.weight.T
    text = hf.text_model(input_ids=ids, attention_mask=mask).last_hidden_state  # after ln_final
    expected_text = text @ hf.text_projection.weight.T
    rows = torch.arange(2)[:, None]
    for (_, _, _, (indices, _)), tokens, expected in zip(
        calls, seen, (expected_image, expected_text)
    ):
        assert tokens.shape[-1] == model.embed_dim
        assert torch.allclose(tokens, expected[rows, indices], atol=1e-5)


def test_text_selection_skips_special_and_padding_tokens(monkeypatch):
    torch.manual_seed(1)
    model = TBPSModel.from_spec(clip_spec()).eval()
    head = TokenSelectionHead(model.embed_dim, 16, ratio=1.0).eval()
    ids, mask = captions(3)
    calls = _record_selection(monkeypatch)
    head.encode_text(model, ids, mask)
    _, _, _, (indices, keep) = calls[0]
    for i in range(3):
        chosen = set(indices[i][keep[i]].tolist())
        words = {j for j in range(LENGTH) if mask[i, j] and ids[i, j] > EOS}
        assert chosen == words  # k = L - 2 >= n: exactly the real, non-special tokens


def test_siglip_tse_uses_the_probe_attention(monkeypatch):
    torch.manual_seed(2)
    model = TBPSModel.from_spec(siglip_spec()).eval()
    head = TokenSelectionHead(model.embed_dim, 12, ratio=0.3).eval()
    images = torch.randn(2, 3, 32, 16)
    calls = _record_selection(monkeypatch)
    out, tse = head.encode_image(model, images)
    assert out.tokens.shape == (2, 2, model.vision_width) and tse.shape == (2, 12)
    ids, mask = captions(2)
    _, text_tse = head.encode_text(model, ids, mask)
    assert text_tse.shape == (2, 12)
    (image_scores, _, _, _), (text_scores, _, _, _) = calls
    # the probe's attention to each token, written out from the pooling head's weights
    pool = model.hf.vision_model.head
    attn, width = pool.attention, model.vision_width
    w_q, w_k, _ = attn.in_proj_weight.chunk(3)
    b_q, b_k, _ = attn.in_proj_bias.chunk(3)
    heads = attn.num_heads
    q = (pool.probe @ w_q.T + b_q).reshape(1, heads, -1).transpose(0, 1)  # (H, 1, d)
    k = (out.tokens @ w_k.T + b_k).reshape(2, -1, heads, width // heads).transpose(1, 2)
    probs = (q[None] @ k.transpose(-1, -2) / math.sqrt(width // heads)).softmax(-1)
    assert torch.allclose(image_scores, probs.mean(dim=1)[:, 0], atol=1e-5)
    # text: the last token's row of the last layer, as eager attention gives it
    model.hf.set_attn_implementation("eager")
    attention_mask = mask if model.text_attention_mask else None
    eager = _eager_last_attention(model.hf.text_model, input_ids=ids, attention_mask=attention_mask)
    assert torch.allclose(text_scores, eager[:, -1], atol=1e-5)


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
