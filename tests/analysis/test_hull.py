"""Reference hull and energy above hull, on hand-made entries with known answers."""

from __future__ import annotations

import pytest
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.core import Composition, Lattice, Structure

from analysis.hull import build_hull, energy_above_hull, reference_entries


@pytest.fixture
def diamond() -> Structure:
    return Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(3.567), ["C"], [[0.0, 0.0, 0.0]]
    ).get_primitive_structure()


@pytest.fixture
def graphite() -> Structure:
    return Structure(
        Lattice.hexagonal(2.46, 6.70),
        ["C"] * 4,
        [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
    )


def test_carbon_hull_is_lowest_reference(diamond: Structure, graphite: Structure) -> None:
    entries = reference_entries([diamond, graphite], [-9.08, -9.22], ids=["diamond", "graphite"])
    assert [e.entry_id for e in entries] == ["diamond", "graphite"]
    assert entries[1].energy == pytest.approx(-9.22 * 4)
    hull = build_hull(entries)
    assert energy_above_hull(diamond, -9.08, hull) == pytest.approx(0.14)
    assert energy_above_hull(graphite, -9.22, hull) == pytest.approx(0.0, abs=1e-9)
    big = diamond * (2, 2, 2)
    assert energy_above_hull(big, -9.0, hull) == pytest.approx(0.22)
    # below the reference hull: negative, not clipped
    assert energy_above_hull("C", -9.30, hull) == pytest.approx(-0.08)


def test_li_o_hull_known_answer() -> None:
    # formation energies: Li2O -2.0 eV/atom, O2 and Li at 0 -> on the Li2O-O line at
    # x_O = 1/2 the hull lies at -2.0 * (1/2) / (2/3) = -1.5 eV/atom
    mu_li, mu_o = -1.90, -4.95
    entries = [
        PDEntry(Composition("Li"), mu_li),
        PDEntry(Composition("O2"), 2 * mu_o),
        PDEntry(Composition("Li2O"), 2 * mu_li + mu_o - 3 * 2.0),
        PDEntry(Composition("LiO8"), mu_li + 8 * mu_o + 9 * 0.3),  # unstable, above hull
    ]
    hull = build_hull(entries)
    ref_li2o2 = (2 * mu_li + 2 * mu_o) / 4 - 1.5
    assert energy_above_hull("Li2O2", ref_li2o2 + 0.1, hull) == pytest.approx(0.1)
    assert energy_above_hull(Composition("Li4O4"), ref_li2o2, hull) == pytest.approx(0.0, abs=1e-9)
    li2o = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.61), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )
    e_li2o = (2 * mu_li + mu_o) / 3 - 2.0
    assert energy_above_hull(li2o, e_li2o - 0.05, hull) == pytest.approx(-0.05)
    assert energy_above_hull("Li", mu_li + 0.2, hull) == pytest.approx(0.2)


def test_hull_errors_name_the_problem() -> None:
    entries = [PDEntry(Composition("Li"), -1.9), PDEntry(Composition("Li2O"), -14.7)]
    with pytest.raises(ValueError, match="no elemental reference for O"):
        build_hull(entries)
    with pytest.raises(ValueError, match="no reference entries"):
        build_hull([])
    hull = build_hull([*entries, PDEntry(Composition("O2"), -9.9)])
    with pytest.raises(ValueError, match=r"LiF: element\(s\) F outside .* Li-O"):
        energy_above_hull("LiF", -4.0, hull)
    with pytest.raises(ValueError, match="Li2O: energy per atom is not finite"):
        energy_above_hull("Li2O", float("nan"), hull)


def test_reference_entries_skip_or_raise_bad_rows(diamond: Structure) -> None:
    entries = reference_entries([diamond, diamond, "x"], [-9.0, None, -9.0], ids=["a", "b", "c"])
    assert [e.entry_id for e in entries] == ["a"]
    with pytest.raises(ValueError, match="reference b: energy per atom is not a finite"):
        reference_entries(
            [diamond, diamond], [-9.0, float("nan")], ids=["a", "b"], on_error="raise"
        )
    with pytest.raises(ValueError, match="2 structures but 1 energies"):
        reference_entries([diamond, diamond], [-9.0])
