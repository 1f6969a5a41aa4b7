"""Fixtures of the generator tests: a few perov_5 crystals and a tiny DiffCSP configuration."""

from __future__ import annotations

from typing import Any

import pytest
from torch_geometric.data import Data

from generators.configs import deep_merge, load_config
from generators.trainer import structures_to_data_list

TINY_MODEL: dict[str, Any] = {
    "hidden_dim": 16,
    "num_layers": 1,
    "num_freqs": 4,
    "time_dim": 8,
}


def tiny_config(**train: Any) -> dict[str, Any]:
    """cpu-small DiffCSP on perov_5, shrunk to a one-layer 16-wide net."""
    base = load_config("diffcsp", "cpu-small", "perov_5")
    return deep_merge(
        base,
        {
            "model": TINY_MODEL,
            "train": {"batch_size": 4, "max_epochs": 3, "checkpoint_every": 1, **train},
        },
    )


@pytest.fixture(scope="session")
def perov_val_records(data_dir):  # type: ignore[no-untyped-def]
    from generators.data import load_split

    return load_split("perov_5", "val", data_dir=data_dir, limit=16, progress=False).records


@pytest.fixture(scope="session")
def perov_val_data(perov_val_records) -> list[Data]:  # type: ignore[no-untyped-def]
    data, errors = structures_to_data_list(perov_val_records)
    assert not errors
    return data
