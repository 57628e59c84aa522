"""Published models of other methods as tbps model folders: IRRA's and RDE's ``best.pth``.

IRRA's and RDE's files are ``{"model", "optimizer", "scheduler", "num_epoch", "iteration",
"epoch"}``; backbone keys are ``base_model.`` + OpenAI CLIP names (``module.`` may lead), linear
weights in fp16 and the rest in fp32; the visual position table is stored already resized to
the training image size. The temperature, the image size and RDE's ``select_ratio`` are only in
the ``configs.yaml`` written beside it (a ``yaml.dump`` of argparse arguments, tuples tagged
``!!python/tuple``). RDE adds its token-selection branches ``visul_emb_layer`` (``fc``, an
unused ``linear``, ``mlp``) and ``texual_emb_layer`` (``linear``, ``mlp``); ``mlp`` is
``layers.0`` -> ``bns.0`` -> ReLU -> ``layers.1`` (``bns.1`` unused).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import CLIPModel, PreTrainedTokenizerBase

from tbps.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from tbps.errors import ConfigError, DataError
from tbps.model.backbone import set_image_size
from tbps.model.convert import (
    clip_bpe_tokenizer,
    clip_config_from_openai,
    default_bpe_path,
    load_converted_weights,
    openai_to_hf_state_dict,
)
from tbps.model.pretrained import load_state_strictly
from tbps.model.restricted_pickle import load_restricted
from tbps.model.tbps import TBPSModel

log = logging.getLogger(__name__)

METHODS = ("irra", "rde", "tbps_clip")
NAMES = {"irra": "IRRA", "rde": "RDE", "tbps_clip": "TBPS-CLIP"}
RUN_CONFIG = "configs.yaml"
#: IRRA's and RDE's training-only modules, dropped on import (their size depends on the dataset)
TRAINING_HEADS = (
    "classifier",
    "cross_attn",
    "cross_modal_transformer",
    "ln_pre_t",
    "ln_pre_i",
    "ln_post",
    "mlm_head",
)
#: RDE's token-selection branches: module -> (tbps branch, the module that is its linear part)
RDE_BRANCHES = {"visul_emb_layer": ("image", "fc"), "texual_emb_layer": ("text", "linear")}
#: RDE tensors tbps maps (per branch, beside the linear part); the rest is saved but unused
RDE_MLP = {
    "mlp.layers.0.": "mlp.fc1.",
    "mlp.bns.0.": "mlp.bn.",
    "mlp.layers.1.": "mlp.fc2.",
}
RDE_UNUSED_MODULE = "visul_emb_layer.linear."  # saved by RDE, never used at test time
RDE_UNUSED_BRANCH_PART = "mlp.bns.1."  # in either branch
DEFAULTS = {"img_size": (384, 128), "stride_size": 16, "temperature": 0.02}
RDE_DEFAULTS = {**DEFAULTS, "select_ratio": 0.3}
POSITIONS = "visual.positional_embedding"
#: TBPS-CLIP: its text tower's prefix, its training-only modules (``ln_post`` at the top level
#: is the MLM branch's; the image tower's is ``visual.ln_post``) and its test-time caption
#: cleaning (these characters become spaces before tokenizing)
TBPS_CLIP_TEXT = "encode_text."
TBPS_CLIP_HEADS = (
    "simclr_mlp",
    "classifier",
    "cross_attn",
    "cross_modal_transformer",
    "ln_pre_t",
    "ln_pre_i",
    "mlm_head",
    "ln_post",
)
TBPS_CLIP_STRIPPED = '.!"()*#:;~'
TBPS_CLIP_DEFAULTS = {"input_resolution": [224, 224], "text_length": 77}


@dataclass
class MethodCheckpoint:
    """The tensors of a method's ``best.pth``, float32: the OpenAI-layout backbone, the
    modules tbps keeps beside it (RDE's branches), and the names of the dropped heads."""

    backbone: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor]
    dropped: list[str]


class _RunArgsLoader(yaml.SafeLoader):
    """Safe YAML plus ``!!python/tuple`` (as a tuple); every other Python tag is refused."""


_RunArgsLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple",
    lambda loader, node: tuple(loader.construct_sequence(node)),
)


