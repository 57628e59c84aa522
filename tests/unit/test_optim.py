"""Parameter groups by name pattern and the per-step LR schedules."""

import math

import pytest
import torch
from torch import nn

from tbps.errors import ConfigError
from tbps.training.optim import (
    GroupSpec,
    OptimSettings,
    Schedule,
    build_optimizer,
    build_scheduler,
    group_specs,
    parameter_groups,
    steps_per_epoch,
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.classifier = nn.Linear(4, 3)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def by_name(groups):
    return {g["name"]: g for g in groups}


def test_groups_by_pattern_with_no_decay_and_frozen_excluded():
    model = Toy()
    groups = by_name(
        parameter_groups(
            model, 0.05, 1e-4, [GroupSpec("head", ("classifier",), lr=5e-4, bias_lr_factor=2.0)]
        )
    )
    assert set(groups) == {
        "head/decay",
        "head/bias",
        "default/decay",
        "default/bias",
        "default/no_decay",
    }
    assert groups["head/decay"]["lr"] == 5e-4 and groups["head/bias"]["lr"] == 1e-3
    assert (
        groups["head/decay"]["weight_decay"] == 0.05 and groups["head/bias"]["weight_decay"] == 0.0
    )
    assert groups["default/no_decay"]["params"] == [model.backbone[1].weight]
    assert groups["default/no_decay"]["weight_decay"] == 0.0
    listed = {id(p) for g in groups.values() for p in g["params"]}
    assert id(model.frozen.weight) not in listed and id(model.frozen.bias) not in listed
    assert len(listed) == sum(p.numel() > 0 for p in model.parameters() if p.requires_grad)


def test_glob_patterns_and_group_config_validation():
    specs = group_specs({"bb": {"patterns": ["backbone.*"], "lr": 1e-5, "betas": [0.9, 0.98]}})
    groups = by_name(parameter_groups(Toy(), 0.1, 1e-3, specs))
    assert groups["bb/decay"]["lr"] == 1e-5 and groups["bb/decay"]["betas"] == (0.9, 0.98)
    with pytest.raises(ConfigError, match=r"optim.groups.bb: unknown key\(s\) \['lrr'\]"):
        group_specs({"bb": {"patterns": ["x"], "lrr": 1}})
    with pytest.raises(ConfigError, match="patterns must list"):
        group_specs({"bb": {"lr": 1}})


def test_optimizers_and_errors():
    assert isinstance(build_optimizer(Toy(), "adam"), torch.optim.Adam)
    assert isinstance(build_optimizer(Toy(), "sgd"), torch.optim.SGD)
    with pytest.raises(ConfigError, match="valid: adamw, adam, sgd"):
        build_optimizer(Toy(), "lamb")
    frozen = Toy().requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(frozen)


@pytest.mark.parametrize(
    "mode, step, expected",
    [
        ("cosine", 55, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))),
        ("linear", 55, 0.1 + 0.9 * 0.5),
        ("exp", 55, 0.1**0.5),
        ("poly", 55, 0.1 + 0.9 * 0.5**0.9),
        ("constant", 55, 1.0),
        ("step", 55, 0.1),  # milestones (30, 80): one passed
        ("step", 80, 0.01),
        ("cosine", 100, 0.1),
    ],
)
def test_schedule_modes_after_warmup(mode, step, expected):
    s = Schedule(100, mode, warmup_steps=10, end_factor=0.1, milestones=(30, 80))
    assert s.factor(step) == pytest.approx(expected)


def test_warmups_and_per_group_base_lr():
    linear = Schedule(100, "cosine", warmup_steps=10, warmup_start_factor=0.1)
    assert linear.factor(0) == pytest.approx(0.1) and linear.factor(5) == pytest.approx(0.55)
    assert linear.factor(10) == pytest.approx(1.0)
    constant = Schedule(100, "cosine", warmup_steps=10, warmup="constant", warmup_start_factor=0.1)
    assert constant.factor(9) == pytest.approx(0.1) and constant.factor(10) == pytest.approx(1.0)
    model = Toy()
    opt = build_optimizer(model, lr=1e-3, groups=[GroupSpec("head", ("classifier",), lr=5e-3)])
    sched = build_scheduler(opt, Schedule(20, "linear", warmup_steps=0, end_factor=0.5))
    for _ in range(10):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head/decay"] == pytest.approx(5e-3 * 0.75) and lrs[
        "default/decay"
    ] == pytest.approx(1e-3 * 0.75)


def test_schedule_validation_and_steps_per_epoch():
    with pytest.raises(ConfigError, match="valid: cosine, linear, exp, poly, step, constant"):
        Schedule(10, "cosin")
    with pytest.raises(ConfigError, match="does not fit"):
        Schedule(10, warmup_steps=11)
    assert steps_per_epoch(10, 4) == 3 and steps_per_epoch(8, 4) == 2 and steps_per_epoch(7, 1) == 7


def test_optim_settings_from_config():
    settings = OptimSettings.from_mapping(
        {
            "name": "adam",
            "lr": 1e-5,
            "groups": {"heads": {"patterns": ["heads.*"], "lr": 5e-5}},
            "schedule": "step",
            "milestones": [2, 4],
            "warmup_epochs": 0.5,
            "warmup": "constant",
        }
    )
    assert settings.groups[0].lr == 5e-5
    schedule = settings.schedule_for(steps_per_epoch=10, total_steps=60)
    assert schedule.warmup_steps == 5 and schedule.milestones == (20, 40)
    assert isinstance(settings.build_optimizer(Toy()), torch.optim.Adam)
    with pytest.raises(ConfigError, match=r"optim: unknown key\(s\) \['lrate'\]"):
        OptimSettings.from_mapping({"lrate": 1})
    with pytest.raises(ConfigError, match="unknown optim.schedule"):
        OptimSettings.from_mapping({"schedule": "cosin"})


def test_fused_attention_biases_count_as_biases():
    attention = nn.MultiheadAttention(8, 2)
    groups = by_name(parameter_groups(attention, 0.1, 1e-3, bias_lr_factor=2.0))
    biases = {id(p) for p in groups["default/bias"]["params"]}
    assert id(attention.in_proj_bias) in biases and id(attention.out_proj.bias) in biases
    assert groups["default/bias"]["lr"] == 2e-3 and groups["default/bias"]["weight_decay"] == 0.0
