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


def _limitation_rows() -> list[dict]:
    """Six cdvae rows (one without a structure, one failed force field, DFT on three: a value,
    a failure, one not started) and two floor rows with DFT values, at 10 GPa."""
    base = {"energy_quantity": "H", "pressure_gpa": 10.0}
    cdvae = [
        {"status": "no_structure"},
        {"status": "failed"},
        {"delta_e_mev_per_atom": 120.0},
        {
            "delta_e_mev_per_atom": 80.0,
            "dft_selected": True,
            "dft_path": "pre-relaxed",
            "dft_status": "ok",
            "dft_delta_e_mev_per_atom": 95.0,
        },
        {
            "delta_e_mev_per_atom": 60.0,
            "dft_selected": True,
            "dft_path": "pre-relaxed",
            "dft_status": "failed",
        },
        {
            "delta_e_mev_per_atom": 40.0,
            "dft_selected": True,
            "dft_path": "pre-relaxed",
            "dft_status": "not_started",
        },
    ]
    floor = [
        {
            "delta_e_mev_per_atom": v,
            "dft_selected": True,
            "dft_path": "pre-relaxed",
            "dft_status": "ok",
            "dft_delta_e_mev_per_atom": v / 2,
        }
        for v in (30.0, 10.0)
    ]
    return [
        {**base, "model": "cdvae", "structure_id": f"c{i}", **r} for i, r in enumerate(cdvae)
    ] + [{**base, "model": "test split", "structure_id": f"t{i}", **r} for i, r in enumerate(floor)]


def _limitation_summary(parts: dict, **changes: object) -> dict:
    summary = {
        "run": "r",
        "dataset": "carbon_24",
        "models": ["cdvae"],
        "models_in_report": ["cdvae", "test split"],
        "n": 6,
        "seed": 3,
        "relaxer": "chgnet",
        "dft": "espresso",
        "dft_per_model": 3,
        "dft_selection": "stratified",
        "dft_path": "pre-relaxed",
        "dft_max_sites": 12,
        "dataset_floor": {"label": "test split", "n": 2, "split": "test"},
        "checkpoints": {
            "cdvae": {
                "source": "registered",
                "checkpoint": "cdvae-carbon24",
                "training": {
                    "config_name": "cpu",
                    "epochs": 40,
                    "cpu_minutes": 59.2,
                    "wall_minutes": 139.4,
                    "device": "cpu, 1 thread",
                    "latent_dim": 64,
                },
                "paper_scale": {
                    "max_epochs": 4000,
                    "batch_size": 256,
                    "latent_dim": 256,
                    "source": "the `paper` configuration",
                },
            }
        },
        "dft_subsets": {
            "cdvae": {"n_candidates": 4, "n_eligible": 3, "n_chosen": 3},
            "test split": {"n_candidates": 2, "n_eligible": 2, "n_chosen": 2},
        },
        "protocol": {
            "name": "carbon_24",
            "source": "package:carbon_24.json",
            "force_field": {"pressure_gpa": 10.0, "dispersion": "d3bj"},
            "dft": {
                "pressure_gpa": 10.0,
                "dispersion": "d3bj",
                "kspacing": 0.2,
                "relax_kspacing": 0.3,
                "ecutwfc": 45.0,
                "ecutrho": 360.0,
                "smearing": "mv",
                "degauss": 0.01,
            },
            "pseudopotentials": "SSSP_1.3.0_PBE_efficiency",
        },
        **parts,
        "power": ["- a power sentence"],
        "plots": {},
    }
    summary.update(changes)
    return summary


