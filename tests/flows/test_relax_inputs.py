"""Generated cells of either handedness reach the relaxers as the same crystal, right-handed."""

from __future__ import annotations

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from flows.tasks import right_handed
from relax import check_structure

SITES = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.1], [0.5, 0.1, 0.5], [0.1, 0.5, 0.5]]


def perovskite(matrix: list[list[float]]) -> Structure:
    return Structure(Lattice(matrix), ["Sr", "Ti", "O", "O", "O"], SITES)


def test_left_handed_cell_becomes_the_same_crystal_right_handed() -> None:
    # a DiffCSP sample of this shape (det < 0) was rejected as "cell volume is zero or negative"
    left = perovskite([[3.9, 0.1, 0.0], [0.2, 4.0, 0.1], [0.1, 0.3, -4.1]])
    assert np.linalg.det(left.lattice.matrix) < 0
    assert "negative" in check_structure(left)
    right = right_handed(left)
    assert np.linalg.det(right.lattice.matrix) > 0
    assert check_structure(right) is None
    assert np.allclose(right.distance_matrix, left.distance_matrix)
    assert right.volume == left.volume
    assert np.all((right.frac_coords >= 0) & (right.frac_coords < 1))
    # every atom keeps its Cartesian position (modulo the lattice)
    shift = left.lattice.get_fractional_coords(right.cart_coords) - left.frac_coords
    assert np.allclose(shift, np.round(shift), atol=1e-8)
    assert [s.species for s in right] == [s.species for s in left]
    assert StructureMatcher().fit(left, right)


def test_right_handed_and_degenerate_cells_are_left_alone() -> None:
    ok = perovskite([[3.9, 0.0, 0.0], [0.0, 3.9, 0.0], [0.0, 0.0, 3.9]])
    assert right_handed(ok) is ok
    flat = perovskite([[3.9, 0.0, 0.0], [0.0, 3.9, 0.0], [3.9, 3.9, 0.0]])
    assert right_handed(flat) is flat and "zero" in check_structure(flat)
