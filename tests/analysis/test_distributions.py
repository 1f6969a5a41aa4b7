from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from analysis.distributions import (
    draw_valid_samples,
    wasserstein,
    wasserstein_property,
    wasserstein_structure_scalars,
)


def test_w1_identical_is_zero_and_shift_is_the_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    assert wasserstein("w", x, x).value == 0.0
    assert wasserstein("w", x + 0.37, x).value == pytest.approx(0.37)
    assert wasserstein("w", [], x).value is None


def _cells(a_values: list[float]) -> list[Structure]:
    return [
        Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]) for a in a_values
    ]


def test_density_and_element_count_by_hand():
    gen, gt = _cells([4.0, 4.0]), _cells([4.0, 5.0])
    # density of NaCl in an a^3 cell: (22.98977 + 35.453) g/mol / N_A / a^3
    rho = lambda a: (22.98976928 + 35.453) / 6.02214076e23 / (a * 1e-8) ** 3  # noqa: E731
    assert gen[0].density == pytest.approx(rho(4.0), rel=1e-4)
    w = wasserstein_structure_scalars(gen, gt)["wdist_density"]
    assert w.definition["quantity"] == "pymatgen Structure.density (g/cm^3)"
    assert w.value == pytest.approx((rho(4.0) - rho(5.0)) / 2, rel=1e-4)
    ternary = Structure(
        Lattice.cubic(5), ["Na", "Cl", "K"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]]
    )
    w_elem = wasserstein_structure_scalars(gen, [ternary, None, *gt])["wdist_num_elems"]
    assert w_elem.value == pytest.approx(1 / 3) and w_elem.counts["n_reference"] == 3
    prop = wasserstein_property(gen, gt, lambda ss: [s.lattice.a for s in ss], "a")
    assert prop.value == pytest.approx(0.5) and prop.definition["quantity"] == "a"


def test_valid_sample_draw_is_seeded_and_records_shortfall():
    structures = _cells([4.0 + 0.01 * i for i in range(50)])
    valid = [i % 2 == 0 for i in range(50)]
    chosen, d = draw_valid_samples(structures, valid, n_samples=10, seed=1)
    again, _ = draw_valid_samples(structures, valid, n_samples=10, seed=1)
    assert len(chosen) == 10 and [s.lattice.a for s in chosen] == [s.lattice.a for s in again]
    assert all(round((s.lattice.a - 4.0) / 0.01) % 2 == 0 for s in chosen)
    assert not d["fewer_than_requested"]
    few, d2 = draw_valid_samples(structures, valid, n_samples=1000)
    assert len(few) == 25 and d2["fewer_than_requested"] and d2["n_used"] == 25