def test_limitations_state_checkpoint_sizes_subset_path_protocol_and_floor() -> None:
    """The section's numbers are the hand-made summary's and the hand-counted rows'."""
    from analysis.stability_experiment import summarise_rows

    parts = summarise_rows(_limitation_rows(), ["cdvae", "test split"], seed=0)
    assert parts["counts"]["cdvae"] == {  # counted by hand from _limitation_rows
        "n_rows": 6,
        "n_no_structure": 1,
        "n_relaxed": 4,
        "n_ff_failed": 1,
        "n_dft_selected": 3,
        "n_dft_values": 1,
        "n_dft_not_started": 1,
        "n_dft_interrupted": 0,
        "n_dft_failed": 1,
        "dft_paths": {"pre-relaxed": 3},
    }
    tables, _ = report_tables(parts, {})
    text = render_report(_limitation_summary(parts), tables)
    assert text.index("## Plots") < text.index("## Limitations") < text.index("## Settings")
    section = text[text.index("## Limitations") : text.index("## Settings")]
    # the checkpoint: registered name, its training budget, the paper's scale, not the paper's
    assert (
        "- `cdvae`: registered checkpoint `cdvae-carbon24` (model zoo card), trained with the "
        "`cpu` configuration, 40 epochs, 0.987 CPU hours (59.2 CPU minutes), 139.4 minutes wall, "
        "on cpu, 1 thread." in section
    )
    assert (
        "up to 4000 epochs, batch size 256, latent_dim 256; this checkpoint has latent_dim 64"
        in (section)
    )
    assert "trained with the `cpu` configuration at CPU scale is not the paper's cdvae model" in (
        section
    )
    # n per row, with its failures
    assert (
        "- `cdvae`: 6 structures generated, 6 rows: 4 with a force-field value, 1 without a "
        "structure, 1 whose force-field relaxation failed or is unusable." in section
    )
    assert (
        "- `test split`: 2 test-split structures drawn (random, seed 3), 2 rows: 2 with a "
        "force-field value, none failed." in section
    )
    # the DFT subset: selection, seed, cap, eligible count, outcomes and path per row
    assert "Selection `stratified`: random, stratified by cell size, one structure drawn" in section
    assert "structures are wanted; seed 3." in section
    assert "Cell-size cap `dft_max_sites` = 12: only cells of at most 12 atoms" in section
    assert (
        "- `cdvae`: 3 chosen, 3 of the row's 4 force-field-relaxed structures eligible (at most "
        "12 atoms); 1 with a DFT value, 1 failed, 1 not started (time budget); path "
        "`pre-relaxed` (3 rows)." in section
    )
    assert "- `test split`: 2 chosen, 2 of the row's 2 force-field-relaxed" in section
    assert "Path `pre-relaxed`: the DFT relaxation started from the force-field-relaxed " in section
    assert "the one in the force field's basin" in section
    assert "describe only these subsets, not every structure of a row, and only cells of at " in (
        section
    )
    # the protocol, and ΔH at p ≠ 0 (10 GPa · 1 Å³ = 62.4 meV)
    assert (
        "Protocol (the `carbon_24` defaults where not overridden): pressure 10 GPa; dispersion "
        "DFT-D3(BJ); k-spacing 0.2 Å⁻¹ (2π included) for every DFT energy, relax_kspacing "
        "0.3 Å⁻¹ for the relaxation steps; cutoffs ecutwfc 45 Ry, ecutrho 360 Ry; smearing "
        "`mv`, 0.01 Ry" in section
    )
    assert "At p = 10 GPa (p ≠ 0) every energy compared is an enthalpy per atom" in section
    assert "1 Å³/atom of volume change is 62.4 meV/atom" in section
    assert "Power: “Model differences” holds 1 power statement; each gives" in section
    assert "Floor: row `test split` is 2 of the carbon_24 dataset's own test-split" in section
    assert "a model's mean minus the floor's, with its interval under" in section
    assert "not what the model alone adds" in section


def test_limitations_of_a_run_without_dft_or_floor() -> None:
    from analysis.stability_experiment import summarise_rows

    rows = [r for r in _limitation_rows() if r["model"] == "cdvae"]
    parts = summarise_rows(rows, ["cdvae"], seed=0)
    summary = _limitation_summary(
        parts,
        dft="none",
        dataset_floor={},
        models_in_report=["cdvae"],
        dft_subsets={},
        power=[],
        checkpoints={"cdvae": {"source": "file", "checkpoint": "runs/cdvae/best.pt"}},
        protocol={"name": "default", "force_field": {"pressure_gpa": 0.0, "dispersion": "none"}},
        pressures_gpa={"force_field": [0.0], "dft": []},
    )
    section = render_report(summary, report_tables(parts, {})[0]).split("## Limitations")[1]
    assert (
        "There is no DFT subset: this run ran no DFT (`dft = none`). Every energy above is the "
        "force field's (`chgnet`); no number in this report is a DFT verdict." in section
    )
    assert "Path `" not in section and "dft_max_sites" not in section.split("## Settings")[0]
    assert "checkpoint file `runs/cdvae/best.pt`, not a registered model" in section
    assert "At 0 GPa the energies compared are energies per atom (ΔE)." in section
    assert "Floor: this run has no dataset floor" in section
    assert "the report makes no power statement" in section


def test_an_interrupted_dft_relaxation_is_counted_apart_from_failures() -> None:
    from analysis.stability_limitations import row_counts

    def row(status: str, value: float | None = None) -> dict:
        return {
            "model": "cdvae",
            "delta_e_mev_per_atom": 1.0,
            "dft_selected": True,
            "dft_path": "pre-relaxed",
            "dft_status": status,
            "dft_delta_e_mev_per_atom": value,
        }

    rows = [row("ok", 5.0), row("interrupted"), row("interrupted"), row("failed")]
    counts = row_counts(rows, ["cdvae"])["cdvae"]
    outcome = counts["n_dft_values"], counts["n_dft_interrupted"], counts["n_dft_failed"]
    assert outcome == (1, 2, 1)
