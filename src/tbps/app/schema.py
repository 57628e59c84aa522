"""The typed schema of every command's configuration, checked once before any work.

Defaults live in the YAML tree only; this module says what each key must be (type, range,
choice). A value of the wrong type, a count or size that is zero or negative, a probability
outside [0, 1] or an unknown choice ends in one line naming the key, the value and what is
expected. Keys a config does not have (e.g. ``backbone.vision`` of a pretrained backbone) are
not checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tbps.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """A predicate on a plain (resolved) value and the words for what it expects."""

    check: Callable[[Any], bool]
    expected: str

    def __or__(self, other: Rule) -> Rule:
        return Rule(
            lambda v: self.check(v) or other.check(v), f"{self.expected} or {other.expected}"
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


NULL = Rule(lambda v: v is None, "null")
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
INT = Rule(_is_int, "an integer")
POSITIVE_INT = Rule(lambda v: _is_int(v) and v > 0, "a positive integer")
NON_NEGATIVE_INT = Rule(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
NUMBER = Rule(_is_number, "a number")
POSITIVE = Rule(lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE = Rule(lambda v: _is_number(v) and v >= 0, "a number >= 0")
PROBABILITY = Rule(lambda v: _is_number(v) and 0 <= v <= 1, "a probability in [0, 1]")
FRACTION = Rule(lambda v: _is_number(v) and 0 < v <= 1, "a fraction in (0, 1]")


def choice(options: Sequence[str]) -> Rule:
    return Rule(lambda v: v in options, f"one of {', '.join(map(str, options))}")


def list_of(rule: Rule, length: int | None = None) -> Rule:
    size = f"{length} " if length else ""
    return Rule(
        lambda v: (
            isinstance(v, list | tuple)
            and (length is None or len(v) == length)
            and all(rule.check(x) for x in v)
        ),
        f"a list of {size}values, each {rule.expected}",
    )


def optional(rule: Rule) -> Rule:
    return NULL | rule


PRECISION = Rule(lambda v: str(v) in ("32", "fp32", "bf16", "fp16", "16"), "one of 32, bf16, fp16")
#: a count Lightning also takes as a fraction (limit_*_batches)
BATCH_LIMIT = optional(POSITIVE_INT | FRACTION)

LOADER = {
    "loader.batch_size": POSITIVE_INT,
    "loader.eval_batch_size": POSITIVE_INT,
    "loader.num_workers": NON_NEGATIVE_INT | Rule(lambda v: v == "auto", "auto"),
    "loader.cache_images": BOOL | Rule(lambda v: v == "auto", "auto"),
}


def _data_rules() -> dict[str, Rule]:
    from tbps.data.images import BAD_IMAGE_POLICIES

    return {
        "data.on_bad_image": choice(BAD_IMAGE_POLICIES),
        "data.on_bad_caption": choice(("error", "skip")),
        "data.val_fraction": Rule(lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1)"),
        "data.proportion": FRACTION,
        "data.fold_id": NON_NEGATIVE_INT,
        "data.split_seed": INT,
        "data.synth.num_identities": POSITIVE_INT,
        "data.synth.images_per_identity": list_of(POSITIVE_INT, 2),
        "data.synth.captions_per_image": POSITIVE_INT,
        "data.synth.split_fractions": list_of(PROBABILITY, 3),
        "data.synth.seed": INT,
    }


def _train_rules() -> dict[str, Rule]:
    from tbps.data.samplers import SAMPLERS
    from tbps.data.transforms import PRESETS
    from tbps.model.finetune import MODES
    from tbps.training.loggers import LOGGERS
    from tbps.training.module import NONFINITE_POLICIES
    from tbps.training.optim import OPTIMIZERS, SCHEDULES, WARMUPS

    return {
        "seed": INT,
        "runs_dir": TEXT,
        "validate_before_training": BOOL,
        "resume_finished": BOOL,
        "on_nonfinite_loss": choice(NONFINITE_POLICIES),
        "early_stopping.enabled": BOOL,
        "early_stopping.mode": choice(("max", "min")),
        "early_stopping.patience": POSITIVE_INT,
        "early_stopping.min_delta": NON_NEGATIVE,
        "report.failures": NON_NEGATIVE_INT,
        "boosting.enabled": BOOL,
        "boosting.every_n_epochs": POSITIVE_INT,
        "boosting.weight": POSITIVE,
        "boosting.top_k": optional(POSITIVE_INT),
        **_data_rules(),
        **LOADER,
        "loader.sampler": choice(SAMPLERS),
        "loader.num_instances": POSITIVE_INT,
        "backbone.image_size": list_of(POSITIVE_INT, 2),
        "backbone.patch_size": POSITIVE_INT,
        "backbone.vision.width": POSITIVE_INT,
        "backbone.vision.layers": POSITIVE_INT,
        "backbone.vision.heads": POSITIVE_INT,
        "backbone.text.width": POSITIVE_INT,
        "backbone.text.layers": POSITIVE_INT,
        "backbone.text.heads": POSITIVE_INT,
        "backbone.text.length": POSITIVE_INT,
        "backbone.embed_dim": POSITIVE_INT,
        "backbone.mlp_ratio": POSITIVE,
        "backbone.temperature": optional(POSITIVE),
        "backbone.init_temperature": optional(POSITIVE),
        "backbone.text_attention_mask": BOOL,
        "backbone.image_mean": optional(list_of(NUMBER, 3)),
        "backbone.image_std": optional(list_of(POSITIVE, 3)),
        "backbone.tokenizer.vocab_size": POSITIVE_INT,
        "backbone.tokenizer.min_frequency": POSITIVE_INT,
        "backbone.finetune.mode": choice(MODES),
        "backbone.finetune.train_heads": BOOL,
        "backbone.finetune.lora.r": POSITIVE_INT,
        "backbone.finetune.lora.alpha": POSITIVE,
        "backbone.finetune.lora.dropout": Rule(
            lambda v: _is_number(v) and 0 <= v < 1, "a probability in [0, 1)"
        ),
        "augment.preset": choice(sorted(PRESETS)),
        "augment.mvs": BOOL,
        "augment.ss": BOOL,
        "augment.mean": list_of(NUMBER, 3),
        "augment.std": list_of(POSITIVE, 3),
        "augment.text.enabled": BOOL,
        "augment.text.deletion": PROBABILITY,
        "augment.text.swap": PROBABILITY,
        "augment.text.insertion": PROBABILITY,
        "augment.text.synonym": PROBABILITY,
        "augment.mlm.enabled": BOOL,
        "augment.mlm.probability": Rule(
            lambda v: _is_number(v) and 0 < v < 1, "a probability in (0, 1)"
        ),
        "optim.name": choice(OPTIMIZERS),
        "optim.lr": POSITIVE,
        "optim.weight_decay": NON_NEGATIVE,
        "optim.betas": list_of(Rule(lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)"), 2),
        "optim.eps": POSITIVE,
        "optim.momentum": Rule(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "optim.bias_lr_factor": POSITIVE,
        "optim.schedule": choice(SCHEDULES),
        "optim.warmup": choice(WARMUPS),
        "optim.warmup_epochs": NON_NEGATIVE,
        "optim.warmup_start_factor": FRACTION,
        "optim.end_lr_factor": NON_NEGATIVE,
        "optim.power": POSITIVE,
        "optim.gamma": POSITIVE,
        "optim.milestones": list_of(NON_NEGATIVE),
        "trainer.max_epochs": POSITIVE_INT,
        "trainer.num_nodes": POSITIVE_INT,
        "trainer.gradient_clip_val": optional(NON_NEGATIVE),
        "trainer.accumulate_grad_batches": POSITIVE_INT,
        "trainer.log_every_n_steps": POSITIVE_INT,
        "trainer.check_val_every_n_epoch": POSITIVE_INT,
        "trainer.limit_train_batches": BATCH_LIMIT,
        "trainer.limit_val_batches": BATCH_LIMIT,
        "trainer.limit_test_batches": BATCH_LIMIT,
        "trainer.deterministic": BOOL,
        "trainer.enable_progress_bar": BOOL,
        "logger.types": list_of(choice(LOGGERS)),
        "logger.wandb.group": optional(TEXT),
    }


def _eval_rules() -> dict[str, Rule]:
    return {
        **_data_rules(),
        **LOADER,
        "split": TEXT,
        "device": TEXT,
        "report.failures": NON_NEGATIVE_INT,
        "report.path": TEXT,
        "precision": PRECISION,
        "seed": INT,
    }


def _export_rules() -> dict[str, Rule]:
    from tbps.model.export import FORMATS

    return {
        "out": TEXT,
        "format": choice(FORMATS),
        "opset": Rule(lambda v: _is_int(v) and 14 <= v <= 23, "an ONNX opset in 14..23"),
        "verify": BOOL,
        "overwrite": BOOL,
    }


def _clean_rules() -> dict[str, Rule]:
    return {
        "runs_dir": TEXT,
        "min_score": optional(
            Rule(lambda v: _is_number(v) and 0 <= v <= 100, "a score in [0, 100]")
        ),
        "dry_run": BOOL,
        "include_unfinished": BOOL,
    }


def _index_rules() -> dict[str, Rule]:
    return {
        "images": TEXT,
        "out": TEXT,
        "backend": choice(("exact", "faiss")),
        "dtype": choice(("fp16", "fp32")),
        "device": TEXT,
        "precision": PRECISION,
        "batch_size": POSITIVE_INT,
        "num_workers": NON_NEGATIVE_INT,
        "overwrite": BOOL,
        "format": choice(("table", "json")),
    }


def _search_rules() -> dict[str, Rule]:
    return {
        "index": TEXT,
        "query": optional(TEXT),
        "image": optional(TEXT),
        "k": POSITIVE_INT,
        "model": optional(TEXT),
        "device": TEXT,
        "format": choice(("table", "json")),
    }


def _serve_rules() -> dict[str, Rule]:
    return {
        "index": TEXT,
        "model": optional(TEXT),
        "host": TEXT,
        "port": Rule(lambda v: _is_int(v) and 0 <= v <= 65535, "a port in 0..65535"),
        "max_k": POSITIVE_INT,
        "device": TEXT,
    }


#: primary config name -> its rules
SCHEMAS: dict[str, Callable[[], dict[str, Rule]]] = {
    "train": _train_rules,
    "eval": _eval_rules,
    "export": _export_rules,
    "clean": _clean_rules,
    "index": _index_rules,
    "search": _search_rules,
    "serve": _serve_rules,
}


#: required keys (``???`` in the YAML) -> what to say when one is not set
REQUIRED_HINTS = {
    "data.root": "data={data.name} needs data.root=DIR (the dataset folder)",
    "out": "out=DIR is required: where to write (see tbps --help)",
    "images": "images=FOLDER is required: the folder of gallery images to index",
    "index": "index=DIR is required: an index folder written by tbps index",
    "backbone.path": "backbone={backbone.name} needs backbone.path=DIR (a Hugging Face folder "
    "with config.json, weights and tokenizer, or a hub id)",
}


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    keys = []
    for key in node:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            keys.append(path)
        elif isinstance(node[key], DictConfig):
            keys.extend(_missing_keys(node[key], f"{path}."))
    return keys


def check_required(cfg: Any) -> None:
    """Every required value (``???``) must be set: one line saying which, and how."""
    from omegaconf import OmegaConf

    for key in _missing_keys(cfg):
        hint = REQUIRED_HINTS.get(key)
        if hint and "." in key:
            section = key.split(".")[0]
            name = OmegaConf.select(cfg, f"{section}.name", default=section)
            raise ConfigError(hint.replace("{" + section + ".name}", str(name)))
        if hint:
            raise ConfigError(hint)
        raise ConfigError(f"{key} is required: set {key}=...")


def validate_config(config_name: str, cfg: Any) -> None:
    """Check ``cfg`` (a composed DictConfig): required values set, then its command's schema;
    raises ConfigError naming the first bad key. No message ever shows OmegaConf's ``???``."""
    from omegaconf import OmegaConf

    check_required(cfg)
    rules = SCHEMAS.get(config_name)
    if rules is None:
        return
    for key, rule in rules().items():
        try:
            if OmegaConf.is_missing(cfg, key):
                continue  # required keys are reported by the command with an example
        except Exception:  # noqa: BLE001 - a parent that is not a section
            continue
        node = OmegaConf.select(cfg, key, default="__absent__", throw_on_missing=False)
        if isinstance(node, str) and node == "__absent__":
            continue
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        if not rule.check(value):
            raise ConfigError(f"{key}={_show(value)}: expected {rule.expected}")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
