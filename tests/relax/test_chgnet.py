"""CHGNet relaxer: batched FIRE against one-by-one ASE relaxations, cell relaxation, errors."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from relax import get_relaxer
from relax.chgnet_relaxer import CHGNetRelaxer, split_by_atoms

A_DIAMOND = 3.57


def primitive_diamond(a: float = A_DIAMOND) -> Structure:
    h = a / 2
    lattice = Lattice([[0, h, h], [h, 0, h], [h, h, 0]])
    return Structure(lattice, ["C", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def rattled(seed: int, strain: float) -> Structure:
    s = primitive_diamond()
    rng = np.random.default_rng(seed)
    s.translate_sites([1], rng.normal(0, 0.08, 3), frac_coords=False)
    s.apply_strain(strain)
    return s


@pytest.fixture(scope="module")
def items() -> list[tuple[str, Structure]]:
    return [("r0", rattled(0, 0.02)), ("r1", rattled(1, -0.02)), ("r2", rattled(2, 0.0))]


@pytest.fixture(scope="module")
def batched(items):
    return CHGNetRelaxer(fmax=0.05, max_steps=200).relax(items)


def test_batched_converges_and_matches_sequential(items, batched) -> None:
    sequential = CHGNetRelaxer(fmax=0.05, max_steps=200, mode="sequential").relax(items)
    for b, s in zip(batched, sequential, strict=True):
        assert b.error is None and s.error is None
        assert b.converged and s.converged and b.status == "ok"
        assert b.final_energy_per_atom_eV < b.initial_energy_per_atom_eV
        assert abs(b.final_energy_per_atom_eV - s.final_energy_per_atom_eV) < 1e-3
        assert abs(b.initial_energy_per_atom_eV - s.initial_energy_per_atom_eV) < 1e-4
        assert np.max(np.linalg.norm(b.forces, axis=1)) < 0.05
        assert b.settings_hash == s.settings_hash  # the mode does not change the result


def test_cell_relaxation_changes_a_strained_cell() -> None:
    start = primitive_diamond(3.80)
    (res,) = get_relaxer("chgnet", fmax=0.02, max_steps=300).relax([("strained", start)])
    assert res.converged, res.warnings
    final = res.structure()
    a_conv = final.lattice.a * np.sqrt(2)  # primitive fcc vector = a / sqrt(2)
    assert abs(a_conv - A_DIAMOND) / A_DIAMOND < 0.01
    assert final.volume < 0.85 * start.volume
    assert np.abs(np.asarray(res.stress)).max() < 2.0  # GPa, within the Frechet criterion
    frozen = CHGNetRelaxer(relax_cell=False, max_steps=50).relax([("strained", start)])[0]
    assert frozen.structure().volume == pytest.approx(start.volume, rel=1e-9)


def test_single_point_matches_chgnet_calculator() -> None:
    from chgnet.model.dynamics import CHGNetCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    from relax.chgnet_model import load_chgnet

    s = rattled(3, 0.01)
    (res,) = CHGNetRelaxer().single_point([("sp", s)])
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = CHGNetCalculator(model=load_chgnet(), use_device="cpu")
    assert res.n_ionic_steps == 0 and res.initial_energy_eV == res.final_energy_eV
    assert res.final_energy_eV == pytest.approx(atoms.get_potential_energy(), abs=2e-4)
    np.testing.assert_allclose(res.forces, atoms.get_forces(), atol=2e-4)
    np.testing.assert_allclose(
        np.asarray(res.stress) * 1 / 160.21766208, atoms.get_stress(voigt=False), atol=1e-5
    )


def test_bad_items_reported_while_others_relax() -> None:
    isolated = Structure(Lattice.cubic(14.0), ["C"], [[0, 0, 0]])  # no neighbour within 6 A
    overlap = Structure(Lattice.cubic(4.0), ["C", "C"], [[0, 0, 0], [0.05, 0, 0]])
    items = [("isolated", isolated), ("good", rattled(4, 0.0)), ("overlap", overlap)]
    results = CHGNetRelaxer(fmax=0.1, max_steps=100).relax(items)
    by_id = {r.structure_id: r for r in results}
    assert by_id["good"].error is None and by_id["good"].converged
    assert by_id["isolated"].status == "failed" and "isolated" in by_id["isolated"].error
    assert by_id["overlap"].status == "invalid_input" and "overlap" in by_id["overlap"].error


def test_atomate2_chgnet_maker_runs_with_jobflow(tmp_path) -> None:
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    from relax.chgnet_jobflow import chgnet_relax_maker, result_from_task_document

    s = rattled(5, 0.03)
    job = chgnet_relax_maker(fmax=0.05, steps=200).make(s)
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    # atomate2 writes final_atoms_object.xyz into the job's folder: keep it out of the checkout
    responses = run_locally(
        job, store=store, create_folders=True, root_dir=tmp_path, ensure_success=True
    )
    doc = responses[job.uuid][1].output
    assert doc.is_force_converged
    result = result_from_task_document("a2", s, doc, settings={"fmax": 0.05})
    ours = CHGNetRelaxer(fmax=0.05, max_steps=200).relax([("ours", s)])[0]
    assert abs(result.final_energy_per_atom_eV - ours.final_energy_per_atom_eV) < 1e-3
    # same optimiser; atomate2 counts its trajectory frames slightly differently
    assert abs(result.n_ionic_steps - ours.n_ionic_steps) <= 3
    with store:
        assert store.query_one({"uuid": job.uuid}) is not None


def test_split_by_atoms_balances_groups() -> None:
    groups = split_by_atoms([24, 6, 8, 24, 12, 10], 2)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert [sum([24, 6, 8, 24, 12, 10][i] for i in g) for g in groups] == [42, 42]
    assert split_by_atoms([5], 4) == [[0]]


def test_worker_processes_give_the_batched_result(items, batched) -> None:
    parallel = CHGNetRelaxer(fmax=0.05, max_steps=200, workers=2).relax(items)
    for b, p in zip(batched, parallel, strict=True):
        assert p.error is None and p.extra["workers"] == 2
        assert p.structure_id == b.structure_id and p.n_ionic_steps == b.n_ionic_steps
        assert abs(p.final_energy_per_atom_eV - b.final_energy_per_atom_eV) < 1e-5


def test_device_is_resolved_recorded_and_checked(items, batched, monkeypatch) -> None:
    import torch

    from relax.chgnet_model import resolve_device

    monkeypatch.delenv("CHGNET_DEVICE", raising=False)
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    assert all(r.extra["device"] == CHGNetRelaxer().device for r in batched)
    assert (CHGNetRelaxer().device != "cpu") == gpu
    assert CHGNetRelaxer(device="cpu").device == "cpu"
    monkeypatch.setenv("CHGNET_DEVICE", "cpu")  # CHGNet's own override is honoured
    assert resolve_device(None) == "cpu"
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        CHGNetRelaxer(device="gpu0")