def read_run_args(path: str | os.PathLike) -> dict[str, Any]:
    """The arguments a method saved beside its checkpoint (``configs.yaml``), read without
    executing anything."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RunArgsLoader)  # noqa: S506
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    except yaml.YAMLError as e:
        reason = str(e).splitlines()[0]
        raise DataError(f"{path}: not plain run arguments ({reason}); nothing was executed") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping of run arguments")
    return data


def _first(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def read_method_checkpoint(path: str | os.PathLike, method: str = "irra") -> MethodCheckpoint:
    """The tensors of an IRRA or RDE ``best.pth`` (weights-only loading: nothing executed),
    checked against what ``method`` stores."""
    path = Path(path).expanduser()
    name = NAMES[method]
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad files
        raise DataError(f"cannot read {path} as plain tensors (nothing executed): {e}") from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise DataError(f"{path}: not an {name} best.pth (no 'model' state dict; found {keys})")
    state = {str(k).removeprefix("module."): v for k, v in checkpoint["model"].items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(f"{path}: entry {bad[0]} is not a tensor")
    backbone = {
        k.removeprefix("base_model."): v.float()
        for k, v in state.items()
        if k.startswith("base_model.")
    }
    others = sorted(k for k in state if not k.startswith("base_model."))
    if not backbone:
        raise DataError(
            f"{path}: no base_model.* keys, so not an {name} checkpoint; its keys start with "
            f"{_first(others)}"
        )
    kept = tuple(RDE_BRANCHES) if method == "rde" else ()
    heads = {k: state[k].float() for k in others if k.split(".")[0] in kept}
    unknown = [k for k in others if k.split(".")[0] not in (*TRAINING_HEADS, *kept)]
    if unknown:
        hint = (
            " (an RDE checkpoint: from=rde)"
            if method == "irra" and _has_rde_branches(others)
            else ""
        )
        raise DataError(f"{path}: keys {name} does not have: {_first(unknown)}{hint}")
    if method == "rde":
        missing = [k for k in _rde_head_keys() if k not in heads]
        if missing:
            raise DataError(
                f"{path}: not an RDE checkpoint, its token-selection keys are missing: "
                f"{_first(missing)}"
            )
    dropped = [k for k in others if k not in heads]
    return MethodCheckpoint(backbone, heads, dropped)


def _has_rde_branches(keys) -> bool:
    return any(k.split(".")[0] in RDE_BRANCHES for k in keys)


def _rde_head_keys() -> list[str]:
    keys = []
    for module, (_, linear) in RDE_BRANCHES.items():
        keys += [f"{module}.{linear}.weight", f"{module}.{linear}.bias"]
        for source in RDE_MLP:
            params = ("weight", "bias")
            if source.startswith("mlp.bns"):
                params += ("running_mean", "running_var")
            keys += [f"{module}.{source}{p}" for p in params]
    return keys


def rde_token_selection_state(heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RDE's branch tensors under tbps's ``token_selection.*`` names (unused ones left out)."""
    out = {}
    for key, value in heads.items():
        module, rest = key.split(".", 1)
        branch, linear = RDE_BRANCHES[module]
        if key.startswith(RDE_UNUSED_MODULE) or rest.startswith(RDE_UNUSED_BRANCH_PART):
            continue
        if rest.startswith(linear + "."):
            rest = "linear." + rest[len(linear) + 1 :]
        for source, target in RDE_MLP.items():
            if rest.startswith(source):
                rest = target + rest[len(source) :]
        if rest.endswith("num_batches_tracked"):
            value = value.long()
        out[f"token_selection.{branch}.{rest}"] = value
    return out


def detect_method(path: str | os.PathLike) -> str | None:
    """``"rde"`` or ``"irra"`` for a ``{"model": {"base_model.…": …}}`` checkpoint (RDE: with
    its token-selection branches), ``"tbps_clip"`` for ``{"model": {"encode_text.…": …}}``,
    else None (e.g. an OpenAI or open_clip file). Reads lazily (memory-mapped), executes
    nothing."""
    path = Path(path).expanduser()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - e.g. TBPS-CLIP's pickled EasyDict config
        try:
            checkpoint = load_restricted(path, mmap=True)
        except DataError:  # not a checkpoint of ours to detect
            return None
    model = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(model, dict):
        return None
    keys = [str(k).removeprefix("module.") for k in model]
    if any(k.startswith("base_model.") for k in keys):
        return "rde" if _has_rde_branches(keys) else "irra"
    if any(k.startswith(TBPS_CLIP_TEXT) for k in keys):
        return "tbps_clip"
    return None


def _run_settings(src: Path, method: str, image_size) -> dict[str, Any]:
    """Image size, stride, temperature (and RDE's select_ratio): ``configs.yaml`` beside
    ``src``, else the method's defaults; an explicit ``image_size`` wins over both."""
    defaults = RDE_DEFAULTS if method == "rde" else DEFAULTS
    settings: dict[str, Any] = dict(defaults)
    run_config = src.parent / RUN_CONFIG
    if run_config.is_file():
        args = read_run_args(run_config)
        settings.update({k: args[k] for k in defaults if args.get(k) is not None})
        settings["from"] = str(run_config)
    else:
        log.warning(
            "%s has no %s beside it: assuming %s's defaults %s",
            src,
            RUN_CONFIG,
            NAMES[method],
            defaults,
        )
    if image_size is not None:
        settings["img_size"] = tuple(image_size)
    settings["img_size"] = _image_size(
        settings["img_size"], "configs.yaml img_size or image_size=", str(src)
    )
    ratio = settings.get("select_ratio", 0.3)
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ConfigError(
            f"{settings.get('from', src)}: select_ratio {ratio!r} is not a ratio in (0, 1]"
        )
    return settings


