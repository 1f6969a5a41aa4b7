"""relax-structures after generate-and-relax: the shared sample → relax helpers of the flows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import flow

from flows.hashing import structure_hash
from flows.relax_stage import flow_run_provenance, samples_provenance
from flows.store import ResultStore
from flows.tasks import load_sample_items

from .conftest import TINY_CHGNET


def test_relax_structures_reuses_what_generate_and_relax_stored(
    harness: None, tmp_path: Path
) -> None:
    from flows.pipeline import generate_and_relax, relax_structures

    common = dict(relaxer="chgnet", relaxer_settings=TINY_CHGNET, home=str(tmp_path))
    first = generate_and_relax(
        model="dataset",
        dataset="perov_5",
        n=2,
        chunk_size=2,
        cluster_kwargs={"processes": False},
        **common,
    )
    sample_dir = first["sample_dir"]
    assert first["stages"][0]["n_stored"] == 2
    items, errors = load_sample_items(sample_dir)
    assert len(items) == 2 and not errors
    with ResultStore(home=tmp_path) as store:
        docs = store.query("relaxation")
    # each relaxation names the generated sample it started from, and the flow run
    assert {d["source_structure_hash"] for d in docs} == {structure_hash(s) for _, s in items}
    assert all(d["provenance"]["flow_run_id"] for d in docs)

    again = relax_structures(sample_dir, cluster_kwargs={"processes": False}, **common)
    assert again["n_input"] == 2 and again["n_skipped"] == 2 and again["n_submitted"] == 0
    assert again["settings_hash"] == first["stages"][0]["settings_hash"]


def test_flow_run_provenance_names_the_run_only_inside_one(harness: None, tmp_path: Path) -> None:
    from flows.pipeline import sample_structures

    sample_dir = sample_structures("dataset", "perov_5", 1, home=str(tmp_path))
    outside = flow_run_provenance(sample_dir, {"n": 1})
    assert outside.flow_run_id is None
    assert outside == samples_provenance(sample_dir, {"n": 1})

    @flow
    def inside() -> str | None:
        return flow_run_provenance(sample_dir, {"n": 1}).flow_run_id

    assert inside()


def test_a_cell_too_loose_to_be_a_crystal_is_not_relaxed(tmp_path: Path) -> None:
    """An undertrained generator's 500-Å cell is an invalid_input result; the crystal beside it
    in the same chunk is relaxed by the real CHGNet."""
    from pymatgen.core import Lattice, Structure

    from flows.tasks import relax_chunk

    giant = Structure(
        Lattice.orthorhombic(480, 630, 535),
        ["Po", "O", "O", "O", "O"],
        [[0, 0, 0], [0.001, 0, 0], [0, 0.001, 0], [0, 0, 0.001], [0.001, 0.001, 0.001]],
    )
    diamond = Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(3.567), ["C"], [[0, 0, 0]]
    ).get_primitive_structure()
    ledger = tmp_path / "ledger.jsonl"
    giant_result, diamond_result = relax_chunk.fn(
        "chgnet",
        TINY_CHGNET,
        [("giant", giant.as_dict()), ("diamond", diamond.as_dict())],
        ledger=str(ledger),
    )
    # 480 * 630 * 535 / 5 = 32,356,800 Å^3 per atom
    assert giant_result["status"] == "invalid_input"
    assert giant_result["error"] == (
        "giant: cell of 3.24e+07 Å^3 per atom (a, b, c = 480, 630, 535 Å) is not a crystal: "
        "more than 1000 Å^3 per atom"
    )
    assert diamond_result["status"] in ("ok", "not_converged")
    assert diamond_result["final_energy_per_atom_eV"] == pytest.approx(-9.064, abs=0.02)
    assert [json.loads(line)["status"] for line in ledger.read_text().splitlines()] == [
        "invalid_input",
        diamond_result["status"],
    ]
