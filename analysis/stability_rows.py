"""Per-structure rows of a stability analysis: one generated (or test-split) structure each.

Pure functions on pymatgen structures and relaxation documents (``RelaxResult.model_dump()`` or
their stored copies); the orchestration reads the documents from the store and passes them in.

A row (:func:`structure_row`) holds the force-field comparison of the structure as given with its
relaxed form: ``delta_e_mev_per_atom`` (``ΔH`` when the relaxation ran at ``p ≠ 0``, see
``energy_quantity`` and :mod:`analysis.enthalpy`), ``rmsd`` / ``rmsd_unscaled`` and their
``matched`` flags, ``delta_volume_frac``, space groups before and after (spglib, symprec 0.1),
carbon coordination counts of the relaxed structure, volume per atom and density.
:func:`dft_fields` adds the same quantities of the DFT stage under ``dft_*`` with the path the
DFT started from (``dft_path``). Keys starting with ``_`` hold structures (as dicts) for the
hull and S.U.N. steps; :func:`public_row` drops them before a row is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pymatgen.core import Structure

from analysis.enthalpy import energy_pair
from analysis.structure_metrics import (
    HYBRIDISATION,
    coordination_numbers,
    density,
    rmsd_to_relaxed,
    space_group,
    volume_change,
    volume_per_atom,
)

DATASET_LABEL = "test split"
"""Model label of the dataset's own floor: test-split structures relaxed the same way."""

USABLE_STATUSES = frozenset({"ok", "not_converged"})
"""Relaxation statuses whose final structure and energy are used."""

DFT_PATHS: dict[str, str] = {
    "pre-relaxed": "DFT relaxation started from the force-field-relaxed structure (the DFT "
    "minimum in the force field's basin); ΔE against a DFT single point of the generated "
    "structure",
    "direct": "DFT relaxation started from the generated structure (no force-field pre-relax); "
    "ΔE against the first SCF of that relaxation",
}
"""Where the DFT numbers of a row come from (``dft_path``)."""


def usable(doc: Mapping[str, Any] | None) -> bool:
    """Whether a relaxation document has a usable status and a final structure."""
    return bool(doc) and doc.get("status") in USABLE_STATUSES and bool(doc.get("final_structure"))


def usable_energy(doc: Mapping[str, Any] | None, initial: Structure | None = None) -> float | None:
    """Final ``E/N`` (``H/N`` at ``p ≠ 0``) of a usable relaxation document, else ``None``.

    Parameters
    ----------
    doc
        The relaxation document.
    initial
        The structure as given (unused for the final value; accepted for symmetry).

    Returns
    -------
    float or None
        eV/atom.
    """
    if not doc or doc.get("status") not in USABLE_STATUSES:
        return None
    value = energy_pair(doc, initial).final_per_atom_eV
    return value if value is not None and math.isfinite(value) else None


def _delta_mev(initial: float | None, final: float | None) -> float | None:
    if initial is None or final is None:
        return None
    value = 1000.0 * (float(initial) - float(final))
    return value if math.isfinite(value) else None


def _coordination(structure: Structure) -> dict[str, int]:
    counts = {"n_sp": 0, "n_sp2": 0, "n_sp3": 0, "n_other_coordination": 0}
    for cn in coordination_numbers(structure):
        label = HYBRIDISATION.get(cn)
        counts[f"n_{label}" if label else "n_other_coordination"] += 1
    return counts


def _comparison(prefix: str, generated: Structure, relaxed: Structure) -> dict[str, Any]:
    """RMSDs, volume change and the relaxed structure's space group under ``prefix``."""
    rmsd = rmsd_to_relaxed(generated, relaxed, scale=True)
    unscaled = rmsd_to_relaxed(generated, relaxed, scale=False)
    number, symbol = space_group(relaxed)
    return {
        f"{prefix}rmsd": rmsd,
        f"{prefix}matched": rmsd is not None,
        f"{prefix}rmsd_unscaled": unscaled,
        f"{prefix}matched_unscaled": unscaled is not None,
        f"{prefix}delta_volume_frac": volume_change(generated, relaxed),
        f"{prefix}relaxed_space_group": number,
        f"{prefix}relaxed_space_group_symbol": symbol,
    }


