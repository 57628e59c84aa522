"""Resizing on load: SigLIP's class-free position grid, text positions, the mask-token row."""

import pytest
import torch
from transformers import CLIPModel, SiglipModel

from tbps.errors import ConfigError
from tbps.model.backbone import (
    grow_token_embedding,
    resize_text_positions,
    resize_vision_positions,
    set_image_size,
    set_text_length,
)
from tiny_backbones import tiny_clip_config, tiny_siglip_config


def test_siglip_grid_has_no_class_row_and_interpolates_bilinearly():
    table = torch.randn(2 * 2, 3)
    assert torch.equal(resize_vision_positions(table, (2, 2), (2, 2), prefix_rows=0), table)
    out = resize_vision_positions(table, (2, 2), (4, 1), prefix_rows=0)
    grid = table.reshape(2, 2, 3)
    # a 1-wide column samples source x = (0 + 0.5) * 2 - 0.5 = 0.5: the mean of both columns;
    # row y of 4 samples source y = (y + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped)
    r0, r1 = grid.mean(dim=1)
    expected = torch.stack([r0, 0.75 * r0 + 0.25 * r1, 0.25 * r0 + 0.75 * r1, r1])
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="expected 1 \\+ 2x2"):
        resize_vision_positions(table, (2, 2), (4, 1), prefix_rows=1)


def test_text_positions_keep_first_and_last_rows_and_interpolate_the_middle():
    table = torch.randn(6, 4)  # middle rows 1..4
    assert torch.equal(resize_text_positions(table, 6), table)
    out = resize_text_positions(table, 9)  # middle 4 -> 7 rows, align_corners: step 3/6 = 0.5
    assert out.shape == (9, 4)
    assert torch.equal(out[0], table[0]) and torch.equal(out[-1], table[-1])
    middle = table[1:-1]
    for j in range(7):
        src = j * 0.5
        lo, w = int(src), src - int(src)
        hi = min(lo + 1, 3)
        torch.testing.assert_close(out[1 + j], (1 - w) * middle[lo] + w * middle[hi])
    shorter = resize_text_positions(table, 4)  # middle 4 -> 2 rows: the first and last middle rows
    torch.testing.assert_close(shorter, table[[0, 1, 4, 5]])
    with pytest.raises(ConfigError, match="cannot resize a text position table of 6 rows to 1"):
        resize_text_positions(table, 1)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_set_text_length_updates_table_buffer_and_config(kind):
    torch.manual_seed(0)
    config = tiny_clip_config() if kind == "clip" else tiny_siglip_config(vocab=50)
    model = (CLIPModel if kind == "clip" else SiglipModel)(config).eval()
    old = model.text_model.embeddings.position_embedding.weight.detach().clone()
    set_text_length(model, 24)
    emb = model.text_model.embeddings
    assert emb.position_embedding.weight.shape == (24, 32)
    assert torch.equal(emb.position_embedding.weight, resize_text_positions(old, 24))
    assert emb.position_ids.tolist() == [list(range(24))]
    assert model.config.text_config.max_position_embeddings == 24
    ids = torch.randint(3, 40, (2, 24))
    assert model.text_model(input_ids=ids).last_hidden_state.shape == (2, 24, 32)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_set_image_size_is_identity_at_the_same_size(kind):
    torch.manual_seed(0)
    config = tiny_clip_config(image_size=48) if kind == "clip" else tiny_siglip_config(50, 48)
    model = (CLIPModel if kind == "clip" else SiglipModel)(config).eval()
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = model.vision_model(pixel_values=images).pooler_output
        set_image_size(model, (48, 48))
        after = model.vision_model(pixel_values=images).pooler_output
    torch.testing.assert_close(after, before)


def test_siglip_non_square_grid_keeps_patch_weights_and_bias():
    torch.manual_seed(0)
    model = SiglipModel(tiny_siglip_config(50, 32))
    old = model.vision_model.embeddings
    table = old.position_embedding.weight.detach().clone()
    set_image_size(model, (64, 32))
    new = model.vision_model.embeddings
    assert new.grid == (4, 2) and new.position_ids.shape == (1, 8)
    assert torch.equal(new.patch_embedding.weight, old.patch_embedding.weight)
    assert torch.equal(new.patch_embedding.bias, old.patch_embedding.bias)
    assert torch.equal(
        new.position_embedding.weight, resize_vision_positions(table, (2, 2), (4, 2), 0)
    )
    assert model.vision_model(pixel_values=torch.randn(1, 3, 64, 32)).pooler_output.shape == (1, 32)


def test_grown_token_rows_follow_the_matrix_mean_and_std():
    """New rows are draws from N(mean, std) of the old rows, per dimension: checked
    statistically on many new rows, not by repeating the implementation's RNG call."""
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config(vocab=60))
    with torch.no_grad():  # distinct per-dimension means and spreads to be recovered
        weight = model.text_model.embeddings.token_embedding.weight
        weight.mul_(torch.linspace(0.5, 3.0, 32)).add_(torch.linspace(-2.0, 2.0, 32))
    old = model.text_model.embeddings.token_embedding.weight.detach().clone()
    grown = 60 + 4000
    grow_token_embedding(model, grown, generator=torch.Generator().manual_seed(3))
    new = model.text_model.embeddings.token_embedding.weight.detach()
    assert new.shape == (grown, 32) and torch.equal(new[:60], old)
    rows = new[60:]
    mean, std = old.mean(0), old.std(0)
    # 4000 draws: the sample mean is within 5 standard errors, the sample std within 10 %
    assert ((rows.mean(0) - mean).abs() <= 5 * std / 4000**0.5).all()
    torch.testing.assert_close(rows.std(0), std, rtol=0.1, atol=0)
    # independent rows (not one draw repeated), uncorrelated across dimensions
    assert torch.unique(rows, dim=0).shape[0] == 4000
    standardized = (rows - mean) / std
    correlation = torch.corrcoef(standardized.T) - torch.eye(32)
    assert correlation.abs().max() < 0.1
    assert model.config.text_config.vocab_size == grown
    with pytest.raises(ValueError, match="cannot shrink"):
        grow_token_embedding(model, 10)