def _image_size(size: Any, where: str, source: str) -> tuple[int, int]:
    """``size`` as (H, W), or one clear error saying where it came from."""
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ConfigError(f"{source}: image size {size!r}: expected [H, W] ({where})")
    return int(size[0]), int(size[1])


def _clip_backbone(src: Path, state: dict[str, torch.Tensor], settings: dict[str, Any]):
    """The Hugging Face CLIP of OpenAI-layout tensors whose visual position table is stored
    at ``settings["img_size"]`` (checked against the table, never guessed from it)."""
    height, width = settings["img_size"]
    patch = int(state["visual.conv1.weight"].shape[-1]) if "visual.conv1.weight" in state else 0
    if settings["stride_size"] != patch:
        raise ConfigError(
            f"{src}: stride_size {settings['stride_size']} differs from the patch size {patch}; "
            "overlapping patches are not supported"
        )
    if height % patch or width % patch:
        raise ConfigError(
            f"image size {height}x{width} is not a multiple of the patch size {patch}"
        )
    grid = (height // patch, width // patch)
    rows = state[POSITIONS].shape[0]
    if rows != grid[0] * grid[1] + 1:
        raise DataError(
            f"{src}: the position table has {rows} rows, a {height}x{width} image at patch "
            f"{patch} needs {grid[0] * grid[1] + 1}; pass image_size=[H,W] (configs.yaml: "
            f"{settings.get('from', 'absent')})"
        )
    config = clip_config_from_openai(state, source=str(src), grid=grid)
    backbone = set_image_size(CLIPModel(config), (height, width))  # the grid the method stored
    weights = openai_to_hf_state_dict(state, str(src))
    weights.setdefault("logit_scale", backbone.logit_scale.detach())
    load_converted_weights(backbone, weights, str(src))
    return backbone


def _bpe_tokenizer(bpe_path) -> PreTrainedTokenizerBase:
    """CLIP's tokenizer from the merges file shipped with tbps, or the one at ``bpe_path``."""
    return clip_bpe_tokenizer(Path(bpe_path).expanduser() if bpe_path else default_bpe_path())


def convert_published(
    method: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    image_size: tuple[int, int] | None = None,
    bpe_path: str | os.PathLike | None = None,
) -> Path:
    """Write the model folder of a method's released checkpoint, so that
    ``encode_texts @ encode_images.T`` is the method's own test-time similarity:

    - ``irra``: the cosine of the text's end-of-text feature and the image's class feature;
    - ``rde``: RDE's "BGE+TSE" score, the mean of that cosine and the token-selection one
      (its branches become the model's :class:`TokenSelectionHead`, ratio ``select_ratio``);
    - ``tbps_clip``: the same cosine as IRRA's, from TBPS-CLIP's ``checkpoint_best.pth``.

    The folder has the CLIP backbone with the exact stored position tables, CLIP's BPE
    tokenizer and the method's test transform: IRRA/RDE bilinear resize with CLIP mean/std and
    temperature from ``configs.yaml`` (0.02); TBPS-CLIP bicubic resize with ImageNet mean/std,
    its learned logit scale, and its caption cleaning in the tokenizer.
    """
    if method not in METHODS:
        raise ConfigError(f"method {method!r}; valid: {', '.join(METHODS)}")
    src = Path(src).expanduser()
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} exists and is not empty; choose another out")
    if method == "tbps_clip":
        checkpoint, settings = read_tbps_clip_checkpoint(src, image_size)
    else:
        checkpoint = read_method_checkpoint(src, method)
        settings = _run_settings(src, method, image_size)
    backbone = _clip_backbone(src, checkpoint.backbone, settings)
    tokenizer = _bpe_tokenizer(bpe_path)
    if method == "tbps_clip":
        tokenizer = with_stripped_characters(tokenizer, TBPS_CLIP_STRIPPED)
    temperature = settings["temperature"]
    model = TBPSModel(
        backbone,
        temperature=None if temperature is None else float(temperature),
        image_mean=settings.get("mean", CLIP_MEAN),
        image_std=settings.get("std", CLIP_STD),
        interpolation=settings.get("interpolation", "bilinear"),
        tokenizer=tokenizer,
    )
    if method == "rde":
        _load_rde_branches(model, checkpoint.heads, float(settings["select_ratio"]), src)
    model.eval()
    model.info = {
        "imported": {
            "method": method,
            "file": str(src),
            "dropped": sorted({k.split(".")[0] for k in checkpoint.dropped}),
        }
    }
    model.save_pretrained(out)
    height, width = settings["img_size"]
    log.info(
        "%s %s -> %s (%dx%d, temperature %s; dropped %s)",
        NAMES[method],
        src,
        out,
        height,
        width,
        settings["temperature"],
        ", ".join(model.info["imported"]["dropped"]) or "nothing",
    )
    return out


