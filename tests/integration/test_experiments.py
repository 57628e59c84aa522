"""Recipes (a published recipe, composed with any dataset): each composes with its recipe's values
on every dataset, the old ``experiment=`` names still run, and every recipe trains a few steps
with a tiny backbone and a tiny native-format dataset swapped in."""

import csv
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml

import tbps.configs
from fixtures import write_cuhk_fixture, write_family_fixture
from tbps.app.schema import validate_config
from tbps.app.train import run_training
from tbps.cli import compose_config, experiment_as_recipe, main
from tbps.errors import ConfigError
from tbps.training.module import TBPSLightningModule
from tiny_backbones import write_tiny_clip, write_tiny_siglip

RECIPE_DIR = Path(tbps.configs.__file__).parent / "recipe"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "recipes"
RECIPES = ("irra", "tbps_clip", "rde", "seed_best")
BACKBONES = {
    "irra": "clip_b16",
    "tbps_clip": "clip_b16",
    "rde": "clip_b16",
    "seed_best": "msiglip_b16_256",
}


def datasets(recipe: str) -> tuple[str, ...]:
    """The benchmark data configs a recipe is documented on (m-SigLIP reads VN3K in Vietnamese)."""
    vn3k = "vn3k_vi" if recipe == "seed_best" else "vn3k_en"
    return ("cuhk_pedes", "icfg_pedes", "rstpreid", vn3k)


PAIRS = [(recipe, data) for recipe in RECIPES for data in datasets(recipe)]
#: each recipe trains once, each on another dataset's native layout (all four layouts covered)
TRAINED = [(recipe, datasets(recipe)[i]) for i, recipe in enumerate(RECIPES)]

#: the recipe values every experiment of a recipe must carry (docs/recipes/*.md)
RECIPE_VALUES = {
    "irra": {
        "backbone.name": "clip_b16",
        "backbone.image_size": [384, 128],
        "backbone.text.length": 77,
        "backbone.temperature": 0.02,
        "augment.preset": "irra",
        "objectives.sdm.enabled": True,
        "objectives.id.enabled": True,
        "objectives.mlm.enabled": True,
        "optim.name": "adam",
        "optim.lr": 1e-5,
        "optim.bias_lr_factor": 2.0,
        "optim.groups.heads.lr": 5e-5,
        "optim.groups.cross_modal.lr": 5e-5,
        "optim.schedule": "cosine",
        "optim.warmup_epochs": 5.0,
        "optim.warmup_start_factor": 0.1,
        "optim.end_lr_factor": 0.0,
        "loader.batch_size": 64,
        "trainer.accumulate_grad_batches": 1,
        "trainer.max_epochs": 60,
    },
    "tbps_clip": {
        "backbone.name": "clip_b16",
        "backbone.image_size": [224, 224],
        "backbone.text.length": 77,
        "augment.preset": "tbps_clip",
        "augment.text.enabled": True,
        "objectives.nitc.softlabel_ratio": 0.5,
        "objectives.nitc.mvs": True,
        "objectives.ritc.enabled": True,
        "objectives.citc.weight": 0.1,
        "objectives.ss.weight": 0.4,
        "optim.name": "adamw",
        "optim.lr": 1e-4,
        "optim.betas": [0.9, 0.98],
        "optim.weight_decay": 0.02,
        "optim.warmup_epochs": 1.0,
        "optim.warmup_start_factor": 0.01,  # 1e-6
        "optim.end_lr_factor": 0.05,  # 5e-6
        "loader.batch_size": 320,
        "trainer.accumulate_grad_batches": 1,
        "trainer.max_epochs": 5,
    },
    "rde": {
        "backbone.name": "clip_b16",
        "backbone.image_size": [384, 128],
        "backbone.text.length": 77,
        "backbone.temperature": 0.02,
        "augment.preset": "irra",
        "objectives.tal.enabled": True,
        "objectives.tal.tse": True,
        "optim.name": "adam",
        "optim.lr": 1e-5,
        "optim.bias_lr_factor": 2.0,
        "optim.groups.tse.lr": 1e-3,
        "optim.warmup_epochs": 5.0,
        "optim.warmup_start_factor": 0.1,
        "optim.end_lr_factor": 0.0,
        "loader.batch_size": 64,
        "trainer.accumulate_grad_batches": 1,
        "trainer.max_epochs": 60,
    },
    "seed_best": {
        "backbone.name": "msiglip_b16_256",
        "backbone.image_size": [256, 256],
        "backbone.text.length": 64,
        "augment.preset": "siglip",
        "objectives.sigmoid_nitc.enabled": True,
        "objectives.ss.weight": 0.8,
        "objectives.citc.weight": 0.1,
        "optim.name": "adamw",
        "optim.lr": 1e-5,
        "optim.groups.heads.lr": 5e-5,
        "optim.warmup_epochs": 12.0,  # 20% of 60
        "optim.end_lr_factor": 0.5,
        "loader.batch_size": 8,
        "trainer.accumulate_grad_batches": 8,
        "trainer.max_epochs": 60,
    },
}

