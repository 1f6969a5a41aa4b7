"""Model name -> class, imported on demand so that one model's import cost is paid only by it."""

from __future__ import annotations

import importlib
from typing import Any

from generators.models.base import CrystalGenerator

MODELS: dict[str, str] = {
    "diffcsp": "generators.models.diffcsp:DiffCSP",
    "cdvae": "generators.models.cdvae:CDVAE",
    "dpcdvae": "generators.models.dpcdvae:DPCDVAE",
    "continuousp": "generators.models.continuousp:ContinuouSP",
}


def model_class(name: str) -> type[CrystalGenerator]:
    """The generator class registered under ``name``.

    Raises
    ------
    ValueError
        For an unknown model name.
    """
    try:
        module_name, class_name = MODELS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def build_model(name: str, model_config: dict[str, Any]) -> CrystalGenerator:
    """Instantiate the generator ``name`` from the ``model`` section of a resolved config."""
    return model_class(name)(model_config)