def structure_row(
    structure_id: str,
    generated: Structure,
    doc: Mapping[str, Any] | None,
    *,
    model: str,
    structure_hash: str | None = None,
    settings_hash: str | None = None,
) -> dict[str, Any]:
    """The force-field row of one structure.

    Parameters
    ----------
    structure_id
        Sample id (or ``test:<material id>`` for the dataset's own structures).
    generated
        The structure as generated (or as stored in the test split).
    doc
        Its relaxation document, ``None`` when there is none.
    model
        The model (or dataset) label of the row.
    structure_hash, settings_hash
        Store keys of the relaxation, recorded in the row.

    Returns
    -------
    dict
        ``model``, ``structure_id``, ``structure_hash``, ``settings_hash``, ``formula``,
        ``n_sites``, ``volume_per_atom``, ``density``, ``space_group`` (+ ``_symbol``) of the
        structure as given, ``status``, ``error``, ``pressure_gpa``, ``energy_quantity``
        (``"E"``/``"H"``), ``initial_energy_per_atom_eV``, ``energy_per_atom_eV`` (both ``H/N``
        at ``p ≠ 0``), ``delta_e_mev_per_atom``, ``rmsd``, ``matched``, ``rmsd_unscaled``,
        ``matched_unscaled``, ``delta_volume_frac``, ``relaxed_space_group`` (+ ``_symbol``),
        ``n_sp``, ``n_sp2``, ``n_sp3``, ``n_other_coordination`` (carbon atoms of the relaxed
        structure), ``dft_selected`` and the private ``_structure``/``_relaxed_structure``.
    """
    number, symbol = space_group(generated)
    row: dict[str, Any] = {
        "model": model,
        "structure_id": structure_id,
        "structure_hash": structure_hash,
        "settings_hash": settings_hash,
        "formula": generated.composition.reduced_formula,
        "n_sites": len(generated),
        "volume_per_atom": volume_per_atom(generated),
        "density": density(generated),
        "space_group": number,
        "space_group_symbol": symbol,
        "dft_selected": False,
        "_structure": generated.as_dict(),
    }
    if doc is None:
        row.update(status="not_relaxed", error=f"{structure_id}: no relaxation in the store")
        return row
    pair = energy_pair(doc, generated)
    row.update(
        status=doc.get("status"),
        error=doc.get("error"),
        pressure_gpa=pair.pressure_gpa,
        energy_quantity=pair.quantity,
        initial_energy_per_atom_eV=pair.initial_per_atom_eV,
        energy_per_atom_eV=usable_energy(doc, generated),
    )
    if not usable(doc):
        if not row["error"]:
            row["error"] = f"{structure_id}: relaxation status {doc.get('status')!r}"
        return row
    relaxed = Structure.from_dict(dict(doc["final_structure"]))
    try:
        row.update(_comparison("", generated, relaxed))
        row.update(_coordination(relaxed))
    except Exception as exc:  # one bad comparison is reported, the rest goes on
        row.update(status="analysis_failed", error=f"{structure_id}: comparison failed: {exc}")
        return row
    row["delta_e_mev_per_atom"] = _delta_mev(pair.initial_per_atom_eV, pair.final_per_atom_eV)
    row["_relaxed_structure"] = relaxed.as_dict()
    return row


