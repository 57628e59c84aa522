"""The model folder: save/load, tokenize/preprocess as training did, token selection, light
imports, and clear errors for folders that are not model folders."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from tbps.data.datasets import Collator
from tbps.data.tokenization import train_caption_tokenizer
from tbps.data.transforms import build_image_transforms
from tbps.errors import DataError
from tbps.model.tbps import TBPSModel
from tbps.model.token_selection import fused_embedding
from tiny_backbones import tiny_spec

CAPTIONS = [
    "A Woman in a red coat with a black backpack",
    "a man wearing blue jeans and a white shirt",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(CAPTIONS, vocab_size=200, min_frequency=1)


def tiny_model(tokenizer, tse=True, interpolation="bicubic") -> TBPSModel:
    torch.manual_seed(0)
    spec = tiny_spec(tokenizer, (64, 32))  # the scratch CLIP of test_model.py
    spec["interpolation"] = interpolation
    spec["token_selection"] = {"ratio": 0.5, "dim": 8} if tse else None
    return TBPSModel.from_spec(spec, tokenizer=tokenizer).eval()


def photo(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(90, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def test_folder_round_trip_keeps_everything_retrieval_needs(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["format"] == "tbps-model" and config["image_size"] == [64, 32]
    assert config["interpolation"] == "bicubic" and config["text_length"] == 16
    assert config["token_selection"] == {"ratio": 0.5, "dim": 8}
    assert config["embed_dim"] == 24 + 8 and config["tokenizer"]["vocab_size"] == len(tokenizer)
    assert config["image_mean"] == list(model.image_mean)

    loaded = TBPSModel.from_pretrained(tmp_path)
    assert not loaded.training and loaded.token_selection is not None
    tokens = loaded.tokenize(CAPTIONS[:3])
    pixels = loaded.preprocess([photo(0), photo(1)])
    assert pixels.shape == (2, 3, 64, 32)
    with torch.no_grad():
        texts, images = loaded.encode_texts(**tokens), loaded.encode_images(pixels)
        assert torch.equal(texts, model.encode_texts(**tokens))
        assert torch.equal(images, model.encode_images(pixels))
    assert texts.shape == (3, 32) and torch.allclose(texts.norm(dim=1), torch.ones(3))


def test_tokenize_and_preprocess_are_what_training_used(tokenizer):
    model = tiny_model(tokenizer, tse=False)
    collate = Collator(tokenizer, model.text_length)
    batch = collate([{"caption": c, "pid": 0, "index": i} for i, c in enumerate(CAPTIONS[:2])])
    tokens = model.tokenize(CAPTIONS[:2])
    assert torch.equal(tokens["input_ids"], batch["input_ids"])
    assert torch.equal(tokens["attention_mask"], batch["attention_mask"])
    assert torch.equal(
        model.tokenize(["A WOMAN"])["input_ids"], model.tokenize(["a woman"])["input_ids"]
    )
    _, eval_transform = build_image_transforms(
        "siglip", (64, 32), model.image_mean, model.image_std
    )
    assert torch.equal(model.preprocess(photo(3))[0], eval_transform(photo(3)))
    bilinear = tiny_model(tokenizer, tse=False, interpolation="bilinear")
    assert not torch.equal(bilinear.preprocess(photo(3)), model.preprocess(photo(3)))


def test_token_selection_embedding_is_the_fused_one(tokenizer):
    model = tiny_model(tokenizer)
    tokens = model.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        out, tse = model.token_selection.encode_text(model, **tokens)
        expected = fused_embedding(out.embeds, tse)
        assert torch.equal(model.encode_texts(**tokens), expected)
        plain = torch.nn.functional.normalize(model.text_embeddings(**tokens), dim=-1)
    # [g, t] / sqrt(2): the first part is the unit global embedding, scaled
    assert model.retrieval_dim == 32
    torch.testing.assert_close(expected[:, :24] * 2**0.5, plain)


def test_loading_imports_neither_lightning_nor_hydra(tokenizer, tmp_path):
    tiny_model(tokenizer).save_pretrained(tmp_path)
    code = f"""
import sys, time
import tbps
assert not any(m in sys.modules for m in ("torch", "transformers", "lightning", "hydra")), "import tbps is heavy"
from tbps import TBPSModel
import transformers.models.clip.modeling_clip, peft  # the imports loading needs, timed apart
start = time.perf_counter()
model = TBPSModel.from_pretrained({str(tmp_path)!r})
seconds = time.perf_counter() - start
emb = model.encode_texts(**model.tokenize(["a man in a red coat"]))
import tbps.evaluation.split, tbps.evaluation.encode, tbps.model.export  # evaluation, export
heavy = sorted(m for m in ("lightning", "pytorch_lightning", "hydra", "omegaconf", "tbps.training") if m in sys.modules)
print(heavy, emb.shape[1], round(seconds, 3))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    heavy, width, seconds = out.stdout.strip().rsplit(" ", 2)
    assert heavy == "[]" and width == "32"
    assert float(seconds) < 1.0


def test_bad_folders_fail_with_one_clear_line(tokenizer, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        TBPSModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(DataError, match="has no config.json; expected a tbps model folder"):
        TBPSModel.from_pretrained(tmp_path)
    model = tiny_model(tokenizer)
    folder = model.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "moved.safetensors")
    with pytest.raises(DataError, match="has no model.safetensors"):
        TBPSModel.from_pretrained(folder)
    # weights of another architecture
    tiny_model(tokenizer, tse=False).save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "model.safetensors").rename(folder / "model.safetensors")
    with pytest.raises(DataError, match=r"weights do not fit the model config: \d+ missing"):
        TBPSModel.from_pretrained(folder)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(DataError, match="not a tbps model config.*backbone.path"):
        TBPSModel.from_pretrained(hf)


def test_tokenize_without_tokenizer_says_how(tokenizer):
    model = tiny_model(tokenizer)
    model.tokenizer = None
    with pytest.raises(Exception, match="has no tokenizer"):
        model.tokenize(["a man"])


def test_captions_in_an_unseen_language_are_flagged(tokenizer, caplog):
    from tbps.data.records import ImageRecord
    from tbps.evaluation.split import split_loaders, unknown_token_share

    model = tiny_model(tokenizer, tse=False)
    assert unknown_token_share(model, CAPTIONS[:4]) == 0.0
    vietnamese = ["người phụ nữ mặc áo khoác đỏ", "người đàn ông đeo ba lô đen"]
    assert unknown_token_share(model, vietnamese) > 0.3
    records = [ImageRecord(pid=0, image_path="x.jpg", captions=tuple(vietnamese))]
    with caplog.at_level("WARNING"):
        split_loaders(model, records)
    assert "of the caption tokens are unknown to the model's tokenizer" in caplog.text
