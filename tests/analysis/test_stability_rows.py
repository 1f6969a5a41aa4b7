"""Per-structure rows: force-field and DFT fields, enthalpy at p ≠ 0, hull, structure summary."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from analysis.enthalpy import EV_PER_GPA_A3
from analysis.hull import build_hull, reference_entries
from analysis.stability_experiment import (
    attach_hull,
    dft_candidates,
    model_comparisons,
    structure_summary,
)
from analysis.stability_rows import dft_fields, public_row, structure_row


def _diamond(a: float = 3.567) -> Structure:
    """Primitive diamond cell (2 atoms, a³/8 per atom, C–C a·√3/4)."""
    fcc = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(fcc, ["C", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _doc(relaxed: Structure, e0: float, e1: float, **extra) -> dict:
    return {
        "structure_id": "g1",
        "status": "ok",
        "error": None,
        "initial_energy_per_atom_eV": e0,
        "final_energy_per_atom_eV": e1,
        "final_structure": relaxed.as_dict(),
        "converged": True,
        "n_ionic_steps": 4,
        "wall_time_s": 30.0,
        **extra,
    }


def test_dft_fields_use_dft_energies_of_the_generated_structure() -> None:
    generated = _diamond(3.7)
    relaxed = _diamond(3.567)
    doc = _doc(relaxed, -250.70, -250.80)  # pw.x single point of the generated, then vc-relax
    out = dft_fields(generated, doc)
    assert out["dft_path"] == "pre-relaxed"
    assert out["dft_delta_e_mev_per_atom"] == pytest.approx(100.0)
    assert out["dft_rmsd"] == pytest.approx(0.0, abs=1e-6)  # same structure up to volume
    assert out["dft_rmsd_unscaled"] == pytest.approx(0.0, abs=1e-6)
    assert out["dft_delta_volume_frac"] == pytest.approx((3.567 / 3.7) ** 3 - 1)
    assert out["dft_relaxed_space_group"] == 227
    assert out["dft_error"] is None and out["dft_status"] == "ok"
    assert dft_fields(generated, doc, "direct")["dft_path"] == "direct"
    with pytest.raises(ValueError, match="dft path"):
        dft_fields(generated, doc, "sideways")

    failed = {**doc, "status": "failed", "error": "g1: pw.x exceeded its time limit"}
    out = dft_fields(generated, failed)
    assert "dft_delta_e_mev_per_atom" not in out and "time limit" in out["dft_error"]

    no_single_point = {**doc, "initial_energy_per_atom_eV": None}
    out = dft_fields(generated, no_single_point)
    assert out["dft_delta_e_mev_per_atom"] is None
    assert "g1" in out["dft_error"] and "single point" in out["dft_error"]
    assert dft_fields(generated, None) == {}


def test_structure_row_compares_enthalpies_at_pressure() -> None:
    generated = _diamond(3.7)  # 6.332 Å³/atom
    relaxed = _diamond(3.5)  # 5.359 Å³/atom
    at_10 = _doc(relaxed, -9.0, -9.1, settings={"protocol": {"pressure_gpa": 10.0}})
    row = structure_row("g1", generated, at_10, model="cdvae", settings_hash="h")
    v0, v1 = 3.7**3 / 8, 3.5**3 / 8
    expected = 1000 * ((-9.0 + 10 * v0 * EV_PER_GPA_A3) - (-9.1 + 10 * v1 * EV_PER_GPA_A3))
    # 100 meV/atom of energy plus 10 GPa × 0.97225 Å³ = 60.68 meV/atom of pV
    assert row["energy_quantity"] == "H" and row["pressure_gpa"] == 10.0
    assert row["delta_e_mev_per_atom"] == pytest.approx(expected)
    assert row["delta_e_mev_per_atom"] == pytest.approx(160.68, abs=0.01)
    at_0 = structure_row("g1", generated, _doc(relaxed, -9.0, -9.1), model="cdvae")
    assert at_0["energy_quantity"] == "E"
    assert at_0["delta_e_mev_per_atom"] == pytest.approx(100.0)
    assert at_0["space_group"] == 227 and at_0["relaxed_space_group"] == 227
    assert at_0["n_sp3"] == 2 and at_0["n_sp2"] == 0  # diamond at a = 3.5: C–C 1.52 Å
    assert at_0["matched"] and at_0["matched_unscaled"]
    assert "_relaxed_structure" in at_0 and "_relaxed_structure" not in public_row(at_0)
    missing = structure_row("g2", generated, None, model="cdvae")
    assert missing["status"] == "not_relaxed" and "g2" in missing["error"]
    failed = structure_row("g3", generated, {"status": "failed", "error": "g3: bad"}, model="cdvae")
    assert failed["error"] == "g3: bad" and "delta_e_mev_per_atom" not in failed


def test_hull_candidates_comparisons_and_structure_summary() -> None:
    diamond, graphite_like = _diamond(3.567), _diamond(3.9)
    hull = build_hull(reference_entries([diamond], [-9.0], ids=["diamond"]))
    rows = []
    for model, energies in (("cdvae", (-8.7, -8.8)), ("dpcdvae", (-8.85, -8.9))):
        for k in range(2):
            rows.append(
                structure_row(
                    f"{model}-{k}",
                    graphite_like,
                    _doc(diamond, energies[k] + 0.1, energies[k]),
                    model=model,
                )
            )
    attach_hull(rows, hull, None)
    assert [r["e_above_hull_eV"] for r in rows] == pytest.approx([0.3, 0.2, 0.15, 0.1])
    assert [r["e_above_hull_generated_eV"] for r in rows] == pytest.approx([0.4, 0.3, 0.25, 0.2])
    assert [c["structure_id"] for c in dft_candidates(rows[:2])] == ["cdvae-0", "cdvae-1"]
    no_hull = [dict(r) for r in rows[:1]]
    attach_hull(no_hull, None, None)
    assert no_hull[0]["e_above_hull_reason"] == "no reference hull"

    floor = structure_row("test:x", diamond, _doc(diamond, -9.0, -9.01), model="test split")
    comparisons = model_comparisons([*rows, floor], ["cdvae", "dpcdvae", "test split"], seed=0)
    pairs = {(c["a"], c["b"], c["key"]) for c in comparisons}
    assert ("dpcdvae", "cdvae", "delta_e_mev_per_atom") in pairs
    assert ("cdvae", "test split", "delta_e_mev_per_atom") in pairs
    assert not any(c["a"] == "test split" for c in comparisons)

    summary = structure_summary([*rows, floor], ["cdvae", "test split"])
    assert summary["cdvae"]["n"] == 2 and summary["cdvae"]["match_rate"] == 1.0
    vol = (3.567 / 3.9) ** 3 - 1
    assert summary["cdvae"]["delta_v_rms"] == pytest.approx(abs(vol))
    assert summary["cdvae"]["p1_fraction_relaxed"] == 0.0
    assert summary["cdvae"]["top_space_groups_relaxed"] == ["Fd-3m (2)"]
    assert summary["test split"]["hybridisation_relaxed"]["sp3"] == 1.0
    # the generated a = 3.9 Å diamond has C–C 1.689 Å: still four bonds within 1.85 Å
    assert summary["cdvae"]["hybridisation_generated"]["sp3"] == 1.0
