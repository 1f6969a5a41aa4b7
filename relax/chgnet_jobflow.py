"""CHGNet relaxation as a jobflow job through atomate2, for users who want its task document.

atomate2 0.1.5 relaxes with ASE ``FIRE`` + ``FrechetCellFilter`` by default, the same optimiser
and criterion as :class:`relax.chgnet_relaxer.CHGNetRelaxer`; its job returns atomate2's
``ForceFieldTaskDocument`` and writes large data to the ``data`` additional store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker
    from pymatgen.core import Structure

    from relax.base import RelaxResult


def chgnet_relax_maker(
    *,
    fmax: float = 0.05,
    steps: int = 500,
    relax_cell: bool = True,
    name: str = "CHGNet relax",
    pressure_gpa: float = 0.0,
) -> ForceFieldRelaxMaker:
    """Build atomate2's CHGNet relaxation Maker with dftloop's default criteria.

    Parameters
    ----------
    fmax
        Convergence threshold of the FIRE optimiser (eV/Å, cell rows included).
    steps
        Largest number of optimiser steps.
    relax_cell
        Relax the cell together with the positions.
    name
        Name of the jobflow job.
    pressure_gpa
        External pressure, GPa (the cell filter's ``scalar_pressure``).

    Returns
    -------
    ForceFieldRelaxMaker
        ``ForceFieldRelaxMaker(force_field_name="CHGNet", ...)``; call ``.make(structure)`` for
        a job and run it with ``jobflow.run_locally`` or a jobflow manager.
    """
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker

    from relax.protocol import EV_PER_GPA_A3

    return ForceFieldRelaxMaker(
        name=name,
        force_field_name="CHGNet",
        relax_cell=relax_cell,
        steps=int(steps),
        relax_kwargs={
            "fmax": float(fmax),
            "filter_kwargs": {"scalar_pressure": float(pressure_gpa) * EV_PER_GPA_A3},
        },
        optimizer_kwargs={"optimizer": "FIRE"},
    )


def result_from_task_document(
    structure_id: str, structure: Structure, document: Any, *, settings: dict[str, Any]
) -> RelaxResult:
    """Convert atomate2's force-field task document to a :class:`relax.base.RelaxResult`.

    Parameters
    ----------
    structure_id
        Id of the relaxed structure.
    structure
        The input structure.
    document
        The job output (``ForceFieldTaskDocument`` or its dict).
    settings
        The settings to record (e.g. the Maker's ``as_dict()`` reduced to its criteria).

    Returns
    -------
    RelaxResult
        With relaxer ``"chgnet-atomate2"``.
    """
    from relax.base import RelaxResult, settings_hash

    doc = document if isinstance(document, dict) else document.model_dump()
    output = doc.get("output") or {}
    n = len(structure)
    steps = output.get("ionic_steps") or []
    final_structure = doc.get("structure") or output.get("structure")
    if hasattr(final_structure, "as_dict"):
        final_structure = final_structure.as_dict()
    energy = output.get("energy")
    initial = steps[0].get("energy") if steps and isinstance(steps[0], dict) else None
    converged = bool(doc.get("is_force_converged"))
    return RelaxResult(
        structure_id=structure_id,
        relaxer="chgnet-atomate2",
        settings=settings,
        settings_hash=settings_hash(settings),
        formula=structure.composition.reduced_formula,
        n_sites=n,
        initial_energy_eV=initial,
        initial_energy_per_atom_eV=None if initial is None else initial / n,
        final_structure=final_structure,
        final_energy_eV=energy,
        final_energy_per_atom_eV=None if energy is None else energy / n,
        forces=output.get("forces"),
        stress=_kbar_to_ase_gpa(output.get("stress")),
        n_ionic_steps=int(output.get("n_steps") or max(len(steps) - 1, 0)),
        converged=converged,
        status="ok" if converged else "not_converged",
    )


def _kbar_to_ase_gpa(stress: Any) -> list[list[float]] | None:
    """atomate2 stores stress in kbar with the VASP sign (compressive positive): to ASE GPa."""
    if stress is None:
        return None
    return [[-float(v) / 10.0 for v in row] for row in stress]
