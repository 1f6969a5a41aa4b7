"""The batched FIRE must follow ASE's FIRE(FrechetCellFilter) step for step (EMT runs here)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from relax.batched_fire import Evaluation, batched_fire


def _systems() -> list[Atoms]:
    rng = np.random.default_rng(7)
    out = []
    for symbol, a, rep in [("Cu", 3.7, (1, 1, 1)), ("Al", 4.2, (1, 1, 1)), ("Ni", 3.4, (1, 1, 1))]:
        atoms = bulk(symbol, "fcc", a=a, cubic=True).repeat(rep)
        atoms.rattle(0.05, seed=int(rng.integers(1000)))
        strain = np.eye(3) + 0.02 * rng.standard_normal((3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        out.append(atoms)
    return out


def _emt_evaluator(systems: list[Atoms], calls: list[int]):
    def evaluate(idx, carts, cells):
        calls.append(len(idx))
        out = []
        for i, pos, cell in zip(idx, carts, cells, strict=True):
            atoms = Atoms(systems[i].symbols, positions=pos, cell=cell, pbc=True)
            atoms.calc = EMT()
            out.append(
                Evaluation(
                    energy=atoms.get_potential_energy(),
                    forces=atoms.get_forces(),
                    stress=atoms.get_stress(voigt=False),
                )
            )
        return out

    return evaluate


@pytest.mark.parametrize("relax_cell", [True, False])
def test_batched_fire_matches_ase_fire(relax_cell: bool) -> None:
    systems = _systems()
    calls: list[int] = []
    outcomes = batched_fire(
        [s.positions for s in systems],
        [s.cell.array for s in systems],
        _emt_evaluator(systems, calls),
        fmax=0.02,
        max_steps=300,
        relax_cell=relax_cell,
    )
    for atoms, out in zip(systems, outcomes, strict=True):
        ref = atoms.copy()
        ref.calc = EMT()
        opt = FIRE(FrechetCellFilter(ref) if relax_cell else ref, logfile=None)
        assert opt.run(fmax=0.02, steps=300)
        assert out.converged and out.error is None
        assert out.n_steps == opt.nsteps
        assert out.final.energy == pytest.approx(ref.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(out.positions, ref.positions, atol=1e-8)
        np.testing.assert_allclose(out.cell, ref.cell.array, atol=1e-8)
        if relax_cell:
            assert np.abs(out.cell - atoms.cell.array).max() > 1e-3  # the cell did move
        else:
            np.testing.assert_allclose(out.cell, atoms.cell.array)
    # one evaluator call per step for all structures still moving, fewer as they converge
    assert calls[0] == len(systems)
    assert calls[-1] < len(systems)
    assert len(calls) == max(o.n_steps for o in outcomes) + 1


def test_batched_fire_isolates_failing_structure_and_respects_max_steps() -> None:
    systems = _systems()
    calls: list[int] = []
    emt = _emt_evaluator(systems, calls)

    def evaluate(idx, carts, cells):
        out = emt(idx, carts, cells)
        return [
            Evaluation(error="model failed") if i == 1 else ev
            for i, ev in zip(idx, out, strict=True)
        ]

    outcomes = batched_fire(
        [s.positions for s in systems],
        [s.cell.array for s in systems],
        evaluate,
        fmax=1e-6,
        max_steps=7,
    )
    assert outcomes[1].error == "model failed" and not outcomes[1].converged
    for i in (0, 2):
        assert outcomes[i].error is None
        assert outcomes[i].n_steps == 7 and not outcomes[i].converged
        assert outcomes[i].max_force > 1e-6
