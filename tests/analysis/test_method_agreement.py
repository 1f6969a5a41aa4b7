"""DFT against the force field on the same structures: hand-computed paired statistics."""

from __future__ import annotations

import math

import pytest

from analysis.method_agreement import dft_vs_force_field
from analysis.stability_report import method_agreement_table


def _row(model: str, ff: float | None, dft: float | None) -> dict:
    return {"model": model, "delta_e_mev_per_atom": ff, "dft_delta_e_mev_per_atom": dft}


ROWS = [
    _row("a", 100.0, 150.0),  # +50
    _row("a", 200.0, 230.0),  # +30
    _row("a", 300.0, 310.0),  # +10
    _row("a", 400.0, 390.0),  # -10
    _row("a", 500.0, None),  # no DFT: not a pair
    _row("b", 10.0, 10.0),  # the only pair of b, no difference
    _row("c", None, 5.0),  # no force-field value: c has no pair
]


def test_paired_statistics_equal_a_hand_computation() -> None:
    a, b = dft_vs_force_field(ROWS, ["a", "b", "c"])
    assert a["model"] == "a" and a["n"] == 4
    assert a["mean_force_field"] == pytest.approx(250.0)
    assert a["mean_dft"] == pytest.approx(270.0)
    # differences 50, 30, 10, -10: mean 20, s = sqrt(((30² + 10² + 10² + 30²) / 3)) = 25.82
    assert a["mean_difference"] == pytest.approx(20.0)
    half = 3.182446305284263 * math.sqrt(2000.0 / 3.0) / 2.0  # t_{0.975, 3} s / sqrt(4)
    assert a["t_low"] == pytest.approx(20.0 - half)
    assert a["t_high"] == pytest.approx(20.0 + half)
    assert (a["n_dft_larger"], a["n_dft_smaller"]) == (3, 1)
    # two-sided sign test, 3 of 4: P(X <= 1) + P(X >= 3) = (1 + 4 + 4 + 1) / 16
    assert a["sign_test_p"] == pytest.approx(10 / 16)
    # ranks of the force field 1 2 3 4 and of DFT 1 2 3 4: rho = 1
    assert a["spearman"] == pytest.approx(1.0)
    # b: one pair, equal values: no interval, no sign test, no correlation
    assert b["n"] == 1 and b["t_low"] is None
    assert (b["n_dft_larger"], b["n_dft_smaller"], b["sign_test_p"]) == (0, 0, None)
    assert b["spearman"] is None


def test_every_structure_above_gives_the_sign_test_of_all_heads() -> None:
    rows = [_row("m", float(i), float(i) + 40.0 + i) for i in range(7)]
    [m] = dft_vs_force_field(rows, ["m"])
    assert m["n_dft_larger"] == 7
    assert m["sign_test_p"] == pytest.approx(2 / 2**7)


def test_table_names_the_energy_quantity() -> None:
    [row] = method_agreement_table(dft_vs_force_field(ROWS, ["a"]), "H")
    assert row["mean ΔH DFT"] == 270.0
    assert row["DFT − force field"] == 20.0
    assert row["DFT larger"] == "3 of 4"
    assert row["p (sign test)"] == 0.62
    # a small p keeps two significant digits: 9 of 9 above, 2 / 2**9 = 0.0039
    nine = [_row("m", float(i), float(i) + 100.0) for i in range(9)]
    assert method_agreement_table(dft_vs_force_field(nine, ["m"]))[0]["p (sign test)"] == 0.0039


def test_report_has_the_sections_only_where_structures_have_both_values() -> None:
    from analysis.stability_experiment import summarise_rows
    from analysis.stability_report import render_report, report_tables

    def report(rows: list[dict], selection: str = "stratified") -> str:
        parts = summarise_rows(rows, ["a", "b"], seed=0, dft_selection=selection)
        tables, power = report_tables(parts, {})
        summary = {
            "run": "r",
            "dataset": "carbon_24",
            "models": ["a", "b"],
            "n": 4,
            "seed": 0,
            "relaxer": "chgnet",
            "dft": "espresso",
            "dft_per_model": 4,
            "dft_selection": "stratified",
            **parts,
            "power": power,
            "plots": {},
        }
        return render_report(summary, tables)

    text = report(ROWS)
    assert "## DFT against the force field" in text
    assert "| a | 4 | 250.0 | 270.0 | 20.0 |" in text
    # ratio estimate of a: 270 / 250 × the mean of all five force-field values (300) = 324;
    # b has one pair: no estimate, so no difference either
    assert "## DFT over the eligible structures (ratio estimate)" in text
    assert "| a | 5 | 4 of 4 chosen | 300.0 | 1.08 | 324.0 |" in text
    assert "Not every chosen structure has a DFT value yet" not in text
    assert "| b | 1 |" not in text.split("(ratio estimate)")[1].split("## S.U.N.")[0]
    without_dft = [{**r, "dft_delta_e_mev_per_atom": None} for r in ROWS]
    assert "## DFT against the force field" not in report(without_dft)
    assert "(ratio estimate)" not in report(without_dft)
    # the fifth structure of a was chosen too but has no DFT value yet: the report says so
    pending = [{**r, "dft_selected": r["model"] == "a"} for r in ROWS]
    text = report(pending)
    assert "| a | 5 | 4 of 5 chosen |" in text
    assert "Not every chosen structure has a DFT value yet (a)" in text
    smallest = report(ROWS, "smallest")
    assert "Not estimated: DFT selection 'smallest' is not a random draw" in smallest
    assert "| a | 5 | 4 |" not in smallest


def test_scale_is_the_slope_through_the_origin_with_its_bootstrap_interval() -> None:
    # DFT 1 and 2, force field 1 and 1: slope = (1·1 + 1·2) / (1² + 2²) = 3/5.
    rows = [_row("m", 1.0, 1.0), _row("m", 1.0, 2.0), _row("m", 7.0, 0.0)]
    [m] = dft_vs_force_field(rows, ["m"])
    assert m["scale"] == pytest.approx(0.6)
    # the pair with ΔE_DFT = 0 adds to neither sum; of the other two, resamples draw
    # pair 1 twice (slope 1, p = 1/4), pair 2 twice (1/2, p = 1/4) or both (3/5, p = 1/2):
    # the 2.5 % and 97.5 % quantiles are 1/2 and 1.
    assert (m["scale_low"], m["scale_high"]) == pytest.approx((0.5, 1.0))


def test_a_force_field_scaled_by_a_constant_gives_that_constant() -> None:
    rows = [_row("m", 0.8 * d, d) for d in (100.0, 350.0, 900.0, 20.0)]
    rows.append(_row("z", 5.0, 0.0))  # no non-zero DFT value: no scale
    m, z = dft_vs_force_field(rows, ["m", "z"])
    assert (m["scale"], m["scale_low"], m["scale_high"]) == pytest.approx((0.8, 0.8, 0.8))
    assert (z["scale"], z["scale_low"], z["scale_high"]) == (None, None, None)
    [row] = method_agreement_table([m])
    assert (row["scale force field / DFT"], row["scale ci95_bootstrap"]) == (0.8, "[0.8, 0.8]")
