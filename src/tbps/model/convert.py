"""Convert OpenAI CLIP and open_clip checkpoints to a Hugging Face CLIP folder."""

from __future__ import annotations

import gzip
import logging
import os
import re
import zipfile
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from tbps.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# buffers of OpenAI's TorchScript archive / older open_clip files that carry no weights
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE_MERGES = 49152 - 256 - 2  # merges of the 49,408-token CLIP vocabulary
START, END = "<|startoftext|>", "<|endoftext|>"
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_MAP = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with compiled ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            "/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist()
        )


def load_converted_weights(
    model: CLIPModel, weights: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Load renamed weights into ``model`` strictly, as float32; a missing or unexpected key,
    or a shape that differs, is one line naming it."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise DataError(f"{source}: no weights for {missing[0]!r} ({len(missing)} missing)")
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise DataError(f"{source}: {unexpected[0]!r} has no place in the CLIP model")
    for key, value in weights.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise DataError(
                f"{source}: {key!r} has shape {tuple(value.shape)}, expected "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)


def load_source_state_dict(
    path: str | os.PathLike, allow_torchscript: bool = False
) -> dict[str, torch.Tensor]:
    """The tensors of an OpenAI / open_clip checkpoint, with OpenAI's key names.

    Plain files are read with ``torch.load(weights_only=True)``; a TorchScript archive (the
    OpenAI ``ViT-B-16.pt``) only through ``torch.jit.load`` and only when allowed. A
    ``{"state_dict": ...}`` wrapper and a DistributedDataParallel ``module.`` prefix are removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    if is_torchscript(path):
        if not allow_torchscript:
            raise DataError(
                f"{path} is a TorchScript archive; reading it runs torch.jit.load: pass "
                "allow_torchscript=true if you trust the file"
            )
        log.info("reading TorchScript archive %s with torch.jit.load", path)
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several types for bad files
            raise DataError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise DataError(f"{path} holds no state dict")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(f"{path}: entry {bad[0]!r} is not a tensor; expected a CLIP state dict")
    return {k: v for k, v in state.items() if k not in NON_WEIGHT_KEYS}


def _need(state: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise DataError(f"{source}: key {key!r} is missing; expected an OpenAI/open_clip CLIP")
    return state[key]


def _num_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def clip_config_from_openai(
    state: dict[str, torch.Tensor],
    hidden_act: str = "quick_gelu",
    vision_heads: int | None = None,
    text_heads: int | None = None,
    source: str = "checkpoint",
    grid: tuple[int, int] | None = None,
) -> CLIPConfig:
    """The CLIPConfig of an OpenAI-layout state dict (shapes read from the tensors).

    Head counts are not stored in the weights: OpenAI's rule width/64 is the default. A
    non-square position table (already resized to a (rows, cols) ``grid``, as IRRA stores
    it) is checked against ``grid``; the config then says a square image of ``rows`` patches
    per side, and the caller sets the real size (:func:`tbps.model.backbone.set_image_size`).
    """
    conv = _need(state, "visual.conv1.weight", source)
    vision_width, patch = conv.shape[0], conv.shape[-1]
    positions = _need(state, "visual.positional_embedding", source).shape[0] - 1
    side = int(round(positions**0.5)) if grid is None else grid[0]
    if grid is not None and grid[0] * grid[1] != positions:
        raise DataError(
            f"{source}: {positions} vision positions, but a {grid[0]}x{grid[1]} patch grid "
            f"has {grid[0] * grid[1]}"
        )
    if grid is None and side * side != positions:
        raise DataError(f"{source}: {positions} vision positions do not form a square grid")
    text_width = _need(state, "ln_final.weight", source).shape[0]
    vocab, width = _need(state, "token_embedding.weight", source).shape
    embed_dim = _need(state, "visual.proj", source).shape[1]
    text_proj = state.get("text_projection")
    if text_proj is None:
        raise DataError(f"{source}: key 'text_projection' is missing (a (width, dim) matrix)")
    if text_proj.shape != (text_width, embed_dim):
        raise DataError(
            f"{source}: text_projection has shape {tuple(text_proj.shape)}, expected "
            f"({text_width}, {embed_dim}) (a bias-free linear text projection)"
        )
    widths = {"vision": vision_width, "text": text_width}
    heads = {"vision": vision_heads, "text": text_heads}
    for name, width in widths.items():
        value = heads[name] = width // 64 if heads[name] is None else int(heads[name])
        if value < 1 or width % value:
            raise ConfigError(
                f"{name}_heads={value} does not divide the {name} width {width}; pass "
                f"{name}_heads=N (head counts are not stored in the weights)"
            )
    for name, prefix in (("vision", "visual."), ("text", "")):
        if _num_layers(state, prefix) == 0:
            raise DataError(
                f"{source}: no {name} transformer blocks ({prefix}transformer.resblocks.N)"
            )
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=_need(state, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[
                0
            ],
            num_hidden_layers=_num_layers(state, ""),
            num_attention_heads=heads["text"],
            max_position_embeddings=_need(state, "positional_embedding", source).shape[0],
            hidden_act=hidden_act,
            layer_norm_eps=1e-5,
            projection_dim=embed_dim,
            bos_token_id=vocab - 2,  # CLIP's vocabulary ends with <|startoftext|>, <|endoftext|>
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=_need(
                state, "visual.transformer.resblocks.0.mlp.c_fc.weight", source
            ).shape[0],
            num_hidden_layers=_num_layers(state, "visual."),
            num_attention_heads=heads["vision"],
            image_size=side * patch,
            patch_size=patch,
            hidden_act=hidden_act,
            layer_norm_eps=1e-5,
            projection_dim=embed_dim,
        ),
        projection_dim=embed_dim,
    )


def openai_to_hf_state_dict(
    state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename (and split/transpose where the layouts differ) OpenAI CLIP keys to HF CLIPModel's.

    Fused attention ``in_proj`` (3W, W) splits into q, k, v; projections stored as
    ``x @ P`` become ``nn.Linear`` weights ``P^T``.
    """
    direct = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in direct:
            out[direct[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif match := _BLOCK.match(key):
            visual, index, rest = match.groups()
            prefix = f"{'vision' if visual else 'text'}_model.encoder.layers.{index}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            module, _, param = rest.rpartition(".")
            if module not in _BLOCK_MAP:
                raise DataError(f"{source}: unsupported key {key!r} (not an OpenAI CLIP block)")
            out[f"{prefix}{_BLOCK_MAP[module]}.{param}"] = value
        else:
            raise DataError(
                f"{source}: unsupported key {key!r}; only OpenAI-layout CLIP (ViT) weights convert"
            )
    if "logit_scale" in out:
        out["logit_scale"] = out["logit_scale"].reshape(())
    return out


def _byte_alphabet() -> list[str]:
    """The 256 single-character symbols byte-level BPE uses, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves; the other bytes map, in order, to the
    characters 256, 257, ...
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def clip_bpe_tokenizer(bpe_path: str | os.PathLike) -> CLIPTokenizer:
    """CLIP's tokenizer (49,408 tokens) from the ``bpe_simple_vocab_16e6.txt.gz`` merges file.

    Vocabulary: the 256 byte symbols, the same with the end-of-word mark ``</w>``, one token
    per merge (in order), then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    """
    try:
        with gzip.open(bpe_path, "rt", encoding="utf-8") as file:
            lines = file.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the CLIP BPE merges file {bpe_path}: {e}") from e
    merges = [tuple(line.split()) for line in lines[1 : CLIP_BPE_MERGES + 1]]
    if len(merges) != CLIP_BPE_MERGES or any(len(m) != 2 for m in merges):
        raise DataError(f"{bpe_path} is not CLIP's BPE merges file ({CLIP_BPE_FILE})")
    alphabet = _byte_alphabet()
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges), START, END]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def default_bpe_path() -> Path:
    """CLIP's merges file shipped with tbps (MIT-licensed, ``tbps/model/assets``)."""
    return Path(__file__).parent / "assets" / CLIP_BPE_FILE


def convert_clip_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    hidden_act: str = "quick_gelu",
    vision_heads: int | None = None,
    text_heads: int | None = None,
    bpe_path: str | os.PathLike | None = None,
    allow_torchscript: bool = False,
) -> Path:
    """Write an HF CLIP folder (config.json, model.safetensors, tokenizer) for ``src``.

    ``hidden_act``: OpenAI CLIP and open_clip's ``-quickgelu`` models use ``quick_gelu``;
    other open_clip models use ``gelu``. The tokenizer is written when the vocabulary is
    CLIP's (49,408) and the merges file is found (``bpe_path`` or an installed open_clip).
    """
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} exists and is not empty; choose another out")
    if hidden_act not in ("quick_gelu", "gelu"):
        raise ConfigError(f"hidden_act must be quick_gelu or gelu, got {hidden_act!r}")
    source = str(src)
    state = load_source_state_dict(src, allow_torchscript)
    if "logit_bias" in state:
        raise DataError(f"{source} has a logit_bias (a SigLIP-style model); only CLIP converts")
    config = clip_config_from_openai(state, hidden_act, vision_heads, text_heads, source)
    model = CLIPModel(config)
    load_converted_weights(model, openai_to_hf_state_dict(state, source), source)
    model.save_pretrained(out)
    vocab = config.text_config.vocab_size
    bpe = Path(bpe_path).expanduser() if bpe_path else default_bpe_path()
    if vocab == CLIP_BPE_MERGES + 2 * 256 + 2:
        clip_bpe_tokenizer(bpe).save_pretrained(out)
        log.info("wrote CLIP's BPE tokenizer from %s", bpe)
    else:
        log.warning(
            "no tokenizer written to %s (vocabulary %d is not CLIP's): add the model's "
            "tokenizer files before using the folder as backbone.path",
            out,
            vocab,
        )
    log.info(
        "converted %s -> %s (vision %dx%d/%d, %d+%d layers)",
        source,
        out,
        config.vision_config.image_size,
        config.vision_config.image_size,
        config.vision_config.patch_size,
        config.vision_config.num_hidden_layers,
        config.text_config.num_hidden_layers,
    )
    return out
