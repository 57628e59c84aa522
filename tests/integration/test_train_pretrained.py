"""`tbps train` / `tbps eval` on tiny pretrained CLIP and SigLIP folders (self-contained ckpts)."""

import logging
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from tbps.app.eval import run_evaluation
from tbps.app.train import run_training
from tbps.cli import compose_config
from tbps.data.tokenization import tokenize
from tbps.model.checkpoint import model_from_checkpoint
from tbps.training.module import TBPSLightningModule
from tiny_backbones import write_tiny_clip, write_tiny_siglip

COMMON = ["debug=tiny", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def _train(tmp_path, folder, *overrides):
    cfg = compose_config(
        "train",
        [
            *COMMON,
            f"backbone.path={folder}",
            f"run_dir={tmp_path / 'run'}",
            f"cache_dir={tmp_path / 'cache'}",
            *overrides,
        ],
    )
    return cfg, run_training(cfg)


def _eval_matches_training(cfg, metrics, tmp_path, folder):
    shutil.rmtree(folder)  # the checkpoint must not need the backbone folder any more
    ckpt = metrics["best_val"]["checkpoint"]
    eval_cfg = compose_config(
        "eval",
        [f"ckpt_path={ckpt}", f"cache_dir={tmp_path / 'cache'}"]
        + [f"data.synth.{k}={v}" for k, v in OmegaConf.to_container(cfg.data.synth).items()],
    )
    evaluated = run_evaluation(eval_cfg)
    best = metrics["test"]["best"]["t2i"]
    assert evaluated["t2i"]["R1"] == pytest.approx(best["R1"], abs=1e-6)
    model = model_from_checkpoint(ckpt)
    return model, model.tokenizer


def test_clip_with_mlm_grows_a_mask_token_and_evaluates_from_the_checkpoint(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tbps")
    folder = write_tiny_clip(tmp_path / "clip", image_size=32)
    cfg, metrics = _train(
        tmp_path, folder, "backbone=clip_tiny", "objectives=irra", "backbone.finetune.mode=clipfit"
    )
    assert "added mask token <|mask|> (id 49408)" in caplog.text
    assert "M trainable (" in caplog.text  # trainable vs total parameters
    model, tok = _eval_matches_training(cfg, metrics, tmp_path, folder)
    assert tok.mask_token_id == 49408 and model.vocab_size == len(tok) == 49409
    assert model.image_size == (64, 32) and model.text_length == 24
    assert model.finetune["mode"] == "clipfit"


def test_siglip_with_lora_round_trips_through_the_checkpoint(tmp_path, monkeypatch):
    tested = []  # the trained module, holding the best weights its last test loaded
    on_test_end = TBPSLightningModule.on_test_end

    def keep_module(module):
        on_test_end(module)
        tested.append(module)

    monkeypatch.setattr(TBPSLightningModule, "on_test_end", keep_module)
    folder = write_tiny_siglip(tmp_path / "siglip")
    cfg, metrics = _train(tmp_path, folder, "backbone=siglip_tiny", "backbone.finetune.mode=lora")
    spm_bytes = (folder / "spiece.model").read_bytes()
    model, tok = _eval_matches_training(cfg, metrics, tmp_path, folder)
    # the model read back from best.ckpt embeds exactly as the trained one did
    trained = tested[-1].model.eval()
    model.eval()
    images = torch.randn(3, 3, *model.image_size, generator=torch.Generator().manual_seed(0))
    ids = tokenize(tok, ["a woman in a red coat", "a man with a black backpack"], model.text_length)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(images), trained.encode_images(images))
        torch.testing.assert_close(model.encode_texts(**ids), trained.encode_texts(**ids))
    trained_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert trained_b and any(p.abs().sum() > 0 for p in trained_b)  # the adapters trained
    assert model.is_sigmoid and model.finetune["mode"] == "lora" and not model.text_attention_mask
    assert any(".lora_A." in k for k in model.state_dict())
    assert type(tok).__name__ == "SiglipTokenizer"
    assert tok.sp_model.serialized_model_proto() == spm_bytes
    ids = tokenize(tok, ["a woman in a red coat"], model.text_length)
    assert model.encode_texts(**ids).shape == (1, 32)
    assert torch.isfinite(model.logit_bias())
