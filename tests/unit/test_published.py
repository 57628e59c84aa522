"""IRRA's released best.pth as a tbps model folder: a fixture in IRRA's layout (base_model. +
OpenAI names, fp16 linear weights, a position table already at 64x32, configs.yaml with
!!python/tuple), and a similarity equal to a re-implementation of IRRA's test-time score from
the formulas (OpenAI CLIP towers: class token -> ln_post -> proj; end-of-text token at
argmax(ids) -> ln_final -> text_projection; cosine)."""

import math

import pytest
import torch
import yaml
from torch.nn import functional as F

from tbps.cli import main
from tbps.errors import ConfigError, DataError
from tbps.model.convert import default_bpe_path
from tbps.model.published import convert_irra, read_run_args
from tbps.model.tbps import TBPSModel

open_clip = pytest.importorskip("open_clip")
if default_bpe_path() is None:
    pytest.skip("CLIP's BPE merges file (shipped by open_clip) is needed", allow_module_level=True)

WIDTH, HEADS, EMBED, PATCH, SIZE = 128, 2, 48, 16, (64, 32)
VOCAB, CONTEXT = 49408, 77
LINEAR = ("conv1.weight", "in_proj", "out_proj", "c_fc", "c_proj", "proj", "text_projection")


def openai_state(seed=0) -> dict[str, torch.Tensor]:
    """Random OpenAI-layout CLIP tensors: 1 layer per tower, a 4x2 patch grid + class row."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    s = {
        "visual.conv1.weight": r(WIDTH, 3, PATCH, PATCH),
        "visual.class_embedding": r(WIDTH),
        "visual.positional_embedding": r(SIZE[0] // PATCH * SIZE[1] // PATCH + 1, WIDTH),
        "visual.proj": r(WIDTH, EMBED),
        "token_embedding.weight": r(VOCAB, WIDTH),
        "positional_embedding": r(CONTEXT, WIDTH),
        "text_projection": r(WIDTH, EMBED),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    for ln in ("visual.ln_pre", "visual.ln_post", "ln_final"):
        s[f"{ln}.weight"], s[f"{ln}.bias"] = 1 + r(WIDTH), r(WIDTH)
    for tower in ("visual.transformer", "transformer"):
        b = f"{tower}.resblocks.0."
        s[b + "attn.in_proj_weight"], s[b + "attn.in_proj_bias"] = r(3 * WIDTH, WIDTH), r(3 * WIDTH)
        s[b + "attn.out_proj.weight"], s[b + "attn.out_proj.bias"] = r(WIDTH, WIDTH), r(WIDTH)
        s[b + "mlp.c_fc.weight"], s[b + "mlp.c_fc.bias"] = r(4 * WIDTH, WIDTH), r(4 * WIDTH)
        s[b + "mlp.c_proj.weight"], s[b + "mlp.c_proj.bias"] = r(WIDTH, 4 * WIDTH), r(WIDTH)
        for ln in ("ln_1", "ln_2"):
            s[b + f"{ln}.weight"], s[b + f"{ln}.bias"] = 1 + r(WIDTH), r(WIDTH)
    # IRRA's dtypes: linear, conv, attention and projection weights in fp16, the rest fp32
    return {k: v.half() if any(n in k for n in LINEAR) else v for k, v in s.items()}


def write_irra(folder, state, prefix="base_model.", config=True, extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    model = {prefix + k: v for k, v in state.items()}
    model["classifier.weight"] = torch.randn(11, EMBED).half()  # training heads, dropped
    model["cross_attn.in_proj_weight"] = torch.randn(3 * EMBED, EMBED).half()
    model["mlm_head.dense.weight"] = torch.randn(EMBED, EMBED).half()
    model.update(extra or {})
    torch.save(
        {
            "model": model,
            "optimizer": {},
            "scheduler": {},
            "num_epoch": 60,
            "iteration": 1,
            "epoch": 60,
        },
        folder / "best.pth",
    )
    if config:
        args = {
            "img_size": SIZE,
            "stride_size": PATCH,
            "temperature": 0.02,
            "loss_names": "sdm+mlm+id",
        }
        (folder / "configs.yaml").write_text(yaml.dump(args))  # tuples -> !!python/tuple
    return folder / "best.pth"


def _ln(x, s, name):
    return F.layer_norm(x, x.shape[-1:], s[f"{name}.weight"], s[f"{name}.bias"], 1e-5)


def _block(x, s, b, mask=None):
    h = _ln(x, s, b + "ln_1")
    q, k, v = (h @ s[b + "attn.in_proj_weight"].T + s[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
    B, L, _ = x.shape

    def heads(t):
        return t.reshape(B, L, HEADS, WIDTH // HEADS).transpose(1, 2)

    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(WIDTH // HEADS)
    if mask is not None:
        scores = scores + mask
    o = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(B, L, WIDTH)
    x = x + o @ s[b + "attn.out_proj.weight"].T + s[b + "attn.out_proj.bias"]
    h = _ln(x, s, b + "ln_2") @ s[b + "mlp.c_fc.weight"].T + s[b + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ s[b + "mlp.c_proj.weight"].T + s[b + "mlp.c_proj.bias"]


def irra_similarity(s, pixels, ids):
    """IRRA's test-time score from the OpenAI formulas: cosine(text EOT feature, image CLS)."""
    s = {k: v.float() for k, v in s.items()}
    x = F.conv2d(pixels, s["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = s["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + s["visual.positional_embedding"]
    x = _block(_ln(x, s, "visual.ln_pre"), s, "visual.transformer.resblocks.0.")
    image = _ln(x[:, 0], s, "visual.ln_post") @ s["visual.proj"]
    t = s["token_embedding.weight"][ids] + s["positional_embedding"]
    causal = torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1)
    t = _ln(_block(t, s, "transformer.resblocks.0.", causal), s, "ln_final")
    text = t[torch.arange(len(ids)), ids.argmax(-1)] @ s["text_projection"]
    return F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T


CAPTIONS = [
    "A woman in a red coat carrying a black backpack.",
    "the man wears blue jeans, a white shirt and brown shoes",
    "a young girl with long hair",
]


@pytest.mark.parametrize("prefix", ["base_model.", "module.base_model."])
def test_irra_folder_scores_like_irra(tmp_path, prefix):
    state = openai_state()
    src = write_irra(tmp_path / "irra", state, prefix=prefix)
    convert_irra(src, tmp_path / "model")
    model = TBPSModel.from_pretrained(tmp_path / "model")
    assert (
        model.image_size == SIZE and model.temperature == 0.02 and model.interpolation == "bilinear"
    )
    assert model.info["imported"]["dropped"] == ["classifier", "cross_attn", "mlm_head"]
    pixels = torch.randn(4, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    ids = open_clip.tokenize(CAPTIONS)  # CLIP's own tokenizer: <sot> ... <eot>, zero padding
    tokens = model.tokenize(CAPTIONS)
    n = (ids != 0).sum(1)
    for row in range(len(CAPTIONS)):  # the folder's tokenizer gives CLIP's ids
        assert torch.equal(tokens["input_ids"][row, : n[row]], ids[row, : n[row]])
    assert tokens["input_ids"][0, 0] == 49406 and 49407 in tokens["input_ids"][0]
    with torch.no_grad():
        ours = model.encode_texts(**tokens) @ model.encode_images(pixels).T
    reference = irra_similarity(state, pixels, ids)
    assert (ours - reference).abs().max() < 1e-4
    assert (ours - irra_similarity(openai_state(seed=5), pixels, ids)).abs().max() > 1e-2  # control
    assert model.logit_scale().item() == pytest.approx(50.0)


def test_run_args_read_tuples_and_never_execute(tmp_path):
    path = tmp_path / "configs.yaml"
    path.write_text(yaml.dump({"img_size": (384, 128), "lr": 1e-5}))
    assert "!!python/tuple" in path.read_text()
    assert read_run_args(path) == {"img_size": (384, 128), "lr": 1e-5}
    marker = tmp_path / "pwned"
    path.write_text(f"x: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(DataError, match="not plain run arguments .* nothing was executed"):
        read_run_args(path)
    assert not marker.exists()


def test_bad_irra_inputs_are_one_clear_line(tmp_path, capsys):
    state = openai_state()
    # no configs.yaml: the 384x128 default does not fit the 4x2 table, and says how to fix it
    src = write_irra(tmp_path / "noconfig", state, config=False)
    with pytest.raises(
        DataError, match=r"9 rows, a 384x128 image at patch 16 needs 193; pass image_size"
    ):
        convert_irra(src, tmp_path / "m1")
    convert_irra(src, tmp_path / "m2", image_size=SIZE)  # given explicitly
    # a key IRRA has not
    odd = write_irra(tmp_path / "odd", state, extra={"prompt_learner.ctx": torch.zeros(2)})
    with pytest.raises(DataError, match="keys IRRA does not have: prompt_learner.ctx"):
        convert_irra(odd, tmp_path / "m3")
    # an OpenAI state dict given as from=irra
    plain = tmp_path / "ViT-B-16.pt"
    torch.save(state, plain)
    assert main(["convert", f"src={plain}", f"out={tmp_path / 'm4'}", "from=irra"]) == 2
    assert "not an IRRA best.pth (no 'model' state dict" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not empty"):
        convert_irra(src, tmp_path / "m2", image_size=SIZE)


def test_convert_detects_irra_and_the_folder_evaluates_and_indexes(tmp_path, capsys):
    src = write_irra(tmp_path / "irra", openai_state())
    assert main(["convert", f"src={src}", f"out={tmp_path / 'model'}"]) == 0  # from=auto
    assert "IRRA model folder written" in capsys.readouterr().out
    model = TBPSModel.from_pretrained(tmp_path / "model")
    assert model.retrieval_dim == EMBED
