"""Fixtures of the generator tests: a few perov_5 crystals, a tiny DiffCSP configuration, and the
CDVAE family's random crystals, small configurations and decoder sections."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
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


# ----------------------------------------------------------------------------- CDVAE family
GEMNET_TEST_DECODER: dict[str, Any] = {
    "type": "gemnet_t",
    "hidden_dim": 32,
    "num_blocks": 2,
    "num_spherical": 4,
    "num_radial": 16,
    "emb_size_trip": 16,
    "emb_size_rbf": 8,
    "emb_size_cbf": 8,
    "emb_size_bil_trip": 16,
    "num_atom": 1,
    "cutoff": 7.0,
    "max_neighbors": 20,
}
"""A small GemNet-T for the fast tests (the paper's sizes are in the ``paper`` configs)."""

LEGACY_DECODER: dict[str, Any] = {
    "hidden_dim": 64,
    "num_blocks": 2,
    "int_emb_size": 32,
    "basis_emb_size": 8,
    "num_spherical": 4,
    "num_radial": 6,
    "cutoff": 7.0,
    "max_neighbors": 20,
}
"""The cpu-small decoder section as written before ``decoder.type`` existed (no ``type`` key)."""

DECODER_SECTIONS: dict[str, dict[str, Any]] = {
    "dimenet_pp": {"type": "dimenet_pp", **LEGACY_DECODER},
    "gemnet_t": GEMNET_TEST_DECODER,
}


def random_crystals(
    n: int, seed: int = 0, elements: tuple[str, ...] = ("C", "O", "Si")
) -> list[Structure]:
    """Random, tie-free crystals of 2–6 atoms in skewed cells (3.5–6 Å, 70–110°)."""
    rng = np.random.default_rng(seed)
    out: list[Structure] = []
    while len(out) < n:
        lengths = rng.uniform(3.5, 6.0, 3)
        angles = rng.uniform(70.0, 110.0, 3)
        try:
            lattice = Lattice.from_parameters(*lengths, *angles)
        except ValueError:
            continue
        if lattice.volume < 20:
            continue
        k = int(rng.integers(2, 7))
        out.append(Structure(lattice, list(rng.choice(elements, k)), rng.random((k, 3))))
    return out


def vae_config(
    model_name: str, decoder: str | dict[str, Any] | None = None, **model: Any
) -> dict[str, Any]:
    """cpu-small CDVAE/DP-CDVAE on perov_5 without progress bars.

    ``decoder`` replaces the whole decoder section: a name of ``DECODER_SECTIONS`` or a dict.
    """
    config = load_config(
        model_name, "cpu-small", "perov_5", {"model": {"progress": False, **model}}
    )
    if decoder is not None:
        section = DECODER_SECTIONS[decoder] if isinstance(decoder, str) else decoder
        config["model"]["decoder"] = dict(section)
    return config


@pytest.fixture(scope="session")
def make_crystals():  # type: ignore[no-untyped-def]
    """:func:`random_crystals`."""
    return random_crystals


@pytest.fixture(scope="session")
def make_vae_config():  # type: ignore[no-untyped-def]
    """:func:`vae_config`."""
    return vae_config


@pytest.fixture(scope="module", params=sorted(DECODER_SECTIONS))
def decoder_type(request) -> str:  # type: ignore[no-untyped-def]
    """Each decoder type in turn (tests of both GemNet-T and the DimeNet++-style decoder)."""
    return request.param
