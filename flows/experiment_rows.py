"""Per-structure rows of the stability experiment: DFT selection, DFT fields, E_hull, S.U.N.

Pure functions (no Prefect): the flow in :mod:`flows.experiment` calls them with documents from
the store. A row starts as the force-field comparison of :func:`flows.tasks.analyze_task`
(``delta_e_mev_per_atom``, ``rmsd``, ``delta_volume_frac``, ``n_sites``, ``status``, ``error``)
and gains ``model``, the force-field energies, the DFT fields (``dft_*``), the energies above the
hull and the S.U.N. flags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pymatgen.core import Structure

DftSelection = Literal["smallest", "random", "lowest_energy"]
DFT_SELECTIONS: tuple[str, ...] = ("smallest", "random", "lowest_energy")

USABLE_STATUSES = frozenset({"ok", "not_converged"})
"""Relaxation statuses whose final structure and energy are used."""


def select_for_dft(
    candidates: Sequence[dict[str, Any]],
    k: int,
    selection: DftSelection | str = "smallest",
    seed: int = 0,
) -> list[str]:
    """Choose which force-field-relaxed structures get the (expensive) DFT stage.

    Parameters
    ----------
    candidates
        In sample order, dicts with ``structure_id``, ``n_sites`` and ``energy_per_atom_eV``
        (force-field relaxed energy); only structures whose force-field relaxation succeeded.
    k
        How many (all when fewer candidates).
    selection
        ``"smallest"``: fewest atoms first, ties in sample order (DFT cost grows ~N³, so this is
        the cheapest choice; it biases towards small cells). ``"random"``: a uniform random
        subset drawn with ``seed``. ``"lowest_energy"``: lowest force-field energy per atom first.
    seed
        Seed of ``"random"``.

    Returns
    -------
    list of str
        The chosen structure ids, in the chosen order (deterministic for given inputs).

    Raises
    ------
    ValueError
        For an unknown ``selection``.
    """
    if selection not in DFT_SELECTIONS:
        raise ValueError(f"dft_selection must be one of {DFT_SELECTIONS}, not {selection!r}")
    k = max(0, int(k))
    indexed = list(enumerate(candidates))
    if selection == "smallest":
        indexed.sort(key=lambda p: (int(p[1].get("n_sites") or 0), p[0]))
    elif selection == "lowest_energy":

        def energy(p: tuple[int, dict[str, Any]]) -> tuple[float, int]:
            e = p[1].get("energy_per_atom_eV")
            return (float(e) if e is not None and math.isfinite(e) else math.inf, p[0])

        indexed.sort(key=energy)
    else:
        order = np.random.default_rng(seed).permutation(len(indexed))
        indexed = [indexed[i] for i in order]
    return [str(c["structure_id"]) for _, c in indexed[:k]]


def dft_fields(generated: Structure, doc: dict[str, Any] | None) -> dict[str, Any]:
    """DFT columns of a row from a two-stage (force field + DFT) relaxation document.

    ``dft_delta_e_mev_per_atom = 1000 (E_DFT(as generated) − E_DFT(DFT-relaxed))`` per atom, both
    from the DFT code with the same settings (the two-stage relaxer's single point of the input
    and its final energy), and ``dft_rmsd`` between the generated and the DFT-relaxed structure
    (:func:`analysis.stability.compare_to_relaxed`). This is DP-CDVAE's ΔE protocol.

    Parameters
    ----------
    generated
        The structure as generated.
    doc
        The relaxation document, or ``None`` if the structure was not sent to DFT.

    Returns
    -------
    dict
        ``dft_status``, ``dft_error``, ``dft_delta_e_mev_per_atom``, ``dft_rmsd``,
        ``dft_matched``, ``dft_delta_volume_frac``, ``dft_initial_energy_per_atom_eV``,
        ``dft_energy_per_atom_eV``, ``dft_converged``, ``dft_n_ionic_steps``,
        ``dft_wall_time_s`` and, when usable, ``_dft_structure`` (the DFT-relaxed structure
        dict, for the hull; the flow drops it before writing rows); empty when ``doc`` is
        ``None``.
    """
    if doc is None:
        return {}
    from analysis.stability import compare_to_relaxed

    out: dict[str, Any] = {
        "dft_status": doc.get("status"),
        "dft_error": doc.get("error"),
        "dft_initial_energy_per_atom_eV": doc.get("initial_energy_per_atom_eV"),
        "dft_energy_per_atom_eV": doc.get("final_energy_per_atom_eV"),
        "dft_converged": doc.get("converged"),
        "dft_n_ionic_steps": doc.get("n_ionic_steps"),
        "dft_wall_time_s": doc.get("wall_time_s"),
    }
    if doc.get("status") not in USABLE_STATUSES or not doc.get("final_structure"):
        return out
    try:
        cmp = compare_to_relaxed(
            generated,
            Structure.from_dict(doc["final_structure"]),
            doc.get("initial_energy_per_atom_eV"),
            doc.get("final_energy_per_atom_eV"),
        )
    except Exception as exc:  # one bad comparison is reported, the rest goes on
        out["dft_error"] = f"{doc.get('structure_id')}: DFT comparison failed: {exc}"
        return out
    out.update(
        dft_delta_e_mev_per_atom=cmp["delta_e_mev_per_atom"],
        dft_rmsd=cmp["rmsd"],
        dft_matched=cmp["matched"],
        dft_delta_volume_frac=cmp["delta_volume_frac"],
        _dft_structure=doc["final_structure"],
    )
    if out["dft_delta_e_mev_per_atom"] is None and out["dft_error"] is None:
        out["dft_error"] = (
            f"{doc.get('structure_id')}: no DFT energy of the structure as generated "
            "(the single point failed; see the relaxation warnings)"
        )
    return out


def usable_energy(doc: dict[str, Any] | None) -> float | None:
    """Final energy per atom of a relaxation document whose status is usable, else ``None``."""
    if not doc or doc.get("status") not in USABLE_STATUSES:
        return None
    energy = doc.get("final_energy_per_atom_eV")
    if energy is None or not math.isfinite(float(energy)):
        return None
    return float(energy)


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
        Their energies per atom, same method as the hull (``None``: unknown).
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


def values_of(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    """Finite values of ``key`` over ``rows`` (rows without it are skipped)."""
    out = []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


def pairs_of(rows: Sequence[dict[str, Any]], x_key: str, y_key: str) -> list[tuple[float, float]]:
    """``(x, y)`` pairs of rows where both values are finite numbers."""
    out = []
    for row in rows:
        x, y = row.get(x_key), row.get(y_key)
        if all(isinstance(v, int | float) and math.isfinite(v) for v in (x, y)):
            out.append((float(x), float(y)))  # type: ignore[arg-type]
    return out
