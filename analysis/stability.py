"""How far a generated structure is from its relaxed ground state: ΔE, RMSD, ΔV.

Minimal and documented: one function for one structure (:func:`compare_to_relaxed`) and one
summary over many (:func:`summarize_stability`, a list of :class:`~analysis.results.MetricResult`).

Definitions
-----------
``delta_e_mev_per_atom``
    ``1000 * (E_initial - E_relaxed) / atom``, both energies from the same method (the relaxer's
    own energy of the structure as given, then of the relaxed one); ≥ 0 for a relaxation that
    went downhill.
``rmsd``
    ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(initial, relaxed)[0]``,
    the RMS displacement normalised by ``(V/N)^(1/3)`` as in the CDVAE/DiffCSP protocol (the same
    matcher tolerances as the CSP metrics); ``None`` when the matcher finds no match.
``delta_volume_frac``
    ``(V_relaxed - V_initial) / V_initial``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from analysis.results import MetricResult

MATCHER_TOLERANCES: dict[str, float] = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}
"""StructureMatcher tolerances (CDVAE/DiffCSP evaluation protocol)."""


def compare_to_relaxed(
    initial: Structure,
    relaxed: Structure,
    initial_energy_per_atom_eV: float | None,
    relaxed_energy_per_atom_eV: float | None,
    *,
    matcher: StructureMatcher | None = None,
) -> dict[str, Any]:
    """Compare one structure with its relaxed version.

    Parameters
    ----------
    initial
        The structure as generated.
    relaxed
        The relaxed structure.
    initial_energy_per_atom_eV, relaxed_energy_per_atom_eV
        Energies per atom (eV) of both, from the same method; ``None`` if unknown.
    matcher
        A StructureMatcher (default: :data:`MATCHER_TOLERANCES`).

    Returns
    -------
    dict
        ``delta_e_mev_per_atom`` (float or None), ``rmsd`` (float or None), ``matched``
        (bool), ``delta_volume_frac`` (float), ``n_sites`` (int).
    """
    matcher = matcher or StructureMatcher(**MATCHER_TOLERANCES)
    delta_e = None
    if initial_energy_per_atom_eV is not None and relaxed_energy_per_atom_eV is not None:
        delta_e = 1000.0 * (float(initial_energy_per_atom_eV) - float(relaxed_energy_per_atom_eV))
        if not math.isfinite(delta_e):
            delta_e = None
    rms = matcher.get_rms_dist(initial, relaxed)
    rmsd = None if rms is None else float(rms[0])
    return {
        "delta_e_mev_per_atom": delta_e,
        "rmsd": rmsd,
        "matched": rmsd is not None,
        "delta_volume_frac": (relaxed.volume - initial.volume) / initial.volume,
        "n_sites": len(initial),
    }


def summarize_stability(rows: Sequence[dict[str, Any]]) -> list[MetricResult]:
    """Summarise per-structure comparisons into metrics.

    Parameters
    ----------
    rows
        Outputs of :func:`compare_to_relaxed` (rows with ``error`` set count as failed).

    Returns
    -------
    list of MetricResult
        ``mean_delta_e_mev_per_atom``, ``median_delta_e_mev_per_atom``, ``match_rate_to_relaxed``,
        ``mean_rmsd_to_relaxed`` and ``mean_abs_delta_volume_frac``.
    """
    ok = [r for r in rows if not r.get("error")]
    de = np.array(
        [r["delta_e_mev_per_atom"] for r in ok if r.get("delta_e_mev_per_atom") is not None]
    )
    rmsd = np.array([r["rmsd"] for r in ok if r.get("rmsd") is not None])
    dv = np.array(
        [abs(r["delta_volume_frac"]) for r in ok if r.get("delta_volume_frac") is not None]
    )
    counts = {"n_total": len(rows), "n_compared": len(ok), "n_failed": len(rows) - len(ok)}
    definition = {"matcher": MATCHER_TOLERANCES, "energy": "relaxer's own energies, per atom"}
    errors = [
        {"id": str(r.get("structure_id", "?")), "reason": str(r["error"])}
        for r in rows
        if r.get("error")
    ]

    def _stat(values: np.ndarray, fn: Any) -> float | None:
        return float(fn(values)) if values.size else None

    return [
        MetricResult(
            "mean_delta_e_mev_per_atom",
            _stat(de, np.mean),
            definition,
            {**counts, "n_with_energy": int(de.size)},
            "Mean energy drop on relaxation, meV/atom (initial minus relaxed).",
            errors,
        ),
        MetricResult(
            "median_delta_e_mev_per_atom",
            _stat(de, np.median),
            definition,
            {**counts, "n_with_energy": int(de.size)},
            "Median energy drop on relaxation, meV/atom.",
        ),
        MetricResult(
            "match_rate_to_relaxed",
            (rmsd.size / len(ok)) if ok else None,
            definition,
            {**counts, "n_matched": int(rmsd.size)},
            "Fraction of compared structures that StructureMatcher matches to their relaxed form.",
        ),
        MetricResult(
            "mean_rmsd_to_relaxed",
            _stat(rmsd, np.mean),
            definition,
            {**counts, "n_matched": int(rmsd.size)},
            "Mean normalised RMS displacement between generated and relaxed (matched only).",
        ),
        MetricResult(
            "mean_abs_delta_volume_frac",
            _stat(dv, np.mean),
            definition,
            counts,
            "Mean |V_relaxed - V_initial| / V_initial.",
        ),
    ]
