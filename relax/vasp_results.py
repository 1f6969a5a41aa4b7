"""Map atomate2 task documents (VASP ``TaskDoc``, force-field task documents) to RelaxResult.

Units follow :mod:`relax.base`: eV, eV/Å, and stress in GPa with the ASE sign convention. Both
VASP and atomate2's force-field documents store stress in kbar with VASP's sign (positive =
compressive), so ``stress_GPa = -0.1 * stress_kbar``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monty.io import zopen
from pymatgen.core import Structure

from relax.base import RelaxResult

KBAR_TO_ASE_GPA = -0.1
"""Factor from a VASP-sign stress in kbar to an ASE-sign stress in GPa."""


def stress_kbar_to_gpa(stress: Any) -> list[list[float]] | None:
    """Convert a 3x3 VASP-sign stress in kbar to an ASE-sign stress in GPa.

    Parameters
    ----------
    stress
        A 3x3 nested sequence (kbar, positive = compressive) or ``None``.

    Returns
    -------
    list of list of float or None
        The 3x3 stress in GPa, positive = tensile (the cell would like to shrink).
    """
    if stress is None:
        return None
    return (KBAR_TO_ASE_GPA * np.asarray(stress, dtype=float)).tolist()


def _structure_dict(value: Any) -> dict[str, Any] | None:
    """Return a ``Structure.as_dict()`` from a stored structure (dict or Structure)."""
    if value is None:
        return None
    if isinstance(value, Structure):
        return value.as_dict()
    return Structure.from_dict(value).as_dict()


def _per_atom(energy: float | None, n_sites: int) -> float | None:
    return None if energy is None or n_sites == 0 else energy / n_sites


def vasp_stage_result(structure_id: str, doc: dict[str, Any]) -> RelaxResult:
    """Build the RelaxResult of one VASP relaxation from its task document.

    Parameters
    ----------
    structure_id
        The caller's id of the structure.
    doc
        An atomate2/emmet VASP ``TaskDoc`` as stored (``JobStore.get_output(..., load=True)``).

    Returns
    -------
    RelaxResult
        ``relaxer`` is the job's task label (e.g. ``"MP GGA relax 2"``); the initial energy is
        that of the first ionic step (the structure VASP was given), ``converged`` is the
        task document's ``state == "successful"`` (electronic and ionic convergence as judged
        by pymatgen's ``Vasprun.converged``), ``n_ionic_steps`` the ionic steps of the run.
    """
    output = doc.get("output") or {}
    calc = (doc.get("calcs_reversed") or [{}])[0]
    calc_output = calc.get("output") or {}
    steps = calc_output.get("ionic_steps") or []
    structure = output.get("structure") or doc.get("structure")
    n_sites = len(Structure.from_dict(structure)) if structure else 0
    initial = steps[0].get("e_0_energy") if steps else None
    final = output.get("energy")
    state = str(doc.get("state", "")).split(".")[-1].lower()
    converged = state == "successful"
    custodian = custodian_corrections(doc.get("custodian") or [])
    incar = (calc.get("input") or {}).get("incar") or {}
    return RelaxResult(
        structure_id=structure_id,
        relaxer=str(doc.get("task_label") or "vasp"),
        formula=doc.get("formula_pretty"),
        n_sites=n_sites or None,
        initial_energy_eV=initial,
        initial_energy_per_atom_eV=_per_atom(initial, n_sites),
        final_structure=_structure_dict(structure),
        final_energy_eV=final,
        final_energy_per_atom_eV=output.get("energy_per_atom", _per_atom(final, n_sites)),
        forces=output.get("forces"),
        stress=stress_kbar_to_gpa(output.get("stress")),
        n_ionic_steps=len(steps),
        converged=converged,
        status="ok" if converged else "not_converged",
        dft_available=True,
        warnings=[f"custodian corrected {c['errors']}" for c in custodian],
        extra={
            "dir_name": doc.get("dir_name"),
            "vasp_version": doc.get("vasp_version"),
            "calc_type": str(calc.get("calc_type", "")),
            "state": state,
            "custodian_corrections": custodian,
            "incar": {
                k: incar.get(k) for k in ("ENCUT", "ISMEAR", "SIGMA", "ISPIN", "EDIFFG", "NSW")
            },
        },
    )


def forcefield_stage_result(structure_id: str, doc: dict[str, Any]) -> RelaxResult:
    """Build the RelaxResult of an atomate2 force-field relaxation (the CHGNet pre-relax).

    Parameters
    ----------
    structure_id
        The caller's id of the structure.
    doc
        An atomate2 ``ForceFieldTaskDocument`` as stored (data-store references loaded).

    Returns
    -------
    RelaxResult
        Energies from the first and last optimiser steps; ``converged`` is the document's
        ``is_force_converged``.
    """
    output = doc.get("output") or {}
    steps = output.get("ionic_steps")
    steps = steps if isinstance(steps, list) else []
    structure = output.get("mol_or_struct") or doc.get("structure")
    n_sites = len(Structure.from_dict(structure)) if structure else 0
    initial = steps[0].get("energy") if steps else None
    final = output.get("energy")
    converged = bool(doc.get("is_force_converged"))
    return RelaxResult(
        structure_id=structure_id,
        relaxer=str(doc.get("forcefield_name") or "forcefield").removeprefix("MLFF."),
        formula=doc.get("formula_pretty"),
        n_sites=n_sites or None,
        initial_energy_eV=initial,
        initial_energy_per_atom_eV=_per_atom(initial, n_sites),
        final_structure=_structure_dict(structure),
        final_energy_eV=final,
        final_energy_per_atom_eV=output.get("energy_per_atom", _per_atom(final, n_sites)),
        forces=output.get("forces"),
        stress=stress_kbar_to_gpa(output.get("stress")),
        n_ionic_steps=int(output.get("n_steps") or len(steps)),
        converged=converged,
        status="ok" if converged else "not_converged",
        extra={"dir_name": doc.get("dir_name"), "version": doc.get("forcefield_version")},
    )


def custodian_corrections(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten custodian's run log into a list of applied corrections.

    Parameters
    ----------
    runs
        custodian's ``custodian.json`` content: one dict per custodian job with its
        ``corrections`` (each with ``errors``, ``handler``, ``actions``).

    Returns
    -------
    list of dict
        ``{"errors": [...], "handler": name, "actions": [...]}`` per correction, in order.
    """
    out = []
    for run in runs:
        for corr in run.get("corrections") or []:
            handler = corr.get("handler")
            if isinstance(handler, dict):
                handler = handler.get("@class", str(handler))
            out.append(
                {
                    "errors": list(corr.get("errors") or []),
                    "handler": str(handler) if handler is not None else None,
                    "actions": corr.get("actions"),
                }
            )
    return out


