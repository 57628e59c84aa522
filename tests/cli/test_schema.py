"""The typed schema: every packaged config passes it; bad values end in one line naming the
key, the value and what is expected, before any work (exit 2, no traceback)."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tbps.app.schema import SCHEMAS, validate_config
from tbps.cli import compose_config, main
from tbps.errors import ConfigError

CONFIGS = Path(__file__).parents[2] / "src" / "tbps" / "configs"
GROUPS = [
    "backbone",
    "data",
    "augment",
    "objectives",
    "optim",
    "loader",
    "trainer",
    "logger",
    "debug",
]


def _options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_passes_the_schema(group):
    for option in _options(group):
        overrides = [f"{group}={option}"]
        if group == "data" and option not in ("synthetic", "synthetic_vn3k"):
            overrides.append("data.root=/data")
        cfg = compose_config("train", overrides)
        if OmegaConf.is_missing(cfg.backbone, "path"):  # pretrained backbones need a folder
            cfg.backbone.path = "/models/backbone"
        validate_config("train", cfg)


def test_every_command_passes_the_schema():
    required = {
        "export": ["out=/tmp/x"],
        "index": ["images=/data/crops", "out=/tmp/index"],
        "search": ["index=/tmp/index"],
        "serve": ["index=/tmp/index"],
    }
    for verb in SCHEMAS:
        validate_config(verb, compose_config(verb, required.get(verb, [])))


def test_required_values_never_show_the_missing_marker(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "data=vn3k_en"]) == 2
    err = capsys.readouterr().err
    assert "data=vn3k_en needs data.root=DIR" in err and "???" not in err
    assert main(["train", "backbone=clip_tiny"]) == 2
    err = capsys.readouterr().err
    assert "backbone=clip_tiny needs backbone.path=DIR" in err and "???" not in err
    assert main(["data", "stats", "data=icfg_pedes"]) == 2
    assert "data=icfg_pedes needs data.root=DIR" in capsys.readouterr().err
    assert main(["export", "model=x"]) == 2
    assert "out=DIR is required" in capsys.readouterr().err
    assert main(["index", "model=x", "out=y"]) == 2
    assert "images=FOLDER is required" in capsys.readouterr().err
    assert main(["search", "query=a man"]) == 2
    assert "index=DIR is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loader.batch_size=0", "loader.batch_size=0: expected a positive integer"),
        ("loader.num_workers=-1", "loader.num_workers=-1: expected an integer >= 0"),
        ("optim.lr=fast", "optim.lr='fast': expected a positive number"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs=2.5: expected a positive integer"),
        (
            "augment.mlm.probability=1.5",
            "augment.mlm.probability=1.5: expected a probability in (0, 1)",
        ),
        ("optim.schedule=cosinus", "optim.schedule='cosinus': expected one of cosine, linear"),
        (
            "backbone.image_size=[384,0]",
            "backbone.image_size=[384, 0]: expected a list of 2 values",
        ),
        (
            "trainer.enable_progress_bar=maybe",
            "trainer.enable_progress_bar='maybe': expected true or false",
        ),
        (
            "logger.types=[csv,mlflow]",
            "logger.types=['csv', 'mlflow']: expected a list of values, each one of csv",
        ),
    ],
)
def test_bad_values_are_one_line_naming_key_value_and_expectation(
    override, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["train", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_validate_names_the_key_for_library_users():
    cfg = compose_config("eval", ["loader.eval_batch_size=0"])
    with pytest.raises(ConfigError, match="loader.eval_batch_size=0"):
        validate_config("eval", cfg)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["index", "model=m", "images=i", "out=o", "backend=annoy"],
            "backend='annoy': expected one of exact, faiss",
        ),
        (
            ["index", "model=m", "images=i", "out=o", "dtype=int8"],
            "dtype='int8': expected one of fp16, fp32",
        ),
        (
            ["index", "model=m", "images=i", "out=o", "batch_size=0"],
            "batch_size=0: expected a positive integer",
        ),
        (["search", "index=x", "query=a man", "k=0"], "k=0: expected a positive integer"),
        (
            ["search", "index=x", "query=a man", "format=xml"],
            "format='xml': expected one of table, json",
        ),
        (["serve", "index=x", "port=70000"], "port=70000: expected a port in 0..65535"),
        (["serve", "index=x", "max_k=-1"], "max_k=-1: expected a positive integer"),
    ],
)
def test_search_commands_check_their_values_before_any_work(
    args, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
