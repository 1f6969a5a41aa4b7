"""Fixtures for the metric tests: small hand-built crystals and dataset slices read in place."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure


@pytest.fixture(autouse=True)
def _private_fingerprint_cache(tmp_path_factory, monkeypatch) -> None:
    """Keep the default fingerprint cache out of the user's cache directory."""
    path = tmp_path_factory.getbasetemp() / "fingerprints.sqlite"
    monkeypatch.setenv("DFTLOOP_FP_CACHE", str(path))


@pytest.fixture
def quaternary() -> Structure:
    """A 4-atom cubic cell (a = 5 Å) without internal translations, so it is its own primitive."""
    return Structure(
        Lattice.cubic(5.0),
        ["Na", "Cl", "K", "Br"],
        [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0.5], [0.5, 0.5, 0.5]],
    )


@pytest.fixture
def rocksalt() -> Structure:
    """Conventional NaCl (8 atoms, a = 5.64 Å): compositionally and structurally valid."""
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def _load(dataset: str, data_dir: Path, limit: int) -> tuple[list[str], list[Structure]]:
    from generators.data import load_split

    split = load_split(dataset, "test", data_dir=data_dir, limit=limit, progress=False)
    assert not split.errors, split.errors[:3]
    return [r.material_id for r in split.records], [r.structure for r in split.records]


@pytest.fixture(scope="session")
def perov_test_300(data_dir: Path) -> tuple[list[str], list[Structure]]:
    """The first 300 perov_5 test structures (ids, structures)."""
    return _load("perov_5", data_dir, 300)


@pytest.fixture(scope="session")
def carbon_test_200(data_dir: Path) -> tuple[list[str], list[Structure]]:
    """The first 200 carbon_24 test structures (ids, structures)."""
    return _load("carbon_24", data_dir, 200)