def read_custodian_log(job_dir: Path) -> list[dict[str, Any]]:
    """Read the corrections from ``custodian.json`` (or ``custodian.json.gz``) in ``job_dir``.

    Parameters
    ----------
    job_dir
        A VASP job directory.

    Returns
    -------
    list of dict
        See :func:`custodian_corrections`; empty when there is no readable log.
    """
    for name in ("custodian.json", "custodian.json.gz"):
        path = Path(job_dir) / name
        if path.is_file():
            try:
                with zopen(path, "rt") as fh:
                    return custodian_corrections(json.load(fh))
            except (OSError, ValueError):
                return []
    return []


def summarise_corrections(corrections: Sequence[dict[str, Any]]) -> str:
    """Describe custodian corrections in one line (errors and the INCAR/KPOINTS changes).

    Parameters
    ----------
    corrections
        As returned by :func:`custodian_corrections`.

    Returns
    -------
    str
        E.g. ``"zpotrf -> INCAR ISYM=0, POTIM=0.25; zpotrf -> INCAR POTIM=0.12"``.
    """
    parts = []
    for corr in corrections:
        changes = []
        for action in corr.get("actions") or []:
            target = action.get("dict") or action.get("file") or "?"
            for verb, payload in (action.get("action") or {}).items():
                if isinstance(payload, dict) and verb in ("_set", "_unset"):
                    sets = ", ".join(
                        f"{k}={_short(v)}" if verb == "_set" else f"-{k}"
                        for k, v in payload.items()
                    )
                    changes.append(f"{target} {sets}")
                else:
                    changes.append(f"{target} {verb}")
        errors = ",".join(corr.get("errors") or []) or "?"
        parts.append(f"{errors} -> {'; '.join(changes) or 'no action'}")
    return "; ".join(parts)


def _short(value: Any) -> str:
    """Return a short text for a correction value (structures and long lists are elided)."""
    text = "<structure>" if isinstance(value, dict) and "lattice" in value else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
