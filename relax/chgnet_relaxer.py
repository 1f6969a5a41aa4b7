"""CHGNet relaxation: batched FIRE over many structures, or one ASE relaxation at a time.

``mode="batched"`` (default) relaxes the whole list with :func:`relax.batched_fire.batched_fire`:
one CHGNet forward pass per step over every structure still moving. ``mode="sequential"`` runs
ASE's ``FIRE(FrechetCellFilter(atoms))`` with CHGNet's ASE calculator on one structure at a time;
both modes use the same optimiser parameters and convergence criterion, so they give the same
result up to float32 noise (see ``benchmarks/bench_relax.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, ClassVar, Literal

import numpy as np
from ase import units
from pymatgen.core import Structure
from tqdm.auto import tqdm

from relax.base import DEFAULT_MAX_ATOMS, DEFAULT_MIN_DISTANCE, Relaxer, RelaxResult
from relax.batched_fire import Evaluation, FireOutcome, FireParameters, batched_fire
from relax.chgnet_model import (
    evaluate_structures,
    load_chgnet,
    make_structure,
    supported_elements,
)

Mode = Literal["batched", "sequential"]


class CHGNetRelaxer(Relaxer):
    """Relax structures with the pretrained CHGNet universal potential.

    Parameters
    ----------
    fmax
        Convergence threshold (eV/Å) on the largest generalised force: atom forces and the
        cell rows of the Fréchet cell parametrisation (≈ ``V·σ/N``, eV).
    max_steps
        Largest number of FIRE steps per structure.
    relax_cell
        Relax the cell together with the positions.
    mode
        ``"batched"`` (one forward pass per step for all structures) or ``"sequential"``.
    model_name
        CHGNet version shipped in the wheel (``"0.3.0"``).
    max_batch_atoms
        Largest number of atoms in one forward pass.
    fire
        Overrides of :class:`relax.batched_fire.FireParameters` (ASE's FIRE defaults).
    max_atoms, min_distance
        Input-check limits (see :func:`relax.base.check_structure`).
    progress
        Show a progress bar (not part of the settings: it does not change results).
    """

    name: ClassVar[str] = "chgnet"

    def __init__(
        self,
        *,
        fmax: float = 0.05,
        max_steps: int = 500,
        relax_cell: bool = True,
        mode: Mode = "batched",
        model_name: str = "0.3.0",
        max_batch_atoms: int = 2048,
        fire: dict[str, float] | None = None,
        max_atoms: int = DEFAULT_MAX_ATOMS,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        progress: bool = False,
    ) -> None:
        super().__init__(max_atoms=max_atoms, min_distance=min_distance)
        if mode not in ("batched", "sequential"):
            raise ValueError(f"CHGNet mode must be 'batched' or 'sequential', not {mode!r}")
        if fmax <= 0 or max_steps < 0:
            raise ValueError(f"need fmax > 0 and max_steps >= 0 (got {fmax}, {max_steps})")
        self.fmax = float(fmax)
        self.max_steps = int(max_steps)
        self.relax_cell = bool(relax_cell)
        self.mode: Mode = mode
        self.model_name = model_name
        self.max_batch_atoms = int(max_batch_atoms)
        self.fire = FireParameters(**(fire or {}))
        self.progress = progress

    def settings(self) -> dict[str, Any]:
        """Return the settings that determine the result (the mode does not)."""
        return {
            "model": f"CHGNet {self.model_name}",
            "optimizer": "FIRE",
            "cell_filter": "Frechet" if self.relax_cell else None,
            "fmax": self.fmax,
            "max_steps": self.max_steps,
            "relax_cell": self.relax_cell,
            "fire": asdict(self.fire),
            **self.check_settings(),
        }

    def supported_elements(self) -> frozenset[str]:
        """Return the elements CHGNet embeds (H..Pu)."""
        return supported_elements()

    # -- relaxation ----------------------------------------------------------------------------
    def _relax_valid(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        if self.mode == "sequential":
            return [self._relax_one_ase(sid, s) for sid, s in self._progress_iter(items)]
        return self._relax_batched(items)

    def _progress_iter(self, items: Sequence[tuple[str, Structure]]) -> Any:
        return tqdm(items, desc="CHGNet relax (sequential)", disable=not self.progress)

    def _relax_batched(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        model = load_chgnet(self.model_name)
        species = [[site.specie.symbol for site in s] for _, s in items]
        start = time.perf_counter()

        def evaluate(
            idx: Sequence[int], carts: Sequence[np.ndarray], cells: Sequence[np.ndarray]
        ) -> list[Evaluation]:
            structures = [
                make_structure(species[i], pos, cell)
                for i, pos, cell in zip(idx, carts, cells, strict=True)
            ]
            return evaluate_structures(
                model, structures, max_batch_atoms=self.max_batch_atoms, stress=self.relax_cell
            )

        bar = tqdm(
            total=self.max_steps,
            desc=f"CHGNet batched FIRE ({len(items)} structures)",
            disable=not self.progress,
        )

        def progress(step: int, n_active: int) -> None:
            bar.update(1)
            bar.set_postfix(moving=n_active)

        try:
            outcomes = batched_fire(
                [s.cart_coords for _, s in items],
                [s.lattice.matrix for _, s in items],
                evaluate,
                fmax=self.fmax,
                max_steps=self.max_steps,
                relax_cell=self.relax_cell,
                params=self.fire,
                progress=progress,
            )
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        share = elapsed / max(len(items), 1)
        return [
            self._result(sid, s, species[i], out, share, {"batch_wall_time_s": elapsed})
            for i, ((sid, s), out) in enumerate(zip(items, outcomes, strict=True))
        ]

    def _relax_one_ase(self, sid: str, structure: Structure) -> RelaxResult:
        """Relax one structure with ASE FIRE (+ FrechetCellFilter) and CHGNet's calculator."""
        from ase.filters import FrechetCellFilter
        from ase.optimize import FIRE
        from chgnet.model.dynamics import CHGNetCalculator
        from pymatgen.io.ase import AseAtomsAdaptor

        start = time.perf_counter()
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = CHGNetCalculator(
            model=load_chgnet(self.model_name), use_device="cpu", on_isolated_atoms="error"
        )
        try:
            initial = Evaluation(energy=float(atoms.get_potential_energy()))
            target = FrechetCellFilter(atoms) if self.relax_cell else atoms
            fire = self.fire
            opt = FIRE(
                target,
                logfile=None,
                dt=fire.dt,
                maxstep=fire.maxstep,
                dtmax=fire.dtmax,
                Nmin=fire.n_min,
                finc=fire.finc,
                fdec=fire.fdec,
                astart=fire.astart,
                fa=fire.fa,
                a=fire.astart,
            )
            converged = bool(opt.run(fmax=self.fmax, steps=self.max_steps))
            generalised = target.get_forces()
            final = Evaluation(
                energy=float(atoms.get_potential_energy()),
                forces=np.asarray(atoms.get_forces(), float),
                stress=np.asarray(atoms.get_stress(voigt=False), float)
                if self.relax_cell
                else None,
            )
        except Exception as exc:
            return RelaxResult.failure(
                sid, self, f"CHGNet/ASE relaxation failed: {exc}", structure=structure
            )
        outcome = FireOutcome(
            positions=atoms.get_positions(),
            cell=atoms.cell.array,
            initial=initial,
            final=final,
            n_steps=int(opt.nsteps),
            converged=converged,
            max_force=float(np.linalg.norm(generalised, axis=1).max()),
        )
        species = [site.specie.symbol for site in structure]
        return self._result(
            sid, structure, species, outcome, time.perf_counter() - start, {"mode": "sequential"}
        )

    def _result(
        self,
        sid: str,
        structure: Structure,
        species: list[str],
        out: FireOutcome,
        wall_time: float,
        extra: dict[str, Any],
    ) -> RelaxResult:
        if out.error is not None or out.final is None or out.initial is None:
            return RelaxResult.failure(
                sid,
                self,
                out.error or "CHGNet produced no evaluation",
                structure=structure,
                wall_time_s=wall_time,
            )
        n = len(structure)
        final_structure = make_structure(species, out.positions, out.cell)
        final_structure = Structure.from_sites(final_structure.sites, to_unit_cell=True)
        stress = out.final.stress
        return RelaxResult(
            structure_id=sid,
            relaxer=self.name,
            settings=self.settings(),
            settings_hash=self.settings_hash,
            formula=structure.composition.reduced_formula,
            n_sites=n,
            initial_energy_eV=out.initial.energy,
            initial_energy_per_atom_eV=out.initial.energy / n,
            final_structure=final_structure.as_dict(),
            final_energy_eV=out.final.energy,
            final_energy_per_atom_eV=out.final.energy / n,
            forces=np.asarray(out.final.forces).tolist(),
            stress=None if stress is None else (np.asarray(stress) / units.GPa).tolist(),
            n_ionic_steps=out.n_steps,
            converged=out.converged,
            status="ok" if out.converged else "not_converged",
            wall_time_s=wall_time,
            warnings=[]
            if out.converged
            else [f"not converged after {out.n_steps} steps (max force {out.max_force:.3g})"],
            extra={"max_generalised_force": out.max_force, "mode": self.mode, **extra},
        )

    # -- single point --------------------------------------------------------------------------
    def single_point(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        """CHGNet energy, forces and stress of each structure as given (one batched pass)."""
        return self._run_checked(items, self._single_point_valid)

    def _single_point_valid(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        start = time.perf_counter()
        evals = evaluate_structures(
            load_chgnet(self.model_name),
            [s for _, s in items],
            max_batch_atoms=self.max_batch_atoms,
        )
        share = (time.perf_counter() - start) / max(len(items), 1)
        results = []
        for (sid, s), ev in zip(items, evals, strict=True):
            out = FireOutcome(
                positions=s.cart_coords,
                cell=s.lattice.matrix,
                initial=ev,
                final=ev,
                error=ev.error,
                converged=False,
            )
            res = self._result(sid, s, [site.specie.symbol for site in s], out, share, {})
            if res.error is None:
                res = res.model_copy(
                    update={"status": "ok", "warnings": [], "extra": {"single_point": True}}
                )
            results.append(res)
        return results
