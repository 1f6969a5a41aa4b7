"""Report tables and text of the stability experiment: paper figure, ΔH names, power, paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.stability import compare_models, summarize_by_model
from analysis.stability_report import (
    PAPER_DELTA_E_DIFFERENCE_MEV,
    comparison_table,
    power_statements,
    quantity_labels,
    render_report,
    report_tables,
    summary_table,
    write_report,
)


def _rows() -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"model": "cdvae", "dft_delta_e_mev_per_atom": float(v)} for v in rng.normal(200, 20, 30)
    ] + [
        {"model": "dpcdvae", "dft_delta_e_mev_per_atom": float(v)} for v in rng.normal(130, 20, 30)
    ]


def test_tables_put_the_paper_figure_beside_the_dft_difference() -> None:
    rows = _rows()
    per_model = summarize_by_model(rows, keys=("dft_delta_e_mev_per_atom", "rmsd"))
    table = summary_table(per_model)
    assert [r["model"] for r in table] == ["cdvae", "dpcdvae"]  # rmsd has no value: left out
    assert all(r["quantity"] == "ΔE DFT (meV/atom)" for r in table)
    assert table[0]["ci95_t"].startswith("[") and table[0]["ci95_bootstrap"].startswith("[")
    a = [r["dft_delta_e_mev_per_atom"] for r in rows if r["model"] == "dpcdvae"]
    b = [r["dft_delta_e_mev_per_atom"] for r in rows if r["model"] == "cdvae"]
    result = compare_models(a, b)
    [row] = comparison_table(
        [{"a": "dpcdvae", "b": "cdvae", "key": "dft_delta_e_mev_per_atom", "result": result}]
    )
    assert row["difference"] == "dpcdvae − cdvae"
    assert row["paper"] == str(PAPER_DELTA_E_DIFFERENCE_MEV)
    assert row["value"] == pytest.approx(np.mean(a) - np.mean(b), abs=1e-4)
    assert row["p_value"] == "< 1/10000"  # a 70 meV/atom shift at n = 30, sd 20
    # detectable at 80 %: ≈ 2.84 · s_pooled · sqrt(2/30) (t-test, df 58)
    assert row["detectable_80"] == pytest.approx(
        2.84 * result["pooled_std"] * np.sqrt(2 / 30), rel=0.01
    )
    [sentence] = power_statements(
        [{"a": "dpcdvae", "b": "cdvae", "key": "dft_delta_e_mev_per_atom", "result": result}]
    )
    assert "n = 30 and 30" in sentence and "80 % power" in sentence


def test_enthalpy_names_the_columns_at_pressure() -> None:
    labels = quantity_labels("H", "H")
    assert labels["delta_e_mev_per_atom"] == "ΔH force field (meV/atom)"
    assert labels["dft_e_above_hull_eV"] == "H_hull DFT, relaxed (eV/atom)"
    assert quantity_labels()["dft_delta_e_mev_per_atom"] == "ΔE DFT (meV/atom)"


def test_report_text_states_floor_path_pressure_and_power(tmp_path: Path) -> None:
    from analysis.stability_experiment import summarise_rows

    rows = [
        {
            **r,
            "energy_quantity": "H",
            "pressure_gpa": 10.0,
            "dft_energy_quantity": "H",
            "dft_pressure_gpa": 10.0,
            "dft_path": "direct",
            "_private": {"x": 1},
        }
        for r in _rows()
    ]
    parts = summarise_rows(rows, ["cdvae", "dpcdvae"], seed=0)
    assert parts["energy_quantity"] == {"force_field": "H", "dft": "H"}
    assert parts["pressures_gpa"] == {"force_field": [10.0], "dft": [10.0]}
    tables, power = report_tables(parts, {})
    assert tables["summary"][0]["quantity"] == "ΔH DFT (meV/atom)"
    summary = {
        "run": "r",
        "dataset": "carbon_24",
        "models": ["cdvae", "dpcdvae"],
        "n": 30,
        "seed": 0,
        "relaxer": "chgnet",
        "dft": "espresso",
        "dft_per_model": 30,
        "dft_selection": "stratified",
        "dft_path": "direct",
        "dft_max_sites": 12,
        "dataset_floor": {"label": "test split", "n": 30},
        **parts,
        "power": power,
        "plots": {},
    }
    text = render_report(summary, tables)
    assert "at 10 GPa: energies are enthalpies per atom, H = E + pV" in text
    assert "Path `direct`: DFT relaxation started from the generated structure" in text
    assert "cells of at most 12 atoms" in text
    assert "Dataset floor (row `test split`): 30 structures" in text
    assert "smallest true difference this comparison detects with 80 % power" in text
    files = write_report(tmp_path / "report", rows, summary, tables)
    saved = Path(files["rows"]).read_text()
    assert "_private" not in saved and "dft_path" in saved


def test_dft_cost_by_cell_size_in_minutes() -> None:
    """Wall times grouped by cell size, checked against hand-computed minutes."""
    from analysis.stability_experiment import dft_cost_by_size

    rows = [
        {"model": "cdvae", "dft_selected": True, "n_sites": 12, "dft_wall_time_s": 1800.0},
        {"model": "cdvae", "dft_selected": True, "n_sites": 6, "dft_wall_time_s": 60.0},
        {"model": "test split", "dft_selected": True, "n_sites": 6, "dft_wall_time_s": 300.0},
        {"model": "dpcdvae", "dft_selected": True, "n_sites": 6, "dft_wall_time_s": 120.0},
        {"model": "dpcdvae", "dft_selected": False, "n_sites": 6, "dft_wall_time_s": 9e9},
        {"model": "dpcdvae", "dft_selected": True, "n_sites": 8},  # no result yet
    ]
    for i, status in enumerate(("failed", "ok", "ok", "not_converged")):
        rows[i]["dft_status"] = status
    cost = dft_cost_by_size(rows)
    assert [c["n_sites"] for c in cost] == [6, 12]
    six, twelve = cost
    assert (six["n"], six["n_ok"], six["median_min"]) == (3, 2, 2.0)
    assert (six["min_min"], six["max_min"]) == (1.0, 5.0)
    assert six["models"] == ["cdvae", "dpcdvae", "test split"]
    assert (twelve["n"], twelve["n_ok"], twelve["median_min"]) == (1, 0, 30.0)
    tables, _ = report_tables(
        {"per_model": {}, "structures": {}, "comparisons": [], "dft_cost": cost}, {}
    )
    assert tables["dft_cost"][0] == {
        "atoms": 6,
        "n": 3,
        "ok": 2,
        "median min": 2.0,
        "range min": "1.0–5.0",
        "models": "cdvae, dpcdvae, test split",
    }