def dft_fields(
    generated: Structure,
    doc: Mapping[str, Any] | None,
    path: str = "pre-relaxed",
) -> dict[str, Any]:
    """DFT columns of a row from a DFT (or force-field + DFT) relaxation document.

    ``dft_delta_e_mev_per_atom = 1000 (E_DFT(as generated) − E_DFT(relaxed))`` per atom (``H``
    at ``p ≠ 0``), both from the DFT code with the same settings: the two-stage relaxer's
    single point of the generated structure (``path="pre-relaxed"``) or the first SCF of a DFT
    relaxation that started from the generated structure (``path="direct"``). This is
    DP-CDVAE's ΔE protocol.

    Parameters
    ----------
    generated
        The structure as generated.
    doc
        The relaxation document, or ``None`` if the structure was not sent to DFT.
    path
        A key of :data:`DFT_PATHS`.

    Returns
    -------
    dict
        ``dft_path``, ``dft_status``, ``dft_error``, ``dft_pressure_gpa``,
        ``dft_energy_quantity``, ``dft_initial_energy_per_atom_eV``, ``dft_energy_per_atom_eV``,
        ``dft_converged``, ``dft_n_ionic_steps``, ``dft_wall_time_s``, and when usable
        ``dft_delta_e_mev_per_atom``, ``dft_rmsd``, ``dft_matched``, ``dft_rmsd_unscaled``,
        ``dft_matched_unscaled``, ``dft_delta_volume_frac``, ``dft_relaxed_space_group``
        (+ ``_symbol``) and the private ``_dft_structure``; empty when ``doc`` is ``None``.

    Raises
    ------
    ValueError
        For an unknown ``path``.
    """
    if path not in DFT_PATHS:
        raise ValueError(f"dft path must be one of {tuple(DFT_PATHS)}, not {path!r}")
    if doc is None:
        return {}
    pair = energy_pair(doc, generated)
    out: dict[str, Any] = {
        "dft_path": path,
        "dft_status": doc.get("status"),
        "dft_error": doc.get("error"),
        "dft_pressure_gpa": pair.pressure_gpa,
        "dft_energy_quantity": pair.quantity,
        "dft_initial_energy_per_atom_eV": pair.initial_per_atom_eV,
        "dft_energy_per_atom_eV": pair.final_per_atom_eV,
        "dft_converged": doc.get("converged"),
        "dft_n_ionic_steps": doc.get("n_ionic_steps"),
        "dft_wall_time_s": doc.get("wall_time_s"),
    }
    if not usable(doc):
        return out
    try:
        relaxed = Structure.from_dict(dict(doc["final_structure"]))
        out.update(_comparison("dft_", generated, relaxed))
    except Exception as exc:  # one bad comparison is reported, the rest goes on
        out["dft_error"] = f"{doc.get('structure_id')}: DFT comparison failed: {exc}"
        return out
    out["dft_delta_e_mev_per_atom"] = _delta_mev(pair.initial_per_atom_eV, pair.final_per_atom_eV)
    out["_dft_structure"] = relaxed.as_dict()
    if out["dft_delta_e_mev_per_atom"] is None and out["dft_error"] is None:
        out["dft_error"] = (
            f"{doc.get('structure_id')}: no DFT energy of the structure as generated "
            "(the single point failed; see the relaxation warnings)"
        )
    return out


def unbuilt_row(structure_id: str, reason: str, *, model: str) -> dict[str, Any]:
    """Row of a sample the generator could not turn into a structure."""
    return {
        "model": model,
        "structure_id": structure_id,
        "status": "no_structure",
        "error": reason,
        "dft_selected": False,
    }


def public_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row without its private (``_``-prefixed) structure fields."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def row_structure(row: Mapping[str, Any], key: str) -> Structure | None:
    """A private structure field of a row as a Structure, or ``None``.

    ``key`` is ``"_structure"``, ``"_relaxed_structure"`` or ``"_dft_structure"``.
    """
    value = row.get(key)
    if value is None:
        return None
    return value if isinstance(value, Structure) else Structure.from_dict(dict(value))


def hull_energies(
    structures: Sequence[Structure | None],
    energies_per_atom_eV: Sequence[float | None],
    hull: Any,
) -> tuple[list[float | None], list[str | None]]:
    """Energy above the hull (eV/atom) of each structure, with a reason where there is none.

    Parameters
    ----------
    structures
        Structures (``None``: no structure).
    energies_per_atom_eV
        Their energies (or enthalpies) per atom, same method as the hull (``None``: unknown).
    hull
        The reference hull (:func:`analysis.hull.build_hull`), or ``None`` if it could not be
        built.

    Returns
    -------
    tuple
        ``(values, reasons)``: ``values[i]`` is ``None`` exactly when ``reasons[i]`` says why.
    """
    from analysis.hull import energy_above_hull

    values: list[float | None] = []
    reasons: list[str | None] = []
    for structure, energy in zip(structures, energies_per_atom_eV, strict=True):
        if hull is None:
            values.append(None)
            reasons.append("no reference hull")
        elif structure is None or energy is None:
            values.append(None)
            reasons.append("no relaxed energy")
        else:
            try:
                values.append(float(energy_above_hull(structure, energy, hull)))
                reasons.append(None)
            except ValueError as exc:
                values.append(None)
                reasons.append(str(exc))
    return values, reasons


def values_of(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """Finite values of ``key`` over ``rows`` (rows without it are skipped)."""
    out = []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


def pairs_of(
    rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str
) -> list[tuple[float, float]]:
    """``(x, y)`` pairs of rows where both values are finite numbers."""
    out = []
    for row in rows:
        x, y = row.get(x_key), row.get(y_key)
        if all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in (x, y)
        ):
            out.append((float(x), float(y)))  # type: ignore[arg-type]
    return out
