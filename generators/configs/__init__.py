"""Named configurations of the generators.

Each model has ``generators/configs/<model>.yaml``::

    paper:              # the published hyperparameters
      defaults: {model: {...}, train: {...}, sample: {...}}
      perov_5: {...}    # per-dataset overrides, merged over defaults
    cpu-small:          # small enough to learn something in minutes on a CPU
      defaults: {...}

:func:`load_config` resolves ``defaults`` deep-merged with the dataset's section.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def available_configs(model: str) -> list[str]:
    """Names of the configurations of ``model``."""
    return sorted(_read(model))


def load_config(
    model: str, name: str, dataset: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Resolve configuration ``name`` of ``model`` for ``dataset``.

    Parameters
    ----------
    model
        Registered model name, e.g. ``"diffcsp"``.
    name
        Configuration name, e.g. ``"paper"`` or ``"cpu-small"``.
    dataset
        Dataset name; its section (if any) is merged over ``defaults``.
    overrides
        Extra nested values merged last (e.g. from the command line).

    Returns
    -------
    dict
        With ``model``, ``train`` and ``sample`` sections plus ``name`` and ``dataset``.

    Raises
    ------
    ValueError
        If the model has no such configuration.
    """
    configs = _read(model)
    if name not in configs:
        raise ValueError(
            f"model {model!r} has no configuration {name!r}; "
            f"available: {', '.join(sorted(configs))}"
        )
    section = configs[name] or {}
    resolved = deep_merge(section.get("defaults", {}), section.get(dataset, {}) or {})
    if overrides:
        resolved = deep_merge(resolved, overrides)
    resolved.setdefault("model", {})
    resolved.setdefault("train", {})
    resolved.setdefault("sample", {})
    resolved["name"] = name
    resolved["dataset"] = dataset
    resolved["model_name"] = model
    return resolved


def _read(model: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"{model}.yaml"
    if not path.is_file():
        raise ValueError(f"no configuration file for model {model!r} ({path})")
    with path.open() as handle:
        return yaml.safe_load(handle) or {}
