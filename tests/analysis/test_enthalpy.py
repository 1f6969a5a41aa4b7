"""Enthalpy per atom with a known pV term, and pressures read from documents."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from analysis.enthalpy import EV_PER_GPA_A3, energy_pair, pressure_gpa


def test_pv_unit() -> None:
    # 1 GPa · 1 Å³ = 1e-21 J = 1e-21 / 1.6021766208e-19 eV (CODATA 2014, ASE's
    # conversion); the analysis and the relaxers' stored enthalpies use the same number
    from relax.protocol import EV_PER_GPA_A3 as relaxers_unit

    assert abs(EV_PER_GPA_A3 / 6.241509126e-3 - 1) < 1e-9
    assert relaxers_unit == EV_PER_GPA_A3


def test_enthalpy_from_energies_and_volumes_at_10_gpa() -> None:
    generated = Structure(Lattice.cubic(3.0), ["C"], [[0, 0, 0]])  # 27 Å³/atom
    relaxed = Structure(Lattice.cubic(2.0), ["C"], [[0, 0, 0]])  # 8 Å³/atom
    doc = {
        "status": "ok",
        "settings": {"protocol": {"pressure_gpa": 10.0}},
        "initial_energy_per_atom_eV": -8.0,
        "final_energy_per_atom_eV": -9.0,
        "final_structure": relaxed.as_dict(),
    }
    pair = energy_pair(doc, generated)
    # H = E + pV: 10 GPa × 27 Å³ = 270 GPa·Å³ = 1.68521 eV; 10 × 8 = 80 GPa·Å³ = 0.499321 eV
    assert pair.quantity == "H" and pair.source == "E + pV" and pair.pressure_gpa == 10.0
    assert pair.initial_per_atom_eV == pytest.approx(-8.0 + 1.685207, abs=1e-6)
    assert pair.final_per_atom_eV == pytest.approx(-9.0 + 0.499321, abs=1e-6)
    stored = {**doc, "initial_enthalpy_per_atom_eV": -6.0, "final_enthalpy_per_atom_eV": -8.5}
    assert energy_pair(stored, generated).initial_per_atom_eV == -6.0
    assert energy_pair(stored, generated).source == "document"
    zero = {**doc, "settings": {"protocol": {"pressure_gpa": 0.0}}}
    assert energy_pair(zero, generated).quantity == "E"
    assert energy_pair(zero, generated).initial_per_atom_eV == -8.0


def test_pressure_places() -> None:
    assert pressure_gpa(None) == 0.0
    assert pressure_gpa({"pressure_gpa": 10}) == 10.0
    assert pressure_gpa({"extra": {"pressure_gpa": 2.5}}) == 2.5
    assert pressure_gpa({"settings": {"final": {"pressure_gpa": 10.0}}}) == 10.0
    assert pressure_gpa({"settings": {"press": 100.0}}) == 0.0  # pw.x kbar is not read
    assert pressure_gpa({"settings": {"pressure_gpa": True}}) == 0.0
