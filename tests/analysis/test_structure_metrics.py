"""RMSD with and without rescaling, ΔV_rms, space groups and carbon hybridisation, by hand."""

from __future__ import annotations

import math

import pytest
from pymatgen.core import Lattice, Structure

from analysis.structure_metrics import (
    BOND_CUTOFF_A,
    carbon_hybridisation,
    coordination_numbers,
    delta_v_rms,
    p1_fraction,
    rmsd_to_relaxed,
    space_group,
    volume_change,
)


def diamond(a: float = 3.567) -> Structure:
    """Conventional diamond, 8 atoms, C–C 1.545 Å."""
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["C"], [[0, 0, 0]])


def graphite(a: float = 2.464, c: float = 6.711) -> Structure:
    """AB graphite (P6_3/mmc), 4 atoms, in-plane C–C a/√3 = 1.42 Å, layers c/2 = 3.36 Å apart."""
    return Structure(
        Lattice.hexagonal(a, c),
        ["C"] * 4,
        [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
    )


def two_atoms() -> Structure:
    """Two carbon atoms in a 4 × 4.5 × 5 Å orthorhombic cell, at general positions."""
    return Structure(Lattice.orthorhombic(4.0, 4.5, 5.0), ["C", "C"], [[0, 0, 0], [0.3, 0.4, 0.45]])


def test_rmsd_zero_for_identical_and_hand_value_for_a_displaced_atom() -> None:
    s = two_atoms()
    assert rmsd_to_relaxed(s, s.copy()) == pytest.approx(0.0, abs=1e-9)
    assert rmsd_to_relaxed(s, s.copy(), scale=False) == pytest.approx(0.0, abs=1e-9)
    moved = s.copy()
    moved.translate_sites([1], [0.05, 0, 0])  # 0.2 Å along x
    # the best translation shares the 0.2 Å between both atoms: each moves 0.1 Å, RMS 0.1 Å,
    # normalised by (V/N)^(1/3) = (90/2)^(1/3) Å
    expected = 0.1 / (90.0 / 2) ** (1 / 3)
    assert expected == pytest.approx(0.0281144, abs=1e-7)
    assert rmsd_to_relaxed(s, moved) == pytest.approx(expected, rel=1e-6)
    assert rmsd_to_relaxed(s, moved, scale=False) == pytest.approx(expected, rel=1e-6)


def test_unscaled_rmsd_fails_when_the_cell_grows_beyond_ltol() -> None:
    s = two_atoms()
    grown = s.copy()
    grown.scale_lattice(s.volume * 2.5)  # lengths × 1.357: beyond ltol = 0.3 unless rescaled
    assert rmsd_to_relaxed(s, grown) == pytest.approx(0.0, abs=1e-9)
    assert rmsd_to_relaxed(s, grown, scale=False) is None
    slightly = s.copy()
    slightly.scale_lattice(s.volume * 1.3)  # lengths × 1.091: within ltol
    assert rmsd_to_relaxed(s, slightly, scale=False) == pytest.approx(0.0, abs=1e-9)


def test_delta_v_rms_of_known_volume_changes() -> None:
    s = two_atoms()
    bigger, smaller = s.copy(), s.copy()
    bigger.scale_lattice(s.volume * 1.1)
    smaller.scale_lattice(s.volume * 0.8)
    fractions = [volume_change(s, bigger), volume_change(s, smaller), None, float("nan")]
    assert fractions[0] == pytest.approx(0.1) and fractions[1] == pytest.approx(-0.2)
    assert delta_v_rms(fractions) == pytest.approx(math.sqrt((0.01 + 0.04) / 2))  # 0.158114
    assert delta_v_rms([None]) is None


def test_space_groups_and_p1_fraction() -> None:
    assert space_group(diamond()) == (227, "Fd-3m")
    assert space_group(graphite()) == (194, "P6_3/mmc")
    assert space_group(two_atoms()) == (2, "P-1")  # two equal atoms: inversion between them
    three = Structure(
        Lattice.orthorhombic(4.0, 4.5, 5.0),
        ["C"] * 3,
        [[0, 0, 0], [0.3, 0.4, 0.45], [0.1, 0.7, 0.2]],
    )
    assert space_group(three) == (1, "P1")
    assert p1_fraction([1, 227, None, 1, 194]) == pytest.approx(0.5)
    assert p1_fraction([None]) is None


def test_diamond_is_sp3_and_graphite_sp2() -> None:
    assert BOND_CUTOFF_A == 1.85
    assert coordination_numbers(diamond()) == [4] * 8
    assert coordination_numbers(graphite()) == [3] * 4
    mixed = carbon_hybridisation([diamond(), graphite(), None])
    assert mixed["n_atoms"] == 12
    assert mixed["sp3"] == pytest.approx(8 / 12) and mixed["sp2"] == pytest.approx(4 / 12)
    assert mixed["sp"] == 0 and mixed["other"] == 0
    assert carbon_hybridisation([diamond()])["sp3"] == 1.0
    assert carbon_hybridisation([graphite()])["sp2"] == 1.0
    chain = Structure(Lattice.orthorhombic(1.3, 10.0, 10.0), ["C"], [[0, 0, 0]])  # ±1.3 Å
    assert carbon_hybridisation([chain])["sp"] == 1.0
    assert carbon_hybridisation([Structure(Lattice.cubic(4), ["Si"], [[0, 0, 0]])])["sp"] is None
