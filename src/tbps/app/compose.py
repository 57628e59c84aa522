"""Compose a packaged primary config with ``key=value`` overrides; Hydra's errors become one
line naming the key or option and the valid choices."""

from __future__ import annotations

import re
from collections.abc import Sequence

from tbps.errors import ConfigError


def _valid_keys_hint(config_name: str, overrides: Sequence[str], key: str) -> str:
    """``valid keys under 'x': a, b, c`` for an unknown override key (best effort)."""
    from hydra import compose, initialize_config_module
    from omegaconf import DictConfig, OmegaConf

    others = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(key)]
    try:
        with initialize_config_module("tbps.configs", version_base="1.3"):
            cfg = compose(
                config_name, overrides=others, return_hydra_config=key.startswith("hydra.")
            )
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    parent, _, _ = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return f" ({parent!r} is not a config section)" if parent else ""
    where = f"under {parent!r}" if parent else "at the top level"
    return f"; valid keys {where}: {', '.join(sorted(str(k) for k in node))}"


def compose_config(config_name: str, overrides: Sequence[str], with_hydra: bool = False):
    """Compose a packaged primary config with overrides; errors become one-line ConfigErrors.
    ``with_hydra`` keeps the ``hydra`` node (launcher settings of a sweep)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    try:
        with initialize_config_module("tbps.configs", version_base="1.3"):
            return compose(config_name, overrides=list(overrides), return_hydra_config=with_hydra)
    except HydraException as e:
        raise config_error(e, config_name, overrides) from e


def config_error(error: Exception, config_name: str, overrides: Sequence[str]) -> ConfigError:
    """Hydra's composition error as one line: the unknown key (and the valid ones there), the
    unknown option (and the valid ones), else Hydra's message on one line."""
    message = str(error).split("\nConfig search path:")[0].strip()
    match = re.search(r"Could not override '([^']+)'", message)
    if match:
        key = match.group(1)
        return ConfigError(
            f"unknown config key {key!r}{_valid_keys_hint(config_name, overrides, key)}"
        )
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", message)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", message, flags=re.M)
        hint = ""
        if group == "hydra/launcher" and not any(o.startswith("submitit") for o in options):
            hint = " (the SLURM launchers need pip install 'tbps[slurm]')"
        return ConfigError(
            f"unknown option {option!r} for config group {group!r}; valid: "
            f"{', '.join(options)}{hint}"
        )
    return ConfigError(re.sub(r"\s*\n\s*", " ", message))
