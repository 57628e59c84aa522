"""`tbps convert`: OpenAI / open_clip CLIP checkpoints -> HF folder, parity with open_clip."""

import json

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from transformers import AutoTokenizer, CLIPModel

from tbps.cli import main
from tbps.data.tokenization import tokenize
from tbps.errors import ConfigError, DataError
from tbps.model.convert import convert_clip_checkpoint, is_torchscript, load_source_state_dict
from tbps.model.factory import pretrained_model
from tiny_backbones import CAPTIONS

LENGTH = 16


def open_clip_model(quick_gelu: bool = True, seed: int = 0) -> CLIP:
    """A tiny random open_clip CLIP (2 heads per tower), every parameter perturbed."""
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=24,
        vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=48),
        text_cfg=CLIPTextCfg(context_length=LENGTH, vocab_size=49408, width=32, heads=2, layers=2),
        quick_gelu=quick_gelu,
    )
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def assert_parity(source: CLIP, folder) -> None:
    hf = CLIPModel.from_pretrained(folder).eval()
    images = torch.randn(3, 3, 48, 48)
    ids = open_clip.tokenize(CAPTIONS[:4], context_length=LENGTH)
    with torch.no_grad():
        img_diff = (
            source.encode_image(images) - hf.get_image_features(pixel_values=images).pooler_output
        )
        txt_diff = source.encode_text(ids) - hf.get_text_features(input_ids=ids).pooler_output
    assert img_diff.abs().max() <= 1e-4 and txt_diff.abs().max() <= 1e-4


@pytest.fixture(scope="module")
def source():
    return open_clip_model()


def test_open_clip_state_dict_converts_with_the_same_embeddings(source, tmp_path):
    src = tmp_path / "open_clip.pt"
    torch.save(source.state_dict(), src)
    out = convert_clip_checkpoint(src, tmp_path / "hf", vision_heads=2, text_heads=2)
    assert_parity(source, out)
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["image_size"] == 48
    assert config["text_config"]["eos_token_id"] == 49407
    # the written tokenizer gives open_clip's ids (open_clip pads with 0, HF with end-of-text)
    tok = AutoTokenizer.from_pretrained(out)
    ours = tokenize(tok, CAPTIONS[:5], LENGTH)
    ref = open_clip.tokenize(CAPTIONS[:5], context_length=LENGTH)
    real = ours["attention_mask"].bool()
    assert torch.equal(ours["input_ids"][real], ref[real]) and (ref[~real] == 0).all()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_openai_torchscript_archive(source, tmp_path):
    traced_model = open_clip_model()
    # OpenAI's archive carries buffers such as this one next to the weights
    traced_model.register_buffer("input_resolution", torch.tensor(48))
    ids = open_clip.tokenize(CAPTIONS[:1], context_length=LENGTH)
    archive = torch.jit.trace(traced_model, (torch.randn(1, 3, 48, 48), ids), check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    archive.save(str(path))
    assert is_torchscript(path)
    with pytest.raises(DataError, match="is a TorchScript archive; reading it runs torch.jit.load"):
        load_source_state_dict(path)
    out = convert_clip_checkpoint(
        path, tmp_path / "hf", vision_heads=2, text_heads=2, allow_torchscript=True
    )
    assert_parity(traced_model, out)


def test_gelu_model_in_a_wrapped_ddp_state_dict(tmp_path):
    model = open_clip_model(quick_gelu=False, seed=1)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    src = tmp_path / "epoch_3.pt"
    torch.save(wrapped, src)
    out = convert_clip_checkpoint(src, tmp_path / "hf", "gelu", vision_heads=2, text_heads=2)
    assert_parity(model, out)
    wrong = convert_clip_checkpoint(src, tmp_path / "hf-q", vision_heads=2, text_heads=2)
    with pytest.raises(AssertionError):
        assert_parity(model, wrong)  # the activation is not in the weights: it must be told


def test_cli_convert_then_train_loader_uses_the_folder(source, tmp_path, capsys):
    src = tmp_path / "oc.bin"
    torch.save(source.state_dict(), src)
    out = tmp_path / "hf"
    code = main(["convert", f"src={src}", f"out={out}", "vision_heads=2", "text_heads=2"])
    assert code == 0, capsys.readouterr().err
    assert f"written to {out}" in capsys.readouterr().out
    model, tok = pretrained_model(out, "clip", (96, 48), text_length=LENGTH)
    assert model.image_size == (96, 48) and len(tok) == model.vocab_size
    # an existing, non-empty output folder is refused
    assert main(["convert", f"src={src}", f"out={out}"]) == 2
    assert f"output folder {out} exists and is not empty" in capsys.readouterr().err


def test_bad_checkpoints(source, tmp_path):
    state = dict(source.state_dict())
    state["visual.attnpool.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(DataError, match="unsupported key 'visual.attnpool.weight'"):
        convert_clip_checkpoint(tmp_path / "extra.pt", tmp_path / "a", vision_heads=2, text_heads=2)
    state = {k: v for k, v in source.state_dict().items() if k != "ln_final.weight"}
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(DataError, match="partial.pt: key 'ln_final.weight' is missing"):
        convert_clip_checkpoint(tmp_path / "partial.pt", tmp_path / "b")
    torch.save(source.state_dict(), tmp_path / "ok.pt")
    with pytest.raises(ConfigError, match="vision_heads=0 does not divide the vision width 64"):
        convert_clip_checkpoint(tmp_path / "ok.pt", tmp_path / "c", vision_heads=0, text_heads=2)
    with pytest.raises(DataError, match="checkpoint not found"):
        convert_clip_checkpoint(tmp_path / "nope.pt", tmp_path / "d")
