"""Two-phase ratio estimate of a row's DFT mean: hand-computed values and a coverage check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis.dft_ratio_estimate import dft_ratio_estimates, ratio_estimate


def _row(model: str, n_sites: int, ff: float | None, dft: float | None = None) -> dict:
    return {
        "model": model,
        "n_sites": n_sites,
        "delta_e_mev_per_atom": ff,
        "dft_delta_e_mev_per_atom": dft,
    }


def test_estimate_and_its_standard_error_equal_a_hand_computation() -> None:
    # phase 1: 100 200 300 400 (mean 250); pairs (100, 120) and (300, 390)
    found = ratio_estimate([100.0, 200.0, 300.0, 400.0], [(100.0, 120.0), (300.0, 390.0)])
    assert found is not None
    assert (found["N"], found["n"]) == (4, 2)
    assert found["ratio"] == pytest.approx(255.0 / 200.0)
    assert found["estimate"] == pytest.approx(1.275 * 250.0)
    # s_y² = 2·135² = 36450, s_x² = 20000, s_xy = 27000:
    # residual 36450 + 1.275²·20000 − 2·1.275·27000 = 112.5
    se = math.sqrt(36450.0 / 4 + (1 / 2 - 1 / 4) * 112.5)
    assert found["se"] == pytest.approx(se)
    half = 12.706204736174707 * se  # t_{0.975, 1}
    assert (found["t_low"], found["t_high"]) == pytest.approx((318.75 - half, 318.75 + half))


def test_rows_use_the_eligible_cells_and_differences_use_welch() -> None:
    rows = [
        _row("a", 6, 100.0, 120.0),
        _row("a", 6, 200.0),
        _row("a", 8, 300.0, 390.0),
        _row("a", 8, 400.0),
        _row("a", 12, 5000.0),  # above the cap: not eligible
        _row("a", 6, None, 80.0),  # no force-field value: not eligible
        _row("b", 6, 10.0, 9.0),
        _row("b", 6, 30.0, 33.0),
        _row("b", 6, 20.0),
        _row("c", 6, 50.0, 60.0),  # one pair: no estimate
    ]
    out = dft_ratio_estimates(rows, ["a", "b", "c"], [("a", "b"), ("c", "b")], max_sites=8)
    assert out["max_sites"] == 8
    a, b = out["rows"]
    assert (a["model"], a["N"], a["estimate"]) == ("a", 4, pytest.approx(318.75))
    assert a["n_chosen"] == 2  # no row is flagged dft_selected: the pairs count
    # b: R = 21/20, phase-1 mean 20: estimate 21
    assert (b["model"], b["N"], b["n"], b["estimate"]) == ("b", 3, 2, pytest.approx(21.0))
    [d] = out["differences"]  # c has no estimate: no c − b
    assert (d["a"], d["b"]) == ("a", "b")
    assert d["difference"] == pytest.approx(318.75 - 21.0)
    va, vb = a["se"] ** 2, b["se"] ** 2
    df = (va + vb) ** 2 / (va**2 + vb**2)  # n − 1 = 1 for both
    assert d["df"] == pytest.approx(df)
    t = (318.75 - 21.0) / math.sqrt(va + vb)
    assert d["p_value"] == pytest.approx(2 * stats.t.sf(t, df))
    # without the cap the 12-atom cell is eligible: phase-1 mean (100+200+300+400+5000)/5
    uncapped = dft_ratio_estimates(rows, ["a"])["rows"][0]
    assert uncapped["estimate"] == pytest.approx(1.275 * 1200.0)


def test_interval_covers_the_true_mean_about_as_often_as_it_says() -> None:
    # force field ΔE spread like the generated carbon rows, DFT = 1.25 × force field + noise;
    # the target is the mean DFT ΔE of the distribution the rows are drawn from
    rng = np.random.default_rng(0)
    true_mean = 1.25 * 500.0
    hits = widths = 0.0
    trials = 2000
    for _ in range(trials):
        x = rng.gamma(4.0, 125.0, size=60)  # mean 500
        y = 1.25 * x + rng.normal(0.0, 40.0, size=60)
        chosen = rng.choice(60, size=12, replace=False)
        found = ratio_estimate(x, list(zip(x[chosen], y[chosen], strict=True)))
        hits += found["t_low"] <= true_mean <= found["t_high"]
        widths += found["t_high"] - found["t_low"]
    assert 0.92 <= hits / trials <= 0.975
    # and it is narrower than the t-interval of the 12 DFT values alone, whose half-width
    # is about t_{0.975, 11} · 1.25 · 250 / sqrt(12) = 199
    assert widths / trials < 0.6 * 2 * 199.0


def test_a_selection_that_is_not_random_gives_no_estimate() -> None:
    rows = [_row("a", 6, 100.0, 120.0), _row("a", 6, 300.0, 390.0), _row("a", 6, 200.0)]
    out = dft_ratio_estimates(rows, ["a"], selection="smallest")
    assert out["rows"] == [] and out["differences"] == []
    assert (
        out["skipped"] == "DFT selection 'smallest' is not a random draw of the eligible structures"
    )
    # without any DFT value there is nothing to skip
    no_dft = [{**r, "dft_delta_e_mev_per_atom": None} for r in rows]
    assert "skipped" not in dft_ratio_estimates(no_dft, ["a"], selection="smallest")
    assert dft_ratio_estimates(rows, ["a"], selection="random")["rows"][0]["N"] == 3
