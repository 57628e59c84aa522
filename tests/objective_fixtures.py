"""Tiny CLIP/SigLIP model specs and hand-built training batches for objective/head tests."""

from __future__ import annotations

import torch

from tiny_backbones import tiny_clip_config, tiny_siglip_config

VOCAB, LENGTH, HW = 60, 12, (32, 16)
PAD, MASK, BOS, EOS = 0, 2, 3, 4


def clip_spec(temperature: float | None = None) -> dict:
    # a vision width unlike the text width, so a mixed-up tower fails loudly
    config = tiny_clip_config(16, LENGTH, VOCAB, vision_width=40, special_ids=(BOS, EOS, PAD))
    return {
        "backbone_type": "clip",
        "backbone_config": config.to_dict(),
        "image_size": list(HW),
        "temperature": temperature,
    }


def siglip_spec() -> dict:
    config = tiny_siglip_config(VOCAB, 16, LENGTH, special_ids=(BOS, EOS, EOS))
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
