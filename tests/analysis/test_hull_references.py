"""Hull references of the stability experiment: the carbon defaults and the hull they build."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from analysis.hull_references import reference_hull, resolve_reference_structures


@pytest.fixture(scope="module")
def carbon_records(data_dir: Path):
    from generators.data import load_split

    cache: dict[str, list] = {}

    def records(split: str) -> list:
        if split not in cache:
            cache[split] = load_split("carbon_24", split, data_dir=data_dir, progress=False).records
        return cache[split]

    return records


def test_default_carbon_references_are_diamond_and_graphite(carbon_records) -> None:
    refs, info = resolve_reference_structures("carbon_24", carbon_records)
    assert [len(s) for _, s in refs] == [2, 4]  # primitive cells of diamond and graphite
    assert info["splits"] == {i: "train" for i in info["ids"]}
    diamond = refs[0][1]
    assert diamond.volume / len(diamond) == pytest.approx(5.44, abs=0.05)
    with pytest.raises(ValueError, match="C-nope"):
        resolve_reference_structures("carbon_24", carbon_records, ["C-nope"])


def test_reference_hull_from_documents_and_its_failure() -> None:
    diamond = Structure(Lattice.cubic(3.567), ["C", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    refs = [("ref:d", diamond), ("ref:x", diamond)]
    docs = {
        "ref:d": {
            "status": "ok",
            "final_energy_per_atom_eV": -9.1,
            "final_structure": diamond.as_dict(),
        },
        "ref:x": {"status": "failed", "error": "ref:x: boom"},
    }
    hull, info = reference_hull(refs, docs)
    assert hull is not None
    assert info["entries"]["ref:d"]["energy_per_atom_eV"] == -9.1
    assert info["entries"]["ref:x"] == {
        "energy_per_atom_eV": None,
        "status": "failed",
        "error": "ref:x: boom",
        "n_sites": 2,
    }
    none, info = reference_hull(refs[1:], docs)
    assert none is None and info["error"]