#: recipe objectives that are switched off in every experiment of a recipe
RECIPE_OFF = {
    "irra": ("itc",),
    "tbps_clip": ("itc", "sdm"),
    "rde": ("itc", "sdm"),
    "seed_best": ("itc", "sdm", "nitc"),
}


def select(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def test_one_recipe_file_per_recipe():
    assert sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize(("recipe", "data"), PAIRS)
def test_recipe_composes_with_its_values_on_every_dataset(recipe, data):
    cfg = compose_config(
        "train", [f"recipe={recipe}", f"data={data}", "data.root=/d", "backbone.path=/m"]
    )
    assert cfg.name == f"{data}_{recipe}_{BACKBONES[recipe]}"
    assert cfg.data.name == data and cfg.backbone.name == BACKBONES[recipe]
    for key, value in RECIPE_VALUES[recipe].items():
        got = select(cfg, key)
        got = list(got) if isinstance(value, list) else got
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key
    enabled = {k for k, v in cfg.objectives.items() if v.get("enabled", True)}
    assert not enabled & set(RECIPE_OFF[recipe])
    validate_config("train", cfg)  # every recipe value passes the typed schema
    # the recipe's command line stands in its header and on its recipe page
    assert f"tbps train recipe={recipe} data=" in (RECIPE_DIR / f"{recipe}.yaml").read_text()
    assert f"recipe={recipe} data={data}" in (DOCS / f"{recipe}.md").read_text()


@pytest.mark.parametrize(("recipe", "data"), PAIRS)
def test_old_experiment_names_compose_the_same_config(recipe, data, caplog):
    name = f"{data}_{recipe}_{BACKBONES[recipe]}"
    with caplog.at_level(logging.WARNING, logger="tbps"):
        args = experiment_as_recipe([f"experiment={name}", "data.root=/d"])
    assert args == [f"recipe={recipe}", f"data={data}", "data.root=/d"]
    assert f"experiment={name} is now: recipe={recipe} data={data}" in caplog.text
    # another backbone than the recipe's is kept too
    other = experiment_as_recipe([f"experiment={data}_{recipe}_clip_l14"])
    assert other == [f"recipe={recipe}", f"data={data}", "backbone=clip_l14"]


def test_recipes_are_listed_and_checked_on_the_command_line(capsys):
    name = "cuhk_pedes_irra_clip_b16"
    args = ["train", f"experiment={name}", "data.root=/d", "backbone.path=/m", "--cfg", "job"]
    assert main(args) == 0
    assert "is now: recipe=irra data=cuhk_pedes" in capsys.readouterr().err
    args = [
        "train",
        "recipe=irra",
        "data=cuhk_pedes",
        "data.root=/d",
        "backbone.path=/m",
        "--cfg",
        "resolved",
    ]
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == name and printed["optim"]["name"] == "adam"
    # debug presets trim a recipe; command-line values beat both
    cfg = compose_config("train", ["recipe=irra", "data=icfg_pedes", "debug=fast"])
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 4
    assert cfg.optim.name == "adam" and cfg.backbone.name == "clip_b16"
    cfg = compose_config("train", ["recipe=irra", "debug=fast", "trainer.max_epochs=3"])
    assert cfg.trainer.max_epochs == 3
    cfg = compose_config("train", ["recipe=irra", "optim.lr=2e-5", "backbone=clip_l14"])
    assert cfg.optim.lr == 2e-5 and cfg.optim.name == "adam" and cfg.backbone.name == "clip_l14"
    with pytest.raises(ConfigError, match="unknown option 'irr' for config group 'recipe'"):
        compose_config("train", ["recipe=irr"])
    with pytest.raises(ConfigError, match="recipes: irra, rde, seed_best, tbps_clip; data: "):
        experiment_as_recipe(["experiment=cuhk_irra"])
    assert main(["train", "experiment=cuhk_irra"]) == 2
    assert "experiments are now recipe=RECIPE data=DATASET" in capsys.readouterr().err


# -- tiny runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """Tiny pretrained backbones and tiny datasets in each native layout, shared by the runs."""
    root = tmp_path_factory.mktemp("experiments")
    folders = {
        "clip": write_tiny_clip(root / "clip", image_size=32),
        "siglip": write_tiny_siglip(root / "siglip", image_size=32),
        "cuhk_pedes": root / "cuhk",
        "icfg_pedes": root / "icfg",
        "rstpreid": root / "rstpreid",
        "vn3k": root / "vn3k",
    }
    write_cuhk_fixture(folders["cuhk_pedes"], {"train": 6, "val": 2, "test": 2})
    train, held = list(range(1, 9)), {"test": [30, 31]}
    write_family_fixture(folders["icfg_pedes"], "icfg_pedes", {"train": train, **held})
    write_family_fixture(
        folders["rstpreid"], "rstpreid", {"train": train, "val": [20, 21], "test": [30, 31]}
    )
    write_family_fixture(
        folders["vn3k"], "vn3k", {"train": train, "validate": [20, 21], "test": [30, 31]}
    )
    return folders


def tiny_overrides(recipe: str, data: str, folders: dict, run_dir: Path) -> list[str]:
    """The recipe with a tiny backbone and dataset; its objectives, augment, optim stay."""
    square = recipe in ("tbps_clip", "seed_best")
    siglip = recipe == "seed_best"
    return [
        f"recipe={recipe}",
        f"data={data}",
        f"data.root={folders['vn3k' if data.startswith('vn3k') else data]}",
        f"backbone={'siglip_tiny' if siglip else 'clip_tiny'}",
        f"backbone.path={folders['siglip' if siglip else 'clip']}",
        f"backbone.image_size={[32, 32] if square else [64, 32]}",
        f"backbone.text.length={16 if siglip else 24}",
        "loader.batch_size=4",
        "loader.eval_batch_size=64",
        "loader.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "report.failures=0",
        f"run_dir={run_dir}",
    ]


#: expected lr of a group relative to the default group's matrices (optim presets)
LR_RATIOS = {
    "irra": {
        "default/bias": 2.0,
        "heads/decay": 5.0,
        "heads/bias": 5.0,
        "cross_modal/decay": 5.0,
        "cross_modal/bias": 2.0,
    },
    "tbps_clip": {"default/bias": 1.0},
    "rde": {"default/bias": 2.0, "tse/decay": 100.0, "tse/bias": 100.0},
    "seed_best": {"default/bias": 1.0, "heads/decay": 5.0, "heads/bias": 5.0},
}

#: objective terms each recipe logs
LOGGED_TERMS = {
    "irra": ("sdm", "id", "mlm"),
    "tbps_clip": ("nitc", "ritc", "citc", "ss"),
    "rde": ("tal", "tal_tse"),
    "seed_best": ("sigmoid_nitc", "ss", "citc"),
}


class ParameterSnapshots:
    """Every parameter of the LightningModule (with its requires_grad) when training starts and
    when it ends, recorded from inside the real run."""

    def __init__(self, monkeypatch):
        self.start: dict[str, tuple[torch.Tensor, bool]] = {}
        self.end: dict[str, torch.Tensor] = {}
        on_start, on_end = TBPSLightningModule.on_train_start, TBPSLightningModule.on_train_end

        def record_start(module):
            on_start(module)
            self.start = {
                n: (p.detach().clone(), p.requires_grad) for n, p in module.named_parameters()
            }

        def record_end(module):
            self.end = {n: p.detach().clone() for n, p in module.named_parameters()}
            on_end(module)

        monkeypatch.setattr(TBPSLightningModule, "on_train_start", record_start)
        monkeypatch.setattr(TBPSLightningModule, "on_train_end", record_end)

    def changed(self) -> tuple[list[str], list[str], list[str]]:
        """(trainable that changed, trainable that did not, frozen that changed).

        Attention key biases are left out: softmax(q·(k + b)) = softmax(q·k) (the bias adds the
        same q·b to a query's every logit), so their gradient is exactly zero and only weight
        decay moves them.
        """
        moved, stuck, thawed = [], [], []
        for name, (before, trainable) in self.start.items():
            differs = not torch.equal(before, self.end[name])
            if trainable:
                if not name.endswith("k_proj.bias"):
                    (moved if differs else stuck).append(name)
            elif differs:
                thawed.append(name)
        return moved, stuck, thawed


@pytest.mark.parametrize(("recipe", "data"), TRAINED)  # about 1 s each
def test_recipe_trains_with_a_tiny_backbone(
    recipe, data, tiny_folders, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.WARNING, logger="tbps")
    snapshots = ParameterSnapshots(monkeypatch)
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(recipe, data, tiny_folders, run_dir)
    overrides.append("backbone.finetune.freeze=[vision]")  # frozen tensors to check
    metrics = run_training(compose_config("train", overrides))

    # the steps moved every trainable tensor and no frozen one
    moved, stuck, thawed = snapshots.changed()
    frozen = [n for n, (_, trainable) in snapshots.start.items() if not trainable]
    assert moved and not stuck, stuck
    assert any("vision" in n for n in frozen) and not thawed, thawed
    assert not any("vision" in n for n in moved)

    # 2 batches: 2 optimizer steps, or 1 under the seed recipe's accumulation of 8
    assert metrics["steps"] == (1 if recipe == "seed_best" else 2)
    for which in ("last", "best"):
        t2i = metrics["test"][which]["t2i"]
        assert t2i["num_queries"] > 0 and 0.0 <= t2i["R1"] <= 100.0 and math.isfinite(t2i["mAP"])
    assert metrics["best_val"]["val/t2i/R1"] is not None

    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    for term in LOGGED_TERMS[recipe]:
        assert f"train/{term}" in logged, term
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)

    # every optimizer group of the recipe matched parameters, at the recipe's lr ratios
    assert "matched no trainable parameter" not in caplog.text
    first = next(r for r in rows if any(k.startswith("lr-") and v for k, v in r.items()))
    lrs = {k.split("/", 1)[1]: float(v) for k, v in first.items() if k.startswith("lr-") and v}
    base = lrs["default/decay"]
    for group, ratio in LR_RATIOS[recipe].items():
        assert lrs[group] == pytest.approx(ratio * base, rel=1e-6), group
