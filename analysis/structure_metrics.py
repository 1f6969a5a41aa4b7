"""Structural quantities a materials scientist reads beside ΔE: RMSD, volume, symmetry, bonding.

Definitions
-----------
``rmsd_to_relaxed(initial, relaxed, scale=True)``
    ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3, scale=...).get_rms_dist(...)[0]``: the
    RMS site displacement after the best lattice mapping and translation, normalised by
    ``(V/N)^(1/3)`` (CDVAE/DiffCSP protocol). pymatgen measures the displacements in fractional
    coordinates on the averaged lattice, so an isotropic change of volume alone does not change
    the value; ``scale`` decides whether the lattices are compared after rescaling both to the
    same volume (``True``, the protocol) or as they are (``False``: cells whose lengths differ by
    more than ``ltol`` do not match, and the value is ``None``).
``delta_v_rms``
    DP-CDVAE's third metric: ``sqrt(mean(((V_relaxed - V_initial) / V_initial)²))`` over the
    structures.
``space_group``
    ``SpacegroupAnalyzer(structure, symprec=0.1)`` (spglib): international number and symbol;
    ``p1_fraction`` is the fraction of structures whose group is P1 (number 1).
``carbon_hybridisation``
    For each carbon atom, the number of atoms (of any element) within :data:`BOND_CUTOFF_A`
    (1.85 Å, between the C–C bond of diamond, 1.54 Å, and the second-neighbour distance of
    graphene, 2.46 Å): 2 → sp, 3 → sp², 4 → sp³, anything else → other. A distance cutoff, not
    CrystalNN: it is deterministic, fast, and for carbon the first and second shells are far
    apart.
``volume_per_atom`` / ``density``
    ``V/N`` in Å³ and the mass density in g/cm³ (pymatgen's ``Structure.density``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

MATCHER_TOLERANCES: dict[str, float] = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}
"""StructureMatcher tolerances (CDVAE/DiffCSP evaluation protocol)."""

SYMPREC = 0.1
"""spglib's symmetry tolerance, Å (the usual choice for generated structures)."""

BOND_CUTOFF_A = 1.85
"""C–C bond cutoff of :func:`carbon_hybridisation`, Å."""

HYBRIDISATION: dict[int, str] = {2: "sp", 3: "sp2", 4: "sp3"}
"""Coordination number → label; every other coordination is ``"other"``."""


def rmsd_to_relaxed(initial: Structure, relaxed: Structure, *, scale: bool = True) -> float | None:
    """Normalised RMS displacement between a structure and its relaxed form.

    Parameters
    ----------
    initial, relaxed
        The two structures (same composition).
    scale
        Rescale both cells to the same volume before matching (the protocol's default).

    Returns
    -------
    float or None
        ``StructureMatcher(**MATCHER_TOLERANCES, scale=scale).get_rms_dist(...)[0]``; ``None``
        when the matcher finds no match.
    """
    matcher = StructureMatcher(**MATCHER_TOLERANCES, scale=scale)
    rms = matcher.get_rms_dist(initial, relaxed)
    return None if rms is None else float(rms[0])


def volume_change(initial: Structure, relaxed: Structure) -> float:
    """``(V_relaxed - V_initial) / V_initial``."""
    return (relaxed.volume - initial.volume) / initial.volume


def delta_v_rms(fractions: Sequence[float | None]) -> float | None:
    """DP-CDVAE's ΔV_rms: root-mean-square of the relative volume changes.

    Parameters
    ----------
    fractions
        ``(V_relaxed - V_initial) / V_initial`` per structure (``None``/NaN left out).

    Returns
    -------
    float or None
        ``sqrt(mean(f²))``; ``None`` without a finite value.
    """
    values = np.array(
        [float(f) for f in fractions if f is not None and math.isfinite(float(f))], dtype=float
    )
    return float(np.sqrt(np.mean(values**2))) if values.size else None


def space_group(structure: Structure, symprec: float = SYMPREC) -> tuple[int | None, str | None]:
    """International space-group number and symbol (spglib via pymatgen).

    Parameters
    ----------
    structure
        The structure.
    symprec
        Symmetry tolerance, Å.

    Returns
    -------
    tuple
        ``(number, symbol)``; ``(None, None)`` when spglib finds no group (e.g. overlapping
        atoms).
    """
    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
        return int(analyzer.get_space_group_number()), str(analyzer.get_space_group_symbol())
    except Exception:  # spglib gives up on degenerate cells: reported as unknown
        return None, None


def p1_fraction(numbers: Sequence[int | None]) -> float | None:
    """Fraction of structures in P1 among those with a known space group (``None``: none)."""
    known = [n for n in numbers if n is not None]
    return sum(1 for n in known if n == 1) / len(known) if known else None


def coordination_numbers(structure: Structure, cutoff: float = BOND_CUTOFF_A) -> list[int]:
    """Number of neighbours within ``cutoff`` Å of each carbon site (periodic images included).

    Parameters
    ----------
    structure
        The structure.
    cutoff
        Bond cutoff, Å.

    Returns
    -------
    list of int
        One count per carbon site, in site order.
    """
    out = []
    for index, site in enumerate(structure):
        if site.specie.symbol != "C":
            continue
        out.append(len(structure.get_neighbors(structure[index], cutoff)))
    return out


def carbon_hybridisation(
    structures: Sequence[Structure | None], cutoff: float = BOND_CUTOFF_A
) -> dict[str, Any]:
    """The sp / sp² / sp³ fractions of the carbon atoms of a set of structures.

    Parameters
    ----------
    structures
        Structures (``None`` left out); only carbon sites are counted.
    cutoff
        Bond cutoff, Å (:data:`BOND_CUTOFF_A`).

    Returns
    -------
    dict
        ``n_atoms`` (carbon atoms counted), ``sp``, ``sp2``, ``sp3``, ``other`` (fractions of
        ``n_atoms``; ``None`` when there is no carbon atom), ``method``.
    """
    counts = {"sp": 0, "sp2": 0, "sp3": 0, "other": 0}
    for structure in structures:
        if structure is None:
            continue
        for cn in coordination_numbers(structure, cutoff):
            counts[HYBRIDISATION.get(cn, "other")] += 1
    total = sum(counts.values())
    out: dict[str, Any] = {k: (v / total if total else None) for k, v in counts.items()}
    out["n_atoms"] = total
    out["method"] = f"neighbours within {cutoff} Å: 2 sp, 3 sp2, 4 sp3"
    return out


def volume_per_atom(structure: Structure) -> float:
    """``V/N`` in Å³."""
    return structure.volume / len(structure)


def density(structure: Structure) -> float:
    """Mass density in g/cm³."""
    return float(structure.density)


def is_carbon(structures: Sequence[Structure | None]) -> bool:
    """Whether every given structure consists of carbon only (and there is at least one)."""
    present = [s for s in structures if s is not None]
    return bool(present) and all(
        {el.symbol for el in s.composition.elements} == {"C"} for s in present
    )
