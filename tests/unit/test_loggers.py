import sys

import pytest
from lightning.pytorch.loggers import CSVLogger

from tbps.errors import ConfigError
from tbps.training.loggers import build_loggers


def test_csv_logger_writes_under_the_run_folder(tmp_path):
    (logger,) = build_loggers(["csv"], tmp_path, "run", csv_version="resume-1")
    assert isinstance(logger, CSVLogger)
    assert logger.log_dir == str(tmp_path / "logs" / "resume-1")


def test_unknown_or_empty_logger_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"logger.types \['mlflow'\]: valid entries are csv"):
        build_loggers(["mlflow"], tmp_path, "run")
    with pytest.raises(ConfigError, match="valid entries are csv, tensorboard, wandb"):
        build_loggers([], tmp_path, "run")


def test_missing_wandb_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ModuleNotFoundError
    with pytest.raises(ConfigError, match=r"pip install 'tbps\[wandb\]'"):
        build_loggers(["csv", "wandb"], tmp_path, "run")
