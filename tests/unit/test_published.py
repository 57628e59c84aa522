"""IRRA's released best.pth as a tbps model folder: a fixture in IRRA's layout (base_model. +
OpenAI names, fp16 linear weights, a position table already at 64x32, configs.yaml with
!!python/tuple), and a similarity equal to a re-implementation of IRRA's test-time score from
the formulas (OpenAI CLIP towers: class token -> ln_post -> proj; end-of-text token at
argmax(ids) -> ln_final -> text_projection; cosine)."""

import math
import os
import re
import sys
import types

import pytest
import torch
import yaml
from torch.nn import functional as F

from tbps.cli import main
from tbps.errors import ConfigError, DataError
from tbps.model.published import convert_published, read_run_args
from tbps.model.tbps import TBPSModel

open_clip = pytest.importorskip("open_clip")

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


def write_irra(folder, state, prefix="base_model.", config=True, extra=None, run_args=None):
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
            **(run_args or {}),
        }
        (folder / "configs.yaml").write_text(yaml.dump(args))  # tuples -> !!python/tuple
    return folder / "best.pth"


def _ln(x, s, name):
    return F.layer_norm(x, x.shape[-1:], s[f"{name}.weight"], s[f"{name}.bias"], 1e-5)


def _block(x, s, b, mask=None, attention=None):
    h = _ln(x, s, b + "ln_1")
    q, k, v = (h @ s[b + "attn.in_proj_weight"].T + s[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
    B, L, _ = x.shape

    def heads(t):
        return t.reshape(B, L, HEADS, WIDTH // HEADS).transpose(1, 2)

    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(WIDTH // HEADS)
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(-1)
    if attention is not None:
        attention.append(probs.mean(dim=1))  # (B, L, L), averaged over heads
    o = (probs @ heads(v)).transpose(1, 2).reshape(B, L, WIDTH)
    x = x + o @ s[b + "attn.out_proj.weight"].T + s[b + "attn.out_proj.bias"]
    h = _ln(x, s, b + "ln_2") @ s[b + "mlp.c_fc.weight"].T + s[b + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ s[b + "mlp.c_proj.weight"].T + s[b + "mlp.c_proj.bias"]


def towers(s, pixels, ids):
    """OpenAI CLIP towers as IRRA/RDE run them: every token after the final LayerNorm and the
    projection, (B, N, EMBED), and the last layer's attention averaged over heads (B, N, N)."""
    s = {k: v.float() for k, v in s.items()}
    x = F.conv2d(pixels, s["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = s["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + s["visual.positional_embedding"]
    image_attention, text_attention = [], []
    x = _block(
        _ln(x, s, "visual.ln_pre"), s, "visual.transformer.resblocks.0.", None, image_attention
    )
    image = _ln(x, s, "visual.ln_post") @ s["visual.proj"]
    t = s["token_embedding.weight"][ids] + s["positional_embedding"]
    causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    t = _block(t, s, "transformer.resblocks.0.", causal, text_attention)
    text = _ln(t, s, "ln_final") @ s["text_projection"]
    return image, image_attention[-1], text, text_attention[-1]


def irra_similarity(s, pixels, ids):
    """IRRA's test-time score from the OpenAI formulas: cosine(text EOT feature, image CLS)."""
    image, _, text, _ = towers(s, pixels, ids)
    text = text[torch.arange(len(ids)), ids.argmax(-1)]
    return F.normalize(text, dim=-1) @ F.normalize(image[:, 0], dim=-1).T


CAPTIONS = [
    "A woman in a red coat carrying a black backpack.",
    "the man wears blue jeans, a white shirt and brown shoes",
    "a young girl with long hair",
]


@pytest.mark.parametrize("prefix", ["base_model.", "module.base_model."])
def test_irra_folder_scores_like_irra(tmp_path, prefix):
    state = openai_state()
    src = write_irra(tmp_path / "irra", state, prefix=prefix)
    convert_published("irra", src, tmp_path / "model")
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
        convert_published("irra", src, tmp_path / "m1")
    convert_published("irra", src, tmp_path / "m2", image_size=SIZE)  # given explicitly
    # a key IRRA has not
    odd = write_irra(tmp_path / "odd", state, extra={"prompt_learner.ctx": torch.zeros(2)})
    with pytest.raises(DataError, match="keys IRRA does not have: prompt_learner.ctx"):
        convert_published("irra", odd, tmp_path / "m3")
    # an OpenAI state dict given as from=irra
    plain = tmp_path / "ViT-B-16.pt"
    torch.save(state, plain)
    assert main(["convert", f"src={plain}", f"out={tmp_path / 'm4'}", "from=irra"]) == 2
    assert "not an IRRA best.pth (no 'model' state dict" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"image size \(64,\): expected \[H, W\]"):
        convert_published("irra", src, tmp_path / "m5", image_size=(64,))
    with pytest.raises(ConfigError, match="not empty"):
        convert_published("irra", src, tmp_path / "m2", image_size=SIZE)


def test_convert_detects_irra_and_the_folder_evaluates_and_indexes(tmp_path, capsys):
    src = write_irra(tmp_path / "irra", openai_state())
    assert main(["convert", f"src={src}", f"out={tmp_path / 'model'}"]) == 0  # from=auto
    assert "IRRA model folder written" in capsys.readouterr().out
    model = TBPSModel.from_pretrained(tmp_path / "model")
    assert model.retrieval_dim == EMBED


# -- RDE ---------------------------------------------------------------------------------------
TSE_DIM = 24
LONG = (
    "a tall man with short black hair wearing a grey jacket over a white shirt, dark blue "
    "jeans with a brown leather belt, white sneakers with red laces, carrying a black bag on "
    "his left shoulder and holding a phone"
)


def rde_branches(seed=0) -> dict[str, torch.Tensor]:
    """Random RDE token-selection branches in its layout: fp16 linear layers, fp32 BatchNorm
    with running statistics; the visual ``linear`` and ``bns.1`` are saved but unused."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    out = {}
    for module, linear in (("visul_emb_layer", "fc"), ("texual_emb_layer", "linear")):
        p = module + "."
        layers = {linear: (TSE_DIM, EMBED), "mlp.layers.0": (TSE_DIM // 2, EMBED)}
        layers["mlp.layers.1"] = (TSE_DIM, TSE_DIM // 2)
        if module == "visul_emb_layer":
            layers["linear"] = (TSE_DIM, EMBED)
        for name, shape in layers.items():
            out[f"{p}{name}.weight"], out[f"{p}{name}.bias"] = r(*shape).half(), r(shape[0]).half()
        for i, n in ((0, TSE_DIM // 2), (1, TSE_DIM)):
            bn = f"{p}mlp.bns.{i}."
            out[bn + "weight"], out[bn + "bias"] = 1 + r(n), r(n)
            out[bn + "running_mean"] = r(n)
            out[bn + "running_var"] = torch.rand(n, generator=g) + 0.5
            out[bn + "num_batches_tracked"] = torch.tensor(1000)
    return out


def rde_similarity(s, branches, pixels, ids, ratio):
    """RDE's "BGE+TSE" test score from its formulas: the mean of the global cosine and the
    token-selection cosine."""
    image, image_attention, text, text_attention = towers(s, pixels, ids)
    b = {k: v.float() for k, v in branches.items()}
    rows = torch.arange(len(ids))

    def branch(x, module, linear):
        p = module + ".mlp."
        x = x / x.norm(dim=-1, keepdim=True)
        h = x @ b[p + "layers.0.weight"].T + b[p + "layers.0.bias"]
        bn = {n: b[p + "bns.0." + n] for n in ("weight", "bias", "running_mean", "running_var")}
        h = (h - bn["running_mean"]) / torch.sqrt(bn["running_var"] + 1e-5)
        h = (h * bn["weight"] + bn["bias"]).clamp(min=0)
        mlp = h @ b[p + "layers.1.weight"].T + b[p + "layers.1.bias"]
        return x @ b[f"{module}.{linear}.weight"].T + b[f"{module}.{linear}.bias"] + mlp

    # image: the class token's attention row, class column at -1, top int(ratio * patches)
    score = image_attention[:, 0].clone()
    score[:, 0] = -1
    top = score.topk(int(ratio * (score.shape[1] - 1)), dim=1).indices
    image_tse = branch(image[torch.arange(len(pixels))[:, None], top], "visul_emb_layer", "fc")
    image_tse = image_tse.max(dim=1).values
    # text: the end-of-text row, start and end columns at -1, padding (id 0) masked
    eot = ids.argmax(-1)
    score = text_attention[rows, eot].clone()
    score[rows, eot] = -1
    score[:, 0] = -1
    score = score * (ids != 0)
    k = int(ratio * (CONTEXT - 2))
    top = score.topk(k, dim=1).indices
    embedded = branch(text[rows[:, None], top], "texual_emb_layer", "linear")
    lengths = (ids != 0).sum(dim=1) - 2
    text_tse = torch.stack(
        [embedded[i, : min(int(lengths[i]), k)].max(dim=0).values for i in range(len(ids))]
    )
    global_cos = F.normalize(text[rows, eot], dim=-1) @ F.normalize(image[:, 0], dim=-1).T
    tse_cos = F.normalize(text_tse, dim=-1) @ F.normalize(image_tse, dim=-1).T
    return (global_cos + tse_cos) / 2


def test_rde_folder_scores_like_rde(tmp_path, capsys):
    state, branches = openai_state(), rde_branches()
    src = write_irra(tmp_path / "rde", state, extra=branches, run_args={"select_ratio": 0.4})
    assert main(["convert", f"src={src}", f"out={tmp_path / 'model'}"]) == 0  # from=auto
    assert "RDE model folder written" in capsys.readouterr().out
    model = TBPSModel.from_pretrained(tmp_path / "model")
    assert model.token_selection_settings == {"ratio": 0.4, "dim": TSE_DIM}
    assert model.retrieval_dim == EMBED + TSE_DIM and model.info["imported"]["method"] == "rde"
    captions = [*CAPTIONS, LONG]
    ids = open_clip.tokenize(captions)
    assert (ids != 0).sum(1).max() - 2 > int(0.4 * 75)  # the long one has more than k words
    pixels = torch.randn(5, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model.encode_texts(**model.tokenize(captions)) @ model.encode_images(pixels).T
    reference = rde_similarity(state, branches, pixels, ids, ratio=0.4)
    assert (ours - reference).abs().max() < 1e-4
    # controls: other branch weights, or IRRA's global-only score, are measurably different
    assert (ours - rde_similarity(state, rde_branches(3), pixels, ids, 0.4)).abs().max() > 1e-2
    assert (ours - irra_similarity(state, pixels, ids)).abs().max() > 1e-2


def test_bad_rde_inputs_are_one_clear_line(tmp_path, capsys):
    state, branches = openai_state(), rde_branches()
    partial = {k: v for k, v in branches.items() if "texual" not in k}
    src = write_irra(tmp_path / "partial", state, extra=partial)
    assert main(["convert", f"src={src}", f"out={tmp_path / 'm1'}", "from=rde"]) == 2
    err = capsys.readouterr().err
    assert "token-selection keys are missing: texual_emb_layer.linear.weight" in err
    irra = write_irra(tmp_path / "irra", state)
    assert main(["convert", f"src={irra}", f"out={tmp_path / 'm2'}", "from=rde"]) == 2
    assert "missing: visul_emb_layer.fc.weight" in capsys.readouterr().err
    rde = write_irra(tmp_path / "rde", state, extra=branches)
    assert main(["convert", f"src={rde}", f"out={tmp_path / 'm3'}", "from=irra"]) == 2
    assert "(an RDE checkpoint: from=rde)" in capsys.readouterr().err
    bad = write_irra(tmp_path / "ratio", state, extra=branches, run_args={"select_ratio": 1.5})
    assert main(["convert", f"src={bad}", f"out={tmp_path / 'm4'}"]) == 2
    assert "select_ratio 1.5 is not a ratio in (0, 1]" in capsys.readouterr().err
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3", "m4"))


# -- TBPS-CLIP ---------------------------------------------------------------------------------
class EasyDict(dict):
    """Pickles like easydict's class: a dict subclass whose items are also attributes."""

    def __init__(self, d=None):
        super().__init__()
        for k, v in (d or {}).items():
            setattr(self, k, v)

    def __setattr__(self, name, value):
        value = EasyDict(value) if isinstance(value, dict) else value
        super().__setattr__(name, value)
        super().__setitem__(name, value)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_tbps_clip(folder, state, monkeypatch, text_length=64, config=None):
    """TBPS-CLIP's checkpoint_best.pth: {model, optimizer, config}; the text tower under
    encode_text., a 64-row (interpolated) text position table, fp32, training heads to drop,
    and an EasyDict config pickled under the module name easydict."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    model = {}
    for key, value in state.items():
        value = value.float()
        if key == "positional_embedding":
            value = value[:text_length]
        model[
            key if key.startswith("visual.") or key == "logit_scale" else "encode_text." + key
        ] = value
    model["simclr_mlp.0.weight"] = torch.randn(8, EMBED, generator=g)
    model["ln_post.weight"] = torch.ones(EMBED)  # the MLM branch's, not visual.ln_post
    module = types.ModuleType("easydict")
    module.EasyDict = EasyDict
    EasyDict.__module__ = "easydict"
    monkeypatch.setitem(sys.modules, "easydict", module)
    if config is None:
        config = EasyDict(
            {
                "experiment": {"input_resolution": list(SIZE), "text_length": text_length},
                "model": {"embed_dim": EMBED, "ckpt_type": "saved"},
                "schedule": {"betas": [0.9, 0.98]},
            }
        )
    optimizer = {
        "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
        "param_groups": [{"lr": 1e-5, "betas": [0.9, 0.98], "ratio": 1.0, "params": [0]}],
    }
    path = folder / "checkpoint_best.pth"
    torch.save({"model": model, "optimizer": optimizer, "config": config}, path)
    return path


def pre_caption(caption):
    """TBPS-CLIP's test-time caption cleaning, from its description."""
    caption = re.sub(r"[.!\"()*#:;~]", " ", caption.lower())
    return re.sub(r"\s{2,}", " ", caption).strip()


def test_tbps_clip_folder_scores_like_tbps_clip(tmp_path, monkeypatch, capsys):
    state = openai_state()
    src = write_tbps_clip(tmp_path / "tbps_clip", state, monkeypatch)
    assert main(["convert", f"src={src}", f"out={tmp_path / 'model'}"]) == 0  # from=auto
    assert "TBPS-CLIP model folder written" in capsys.readouterr().out
    model = TBPSModel.from_pretrained(tmp_path / "model")
    assert model.image_size == SIZE and model.text_length == 64
    assert model.interpolation == "bicubic" and model.temperature is None
    assert model.image_mean == (0.485, 0.456, 0.406) and model.image_std == (0.229, 0.224, 0.225)
    assert model.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)  # its learned scale
    assert model.info["imported"]["dropped"] == ["ln_post", "simclr_mlp"]
    captions = [*CAPTIONS, 'Wearing: a "red" (long) coat; black shoes!']
    ids = open_clip.tokenize([pre_caption(c) for c in captions], context_length=64)
    tokens = model.tokenize(captions)  # the folder's tokenizer cleans captions as TBPS-CLIP does
    assert torch.equal(tokens["input_ids"] * tokens["attention_mask"], ids)
    pixels = torch.randn(4, 3, *SIZE, generator=torch.Generator().manual_seed(3))

    def stored(s):  # the 64-row table the checkpoint holds
        return {**s, "positional_embedding": s["positional_embedding"][:64]}

    with torch.no_grad():
        ours = model.encode_texts(**tokens) @ model.encode_images(pixels).T
    assert (ours - irra_similarity(stored(state), pixels, ids)).abs().max() < 1e-4
    assert (ours - irra_similarity(stored(openai_state(5)), pixels, ids)).abs().max() > 1e-2


def test_bad_tbps_clip_inputs_are_one_clear_line(tmp_path, monkeypatch, capsys):
    state = openai_state()
    marker = tmp_path / "pwned"
    evil = write_tbps_clip(tmp_path / "evil", state, monkeypatch, config=Exploit(marker))
    assert main(["convert", f"src={evil}", f"out={tmp_path / 'm1'}", "from=tbps_clip"]) == 2
    err = capsys.readouterr().err
    assert "refused to unpickle (global posix.system is not on the allow-list)" in err
    assert not marker.exists() and not (tmp_path / "m1").exists()
    # config.text_length says 77, the weights hold a 64-row table
    config = EasyDict({"experiment": {"input_resolution": list(SIZE), "text_length": 77}})
    odd = write_tbps_clip(tmp_path / "odd", state, monkeypatch, config=config)
    assert main(["convert", f"src={odd}", f"out={tmp_path / 'm2'}"]) == 2
    assert "experiment.text_length=77 but the text position table has 64 rows" in (
        capsys.readouterr().err
    )
    # an IRRA file given as from=tbps_clip
    irra = write_irra(tmp_path / "irra", state)
    assert main(["convert", f"src={irra}", f"out={tmp_path / 'm3'}", "from=tbps_clip"]) == 2
    assert "not a TBPS-CLIP checkpoint, keys missing: encode_text.token_embedding" in (
        capsys.readouterr().err
    )
