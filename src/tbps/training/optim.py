"""Optimizer parameter groups (by name patterns, decay/no-decay) and per-step LR schedules."""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from tbps.errors import ConfigError

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "exp", "poly", "step", "constant")
WARMUPS = ("linear", "constant")


@dataclass(frozen=True)
class GroupSpec:
    """Parameters whose name matches one of ``patterns`` (fnmatch or substring), with overrides.

    ``lr``/``weight_decay``/``betas``/``eps`` left as None take the optimizer defaults.
    ``bias_lr_factor`` multiplies the lr of biases in this group (IRRA uses 2).
    """

    name: str
    patterns: tuple[str, ...]
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    bias_lr_factor: float = 1.0


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(p in name or fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_bias(name: str) -> bool:
    """``*.bias`` and fused biases such as MultiheadAttention's ``in_proj_bias``."""
    return name.rsplit(".", 1)[-1].endswith("bias")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or _is_bias(name)


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float | None = None,
    groups: Sequence[GroupSpec] = (),
    bias_lr_factor: float = 1.0,
) -> list[dict]:
    """Trainable parameters in optimizer groups.

    Each parameter goes to the first ``groups`` entry whose patterns match its name, else to
    ``default``; each such group is split into ``decay`` (matrices) and ``no_decay`` (biases and
    1-D parameters, weight decay 0). Frozen parameters are in no group. Every group dict carries
    ``name`` (e.g. ``head/no_decay``), so schedules and logs can tell them apart.
    """
    buckets: dict[tuple[str, str], list[nn.Parameter]] = {}
    specs = {g.name: g for g in groups}
    default = GroupSpec(
        "default", (), lr=lr, weight_decay=weight_decay, bias_lr_factor=bias_lr_factor
    )
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        spec = next((g for g in groups if _matches(name, g.patterns)), default)
        kind = "no_decay" if _no_decay(name, param) else "decay"
        if kind == "no_decay" and _is_bias(name):
            kind = "bias"
        buckets.setdefault((spec.name, kind), []).append(param)
    out = []
    for (group_name, kind), params in buckets.items():
        spec = specs.get(group_name, default)
        base_lr = spec.lr if spec.lr is not None else lr
        group: dict = {
            "name": f"{group_name}/{kind}",
            "params": params,
            "weight_decay": 0.0
            if kind != "decay"
            else (spec.weight_decay if spec.weight_decay is not None else weight_decay),
        }
        if base_lr is not None:
            group["lr"] = base_lr * (spec.bias_lr_factor if kind == "bias" else 1.0)
        if spec.betas is not None:
            group["betas"] = tuple(spec.betas)
        if spec.eps is not None:
            group["eps"] = spec.eps
        out.append(group)
    for spec in groups:
        if not any((spec.name, k) in buckets for k in ("decay", "no_decay", "bias")):
            log.warning(
                "optimizer group %r matched no trainable parameter (patterns %s)",
                spec.name,
                list(spec.patterns),
            )
    return out


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    betas: Sequence[float] = (0.9, 0.98),
    eps: float = 1e-6,
    momentum: float = 0.9,
    groups: Sequence[GroupSpec] = (),
    bias_lr_factor: float = 1.0,
) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD over :func:`parameter_groups` of the trainable parameters."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optim.name {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {lr}")
    params = parameter_groups(model, weight_decay, lr, groups, bias_lr_factor)
    if not params:
        raise ConfigError("no trainable parameters: everything is frozen")
    if name == "sgd":
        for g in params:
            g.pop("betas", None)
            g.pop("eps", None)
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@dataclass(frozen=True)
class Schedule:
    """Per-step learning-rate schedule, applied to each group relative to its own base lr.

    t = optimizer step, W = ``warmup_steps``, T = ``total_steps``, u = (t − W)/(T − W), and for a
    group with base lr b: start = b·``warmup_start_factor``, end = b·``end_factor``.

    - warm-up ``linear``: start + (b − start)·t/W; ``constant``: b·warmup_start_factor
    - ``cosine``: end + (b − end)·½(1 + cos πu)
    - ``linear``: end + (b − end)·(1 − u)
    - ``exp``: b·(end/b)^u (geometric decay from b to end; b·γ^t-style)
    - ``poly``: end + (b − end)·(1 − u)^power
    - ``step``: b·gamma^(number of milestones ≤ t)
    - ``constant``: b
    """

    total_steps: int
    mode: str = "cosine"
    warmup_steps: int = 0
    warmup: str = "linear"
    warmup_start_factor: float = 0.01
    end_factor: float = 0.0
    power: float = 0.9
    gamma: float = 0.1
    milestones: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.mode not in SCHEDULES:
            raise ConfigError(
                f"unknown optim.schedule {self.mode!r}; valid: {', '.join(SCHEDULES)}"
            )
        if self.warmup not in WARMUPS:
            raise ConfigError(f"unknown optim.warmup {self.warmup!r}; valid: {', '.join(WARMUPS)}")
        if self.total_steps < 1:
            raise ConfigError(
                f"the schedule needs at least one optimizer step, got {self.total_steps}"
            )
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ConfigError(
                f"warm-up of {self.warmup_steps} steps does not fit {self.total_steps} steps"
            )
        if self.mode == "exp" and self.end_factor <= 0:
            raise ConfigError("optim.schedule=exp needs optim.end_lr_factor > 0")

    def factor(self, step: int) -> float:
        """lr / base lr at optimizer step ``step`` (the same for every group)."""
        if step < self.warmup_steps:
            if self.warmup == "constant":
                return self.warmup_start_factor
            s = self.warmup_start_factor
            return s + (1.0 - s) * step / self.warmup_steps
        u = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        end = self.end_factor
        if self.mode == "cosine":
            return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * u))
        if self.mode == "linear":
            return end + (1.0 - end) * (1.0 - u)
        if self.mode == "exp":
            return end**u
        if self.mode == "poly":
            return end + (1.0 - end) * (1.0 - u) ** self.power
        if self.mode == "step":
            return self.gamma ** sum(1 for m in self.milestones if step >= m)
        return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: Schedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR: every group follows ``schedule`` relative to its own base lr."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)


