"""Small textbook cells of the carbon allotropes (experimental lattice constants).

Used as the reference structures of the DFT convergence study (:mod:`relax.convergence`) and of
the pressure and dispersion checks: 2-atom diamond, 4-atom AB (Bernal) graphite, 4-atom
lonsdaleite (hexagonal diamond).
"""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

DIAMOND_A = 3.567
"""Diamond cubic lattice constant, Å (room temperature)."""

GRAPHITE_A, GRAPHITE_C = 2.464, 6.711
"""AB graphite a and c, Å (interlayer distance c/2 = 3.355 Å)."""

LONSDALEITE_A, LONSDALEITE_C = 2.52, 4.12
"""Lonsdaleite a and c, Å (the same C-C bond length as diamond, ideal c/a)."""


def diamond(a: float = DIAMOND_A) -> Structure:
    """Return the 2-atom primitive cell of diamond (Fd-3m).

    Parameters
    ----------
    a
        Cubic lattice constant, Å.
    """
    h = a / 2
    return Structure(
        Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["C", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )


def graphite(a: float = GRAPHITE_A, c: float = GRAPHITE_C) -> Structure:
    """Return the 4-atom cell of AB (Bernal) graphite (P6_3/mmc).

    Parameters
    ----------
    a, c
        Hexagonal lattice constants, Å; the interlayer distance is ``c / 2``.
    """
    return Structure(
        Lattice.hexagonal(a, c),
        ["C"] * 4,
        [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
    )


def lonsdaleite(a: float = LONSDALEITE_A, c: float = LONSDALEITE_C) -> Structure:
    """Return the 4-atom cell of lonsdaleite (hexagonal diamond, P6_3/mmc).

    Parameters
    ----------
    a, c
        Hexagonal lattice constants, Å.
    """
    z = 1 / 16  # Wyckoff 4f (1/3, 2/3, z); z = 1/16 gives equal bonds at the ideal c/a
    return Structure(
        Lattice.hexagonal(a, c),
        ["C"] * 4,
        [
            [1 / 3, 2 / 3, z],
            [2 / 3, 1 / 3, 0.5 + z],
            [2 / 3, 1 / 3, 1 - z],
            [1 / 3, 2 / 3, 0.5 - z],
        ],
    )


def interlayer_distance(structure: Structure) -> float:
    """Return the graphite interlayer distance ``c / 2`` of a 2-layer hexagonal cell, Å.

    Parameters
    ----------
    structure
        An AB graphite cell as built by :func:`graphite` (possibly relaxed).

    Returns
    -------
    float
        The distance between layers: the cell's volume over the area of the ``a``-``b`` face,
        divided by two (valid for any cell shape with two layers stacked along ``c``).
    """
    lattice = structure.lattice
    area = float(abs(_cross_norm(lattice.matrix[0], lattice.matrix[1])))
    return structure.volume / area / 2.0


def _cross_norm(u: object, v: object) -> float:
    import numpy as np

    return float(np.linalg.norm(np.cross(np.asarray(u, float), np.asarray(v, float))))


CARBON_REFERENCES = {"diamond": diamond, "graphite": graphite, "lonsdaleite": lonsdaleite}
"""Builders of the carbon reference cells, by name."""
