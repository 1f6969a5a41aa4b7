"""CHGNet relaxation: batched FIRE over many structures, or one ASE relaxation at a time.

``mode="batched"`` (default) relaxes the whole list with :func:`relax.batched_fire.batched_fire`:
one CHGNet forward pass per step over every structure still moving. ``mode="sequential"`` runs
ASE's ``FIRE(FrechetCellFilter(atoms))`` with CHGNet's ASE calculator on one structure at a time;
both modes use the same optimiser parameters and convergence criterion, so they give the same
result up to float32 noise (see ``benchmarks/bench_relax.py``).

The protocol (:class:`relax.protocol.RelaxProtocol`) sets the pressure (the cell filter's scalar
pressure: the cell relaxes to the minimum of ``E + pV``) and the dispersion: with ``"d3bj"`` the
energy, forces and stress are CHGNet's plus DFT-D3(BJ)'s (:mod:`relax.dispersion`), in both
modes (ASE's ``SumCalculator`` in the sequential one).
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
from relax.chgnet_graphs import DEFAULT_SKIN, GraphCache
from relax.chgnet_model import (
    evaluate_graphs,
    evaluate_structures,
    load_chgnet,
    make_structure,
    resolve_device,
    supported_elements,
)
from relax.protocol import ProtocolSpec

Mode = Literal["batched", "sequential"]

DEFAULT_RELAX_BATCH_ATOMS = 32
"""Atoms per CHGNet pass in batched relaxations (measured fastest per atom on a 2-core CPU)."""


class CHGNetRelaxer(Relaxer):
    """Relax structures with the pretrained CHGNet universal potential.

    Parameters
    ----------
    protocol
        The relaxation protocol (dataset name, dict of fields or protocol; ``None``: 0 GPa,
        no dispersion): pressure, dispersion, ``fmax``, ``max_steps``, ``relax_cell``.
    fmax
        Convergence threshold (eV/Å) on the largest generalised force: atom forces and the
        cell rows of the Fréchet cell parametrisation (≈ ``V·(σ + p)/N``, eV); overrides the
        protocol's.
    max_steps
        Largest number of FIRE steps per structure (overrides the protocol's).
    relax_cell
        Relax the cell together with the positions (overrides the protocol's).
    mode
        ``"batched"`` (one forward pass per step for all structures) or ``"sequential"``.
    model_name
        CHGNet version shipped in the wheel (``"0.3.0"``).
    max_batch_atoms
        Largest number of atoms in one CHGNet forward pass of the batched relaxation (the FIRE
        step is always one call for all structures). On this 2-core CPU small passes are
        fastest per atom (docs/benchmarks.md); on a GPU use thousands.
    neighbor_skin
        Verlet skin (Å) of the neighbour candidates reused between FIRE steps
        (:class:`relax.chgnet_graphs.GraphCache`); ``0`` searches again at every step. It does
        not change results (the graph of a geometry is the same either way).
    fire
        Overrides of :class:`relax.batched_fire.FireParameters` (ASE's FIRE defaults).
    max_atoms, min_distance
        Input-check limits (see :func:`relax.base.check_structure`).
    workers
        Processes for the batched mode: the structures are split into this many groups of
        about equal atom count, each relaxed by its own batched FIRE in a spawned process with
        one torch thread (does not change results: every structure follows its own FIRE).
    device
        Torch device of CHGNet (``"cpu"``, ``"cuda"``, ...); ``None`` (default) takes CUDA or
        MPS when present, else the CPU (:func:`relax.chgnet_model.resolve_device`). Not part of
        the settings: the result is the same up to float32 round-off; it is recorded in
        ``extra["device"]``.
    progress
        Show a progress bar (not part of the settings: it does not change results).
    """

    name: ClassVar[str] = "chgnet"

    def __init__(
        self,
        *,
        protocol: ProtocolSpec = None,
        fmax: float | None = None,
        max_steps: int | None = None,
        relax_cell: bool | None = None,
        mode: Mode = "batched",
        model_name: str = "0.3.0",
        max_batch_atoms: int = DEFAULT_RELAX_BATCH_ATOMS,
        neighbor_skin: float = DEFAULT_SKIN,
        fire: dict[str, float] | None = None,
        max_atoms: int = DEFAULT_MAX_ATOMS,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        workers: int = 1,
        device: str | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__(max_atoms=max_atoms, min_distance=min_distance, protocol=protocol)
        if (fmax is not None and fmax <= 0) or (max_steps is not None and max_steps < 0):
            raise ValueError(f"need fmax > 0 and max_steps >= 0 (got {fmax}, {max_steps})")
        self.protocol = self.protocol.with_overrides(
            fmax=fmax, max_steps=max_steps, relax_cell=relax_cell
        )
        fmax, max_steps = self.protocol.fmax, self.protocol.max_steps
        relax_cell = self.protocol.relax_cell
        self.device = resolve_device(device)
        self._init_kwargs: dict[str, Any] = {
            "protocol": self.protocol,
            "fmax": fmax,
            "max_steps": max_steps,
            "relax_cell": relax_cell,
            "model_name": model_name,
            "max_batch_atoms": max_batch_atoms,
            "neighbor_skin": neighbor_skin,
            "fire": fire,
            "max_atoms": max_atoms,
            "min_distance": min_distance,
            "device": self.device,
        }
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = int(workers)
        if mode not in ("batched", "sequential"):
            raise ValueError(f"CHGNet mode must be 'batched' or 'sequential', not {mode!r}")
        self.fmax = float(fmax)
        self.max_steps = int(max_steps)
        self.relax_cell = bool(relax_cell)
        self.mode: Mode = mode
        self.model_name = model_name
        self.max_batch_atoms = int(max_batch_atoms)
        if neighbor_skin < 0:
            raise ValueError(f"neighbor_skin must be >= 0, got {neighbor_skin}")
        self.neighbor_skin = float(neighbor_skin)
        self.fire = FireParameters(**(fire or {}))
        self.progress = progress

    def settings(self) -> dict[str, Any]:
        """Return the settings that determine the result (the mode does not).

        ``fmax``, ``max_steps`` and ``relax_cell`` repeat the protocol's values.
        """
        return {
            "model": f"CHGNet {self.model_name}",
            "dispersion": "DFT-D3(BJ) PBE, simple-DFT-D3"
            if self.protocol.dispersion == "d3bj"
            else None,
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
        if self.workers > 1 and len(items) > 1:
            return self._relax_in_processes(items)
        return self._relax_batched(items)

    def _relax_in_processes(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        """Split ``items`` into ``workers`` groups of similar atom count, one process each."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        groups = split_by_atoms([len(s) for _, s in items], self.workers)
        results: list[RelaxResult | None] = [None] * len(items)
        context = multiprocessing.get_context("spawn")  # no fork of a process running torch
        with ProcessPoolExecutor(max_workers=len(groups), mp_context=context) as pool:
            futures = [
                pool.submit(_relax_group, self._init_kwargs, [items[i] for i in group])
                for group in groups
            ]
            for group, future in zip(groups, futures, strict=True):
                for i, res in zip(group, future.result(), strict=True):
                    results[i] = res.model_copy(
                        update={"extra": {**res.extra, "workers": len(groups)}}
                    )
        return [r for r in results if r is not None]

    def _progress_iter(self, items: Sequence[tuple[str, Structure]]) -> Any:
        return tqdm(items, desc="CHGNet relax (sequential)", disable=not self.progress)

    def _relax_batched(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        model = load_chgnet(self.model_name, self.device)
        species = [[site.specie.symbol for site in s] for _, s in items]
        numbers = [[site.specie.Z for site in s] for _, s in items]
        converter = model.graph_converter
        graphs = GraphCache(
            [[site.specie.Z for site in s] for _, s in items],
            atom_cutoff=converter.atom_graph_cutoff,
            bond_cutoff=converter.bond_graph_cutoff,
            skin=self.neighbor_skin,
        )
        start = time.perf_counter()

        def evaluate(
            idx: Sequence[int], carts: Sequence[np.ndarray], cells: Sequence[np.ndarray]
        ) -> list[Evaluation]:
            batch: list[Any] = []
            for i, pos, cell in zip(idx, carts, cells, strict=True):
                try:
                    batch.append(graphs.graph(i, pos, cell, graph_id=items[i][0]))
                except Exception as exc:  # this structure fails, the others go on
                    batch.append(exc)
            evals = evaluate_graphs(
                model, batch, max_batch_atoms=self.max_batch_atoms, stress=self.relax_cell
            )
            return self._add_dispersion(evals, [numbers[i] for i in idx], carts, cells)

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
                pressure=self.protocol.pressure_ev_per_a3,
            )
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        share = elapsed / max(len(items), 1)
        return [
            self._result(
                sid,
                s,
                species[i],
                out,
                share,
                {"batch_wall_time_s": elapsed, "batch_neighbor_searches": graphs.n_searches},
            )
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
        chgnet_calc = CHGNetCalculator(
            model=load_chgnet(self.model_name, self.device),
            use_device=self.device,
            on_isolated_atoms="error",
        )
        if self.protocol.dispersion == "d3bj":
            from ase.calculators.mixing import SumCalculator

            from relax.dispersion import d3_calculator

            atoms.calc = SumCalculator([chgnet_calc, d3_calculator()])
        else:
            atoms.calc = chgnet_calc
        try:
            initial = Evaluation(energy=float(atoms.get_potential_energy()))
            target = (
                FrechetCellFilter(atoms, scalar_pressure=self.protocol.pressure_ev_per_a3)
                if self.relax_cell
                else atoms
            )
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
            extra={
                "max_generalised_force": out.max_force,
                "mode": self.mode,
                "device": self.device,
                **extra,
            },
        )

    def _add_dispersion(
        self,
        evals: list[Evaluation],
        numbers: Sequence[Sequence[int]],
        carts: Sequence[np.ndarray],
        cells: Sequence[np.ndarray],
    ) -> list[Evaluation]:
        """Add the D3(BJ) energy, forces and stress to CHGNet's (no change without dispersion)."""
        if self.protocol.dispersion != "d3bj":
            return evals
        from relax.dispersion import d3_terms

        out = []
        for ev, z, pos, cell in zip(evals, numbers, carts, cells, strict=True):
            if ev.error is not None:
                out.append(ev)
                continue
            try:
                d3 = d3_terms(z, np.asarray(pos, float), np.asarray(cell, float))
            except Exception as exc:  # this structure fails, the others go on
                out.append(Evaluation(error=f"DFT-D3 failed: {type(exc).__name__}: {exc}"))
                continue
            out.append(
                Evaluation(
                    energy=ev.energy + d3.energy,
                    forces=np.asarray(ev.forces, float) + d3.forces,
                    stress=None if ev.stress is None else np.asarray(ev.stress) + d3.stress,
                    error=None,
                )
            )
        return out

    # -- single point --------------------------------------------------------------------------
    def single_point(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        """CHGNet energy, forces and stress of each structure as given (one batched pass)."""
        return self._run_checked(items, self._single_point_valid)

    def _single_point_valid(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        start = time.perf_counter()
        evals = evaluate_structures(
            load_chgnet(self.model_name, self.device),
            [s for _, s in items],
            max_batch_atoms=self.max_batch_atoms,
        )
        evals = self._add_dispersion(
            evals,
            [[site.specie.Z for site in s] for _, s in items],
            [s.cart_coords for _, s in items],
            [s.lattice.matrix for _, s in items],
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


def split_by_atoms(n_atoms: Sequence[int], n_groups: int) -> list[list[int]]:
    """Split item indices into at most ``n_groups`` groups of about equal total atoms.

    Parameters
    ----------
    n_atoms
        Atoms of each item.
    n_groups
        Wanted number of groups.

    Returns
    -------
    list of list of int
        Non-empty groups of indices, each in increasing order (largest items placed first,
        each into the group with the fewest atoms so far).
    """
    n_groups = max(1, min(n_groups, len(n_atoms)))
    groups: list[list[int]] = [[] for _ in range(n_groups)]
    load = [0] * n_groups
    for i in sorted(range(len(n_atoms)), key=lambda k: -n_atoms[k]):
        g = load.index(min(load))
        groups[g].append(i)
        load[g] += n_atoms[i]
    return [sorted(g) for g in groups if g]


def _relax_group(kwargs: dict[str, Any], items: list[tuple[str, Structure]]) -> list[RelaxResult]:
    """Worker-process entry: relax one group with a one-thread batched CHGNetRelaxer."""
    import torch

    torch.set_num_threads(1)
    return CHGNetRelaxer(mode="batched", workers=1, **kwargs)._relax_batched(items)