def steps_per_epoch(num_batches: int, accumulate: int = 1) -> int:
    """Optimizer steps in an epoch of ``num_batches``: a trailing partial accumulation is a step."""
    if accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulate}")
    return math.ceil(num_batches / accumulate)


def group_specs(groups: Mapping[str, Mapping] | None) -> list[GroupSpec]:
    """GroupSpecs from ``{name: {patterns: [...], lr: .., weight_decay: .., ...}}`` (config form)."""
    specs = []
    valid = {"patterns", "lr", "weight_decay", "betas", "eps", "bias_lr_factor"}
    for name, entry in (groups or {}).items():
        unknown = set(entry) - valid
        if unknown:
            raise ConfigError(
                f"optim.groups.{name}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        patterns = entry.get("patterns")
        if not patterns:
            raise ConfigError(f"optim.groups.{name}.patterns must list parameter-name patterns")
        betas = entry.get("betas")
        specs.append(
            GroupSpec(
                name=name,
                patterns=tuple(patterns),
                lr=entry.get("lr"),
                weight_decay=entry.get("weight_decay"),
                betas=tuple(betas) if betas is not None else None,
                eps=entry.get("eps"),
                bias_lr_factor=float(entry.get("bias_lr_factor", 1.0)),
            )
        )
    return specs


@dataclass(frozen=True)
class OptimSettings:
    """The ``optim`` config section as plain values (see configs/optim/*.yaml)."""

    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    momentum: float = 0.9
    bias_lr_factor: float = 1.0
    groups: tuple[GroupSpec, ...] = ()
    schedule: str = "cosine"
    warmup: str = "linear"
    warmup_epochs: float = 1.0
    warmup_start_factor: float = 0.01
    end_lr_factor: float = 0.01
    power: float = 0.9
    gamma: float = 0.1
    milestones: tuple[float, ...] = ()  # in epochs

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> OptimSettings:
        values = dict(values or {})
        valid = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - valid
        if unknown:
            raise ConfigError(
                f"optim: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        if "groups" in values:
            values["groups"] = tuple(group_specs(values["groups"]))
        for key in ("betas", "milestones"):
            if key in values:
                values[key] = tuple(values[key])
        settings = cls(**values)
        settings.schedule_for(1, 1)  # validates the schedule settings early
        return settings

    def schedule_for(self, steps_per_epoch: int, total_steps: int) -> Schedule:
        """The per-step :class:`Schedule` for a run of ``total_steps`` optimizer steps."""
        warmup = min(round(self.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
        return Schedule(
            total_steps=total_steps,
            mode=self.schedule,
            warmup_steps=warmup,
            warmup=self.warmup,
            warmup_start_factor=self.warmup_start_factor,
            end_factor=self.end_lr_factor,
            power=self.power,
            gamma=self.gamma,
            milestones=tuple(round(m * steps_per_epoch) for m in self.milestones),
        )

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(
            model,
            self.name,
            self.lr,
            self.weight_decay,
            self.betas,
            self.eps,
            self.momentum,
            self.groups,
            self.bias_lr_factor,
        )