def _load_rde_branches(
    model: TBPSModel, heads: dict[str, torch.Tensor], ratio: float, src: Path
) -> None:
    state = rde_token_selection_state(heads)
    width, dim = state["token_selection.image.linear.weight"].shape[::-1]
    if width != model.embed_dim:
        raise DataError(
            f"{src}: visul_emb_layer takes {width}-d tokens but the backbone projects to "
            f"{model.embed_dim}; the branches do not belong to this backbone"
        )
    head = model.add_token_selection(ratio, int(dim))
    load_state_strictly(
        head, {k.removeprefix("token_selection."): v for k, v in state.items()}, str(src)
    )


def read_tbps_clip_checkpoint(
    path: str | os.PathLike, image_size: tuple[int, int] | None = None
) -> tuple[MethodCheckpoint, dict[str, Any]]:
    """The OpenAI-layout tensors (float32) of TBPS-CLIP's ``checkpoint_best.pth``
    (``{model, optimizer, config}``, ``config`` a pickled EasyDict read as a plain dict by the
    restricted unpickler) and its test settings: image size ``experiment.input_resolution``
    (224x224; ``image_size`` wins), patch 16, text length ``experiment.text_length``, bicubic
    resize, ImageNet mean/std, the learned logit scale."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    checkpoint = load_restricted(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise DataError(
            f"{path}: not a TBPS-CLIP checkpoint_best.pth (no 'model' state dict; found {keys})"
        )
    state = {str(k).removeprefix("module."): v for k, v in checkpoint["model"].items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(f"{path}: entry {bad[0]} is not a tensor")
    backbone: dict[str, torch.Tensor] = {}
    others = []
    for key, value in state.items():
        if key.startswith("visual.") or key == "logit_scale":
            backbone[key] = value.float()
        elif key.startswith(TBPS_CLIP_TEXT):
            backbone[key.removeprefix(TBPS_CLIP_TEXT)] = value.float()
        else:
            others.append(key)
    needed = [f"{TBPS_CLIP_TEXT}token_embedding.weight", "visual.conv1.weight"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise DataError(
            f"{path}: not a TBPS-CLIP checkpoint, keys missing: {_first(missing)} (its keys "
            f"start with {_first(sorted(state))})"
        )
    unknown = sorted(k for k in others if k.split(".")[0] not in TBPS_CLIP_HEADS)
    if unknown:
        raise DataError(f"{path}: keys TBPS-CLIP does not have: {_first(unknown)}")
    config = checkpoint.get("config")
    config = config if isinstance(config, dict) else {}
    if not config:
        log.warning(
            "%s holds no config: assuming TBPS-CLIP's defaults %s", path, TBPS_CLIP_DEFAULTS
        )
    experiment = config.get("experiment") or {}
    size = image_size or experiment.get("input_resolution", TBPS_CLIP_DEFAULTS["input_resolution"])
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    size = _image_size(size, "config experiment.input_resolution or image_size=", str(path))
    text_length = experiment.get("text_length", TBPS_CLIP_DEFAULTS["text_length"])
    rows = backbone["positional_embedding"].shape[0] if "positional_embedding" in backbone else 0
    if rows != text_length:
        raise DataError(
            f"{path}: its config says experiment.text_length={text_length} but the text "
            f"position table has {rows} rows; the config does not belong to these weights"
        )
    patch = int(backbone["visual.conv1.weight"].shape[-1])
    settings = {
        "img_size": size,
        "stride_size": patch,  # TBPS-CLIP's patches do not overlap
        "temperature": None,  # its learned logit_scale
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "interpolation": "bicubic",
        "from": f"{path} (config)",
    }
    return MethodCheckpoint(backbone, {}, sorted(others)), settings


def with_stripped_characters(
    tokenizer: PreTrainedTokenizerBase, characters: str
) -> PreTrainedTokenizerBase:
    """A copy of the fast ``tokenizer`` that turns each of ``characters`` into a space before
    its own normalisation. It is a generic fast tokenizer (``CLIPTokenizer`` rebuilds its
    normalizer when loaded), so the saved ``tokenizer.json`` keeps the step."""
    from tokenizers import Regex, Tokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    strip = normalizers.Replace(Regex("[" + re.escape(characters) + "]"), " ")
    steps = [strip] if backend.normalizer is None else [strip, backend.normalizer]
    backend.normalizer = normalizers.Sequence(steps)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        unk_token=tokenizer.unk_token,
        model_max_length=tokenizer.model_max_length,
    )
