"""Tiny CLIP/SigLIP model specs and hand-built training batches for objective/head tests."""

from __future__ import annotations

import torch
from transformers import CLIPConfig, SiglipConfig

VOCAB, LENGTH, HW = 60, 12, (32, 16)
PAD, MASK, BOS, EOS = 0, 2, 3, 4


def clip_spec(temperature: float | None = None) -> dict:
    config = CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=LENGTH,
            projection_dim=24,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        ),
        vision_config=dict(
            hidden_size=40,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=16,
            projection_dim=24,
        ),
        projection_dim=24,
    )
    return {
        "backbone_type": "clip",
        "backbone_config": config.to_dict(),
        "image_size": list(HW),
        "temperature": temperature,
    }


def siglip_spec() -> dict:
    config = SiglipConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=LENGTH,
            pad_token_id=EOS,
            eos_token_id=EOS,
            bos_token_id=BOS,
            projection_size=32,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=16,
        ),
    )
    return {"backbone_type": "siglip", "backbone_config": config.to_dict(), "image_size": list(HW)}


def captions(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask): BOS words EOS then padding, lengths varying."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, LENGTH), generator=g)
    mask = torch.ones(batch, LENGTH, dtype=torch.long)
    ids[:, 0] = BOS
    for i in range(batch):
        end = 3 + (i * 3) % (LENGTH - 4)
        ids[i, end] = EOS
        ids[i, end + 1 :] = PAD
        mask[i, end + 1 :] = 0
    return ids, mask


def training_batch(pids, seed: int = 0, views: bool = True) -> dict:
    """A batch with every view the objectives may read (aug, SimCLR, MLM)."""
    pids = torch.as_tensor(pids)
    batch = len(pids)
    g = torch.Generator().manual_seed(seed)
    ids, mask = captions(batch, seed)
    out = {
        "images": torch.randn(batch, 3, *HW, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "pids": pids,
        "indices": torch.arange(batch),
    }
    if views:
        labels = torch.full_like(ids, -100)
        labels[:, 1] = ids[:, 1]
        masked = ids.clone()
        masked[:, 1] = MASK
        out.update(
            aug_images=torch.randn(batch, 3, *HW, generator=g),
            ss_images1=torch.randn(batch, 3, *HW, generator=g),
            ss_images2=torch.randn(batch, 3, *HW, generator=g),
            mlm_input_ids=masked,
            mlm_labels=labels,
        )
    return out
