"""Bootstrap intervals, per-model summaries and the difference between two models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.stability import (
    bootstrap_interval,
    compare_models,
    dataset_floor_rows,
    summarize_by_model,
    summarize_stability,
    summarize_values,
)


def _percentile_bootstrap(values, n_resamples: int, seed: int) -> tuple[float, float]:
    """Independent percentile bootstrap of the mean: one draw of all resamples at once."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def test_bootstrap_interval_covers_true_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (25, 400):
        sample = rng.normal(10.0, 2.0, n)
        low, high = bootstrap_interval(sample, n_resamples=4000, seed=3)
        assert low < 10.0 < high
        assert low < sample.mean() < high
        # the percentile interval of the mean is close to +-1.96 sigma/sqrt(n)
        assert (high - low) == pytest.approx(2 * 1.96 * 2.0 / math.sqrt(n), rel=0.3)
        assert (low, high) == pytest.approx(_percentile_bootstrap(sample, 4000, 3), abs=1e-12)
        widths.append(high - low)
    assert widths[1] < widths[0] / 3


def test_bootstrap_interval_coverage_over_repeated_samples() -> None:
    rng = np.random.default_rng(7)
    hits = sum(
        low <= 0.0 <= high
        for low, high in (
            bootstrap_interval(rng.normal(0.0, 1.0, 40), n_resamples=1000, seed=s)
            for s in range(100)
        )
    )
    assert 85 <= hits <= 100  # nominal 95 %; the percentile method undercovers a little


def test_bootstrap_interval_is_reproducible_and_takes_other_statistics() -> None:
    values = [1.0, 2.0, 3.0, 10.0, 4.0]
    assert bootstrap_interval(values, seed=5) == bootstrap_interval(values, seed=5)
    # a resample's median is the minimum 1.0 when >= 3 of its 5 draws are 1.0: probability
    # 10·0.2³·0.8² + 5·0.2⁴·0.8 + 0.2⁵ = 5.8 % > 2.5 %, and likewise the maximum 10.0: the
    # 95 % percentile interval of the median is [1, 10] for any seed (with 500 resamples)
    for seed in (0, 1, 2):
        low, high = bootstrap_interval(values, np.median, n_resamples=500, seed=seed)
        assert (low, high) == (1.0, 10.0)
    low, high = bootstrap_interval(values, lambda x: float(np.max(x)), n_resamples=200)
    assert high == 10.0
    assert bootstrap_interval([3.0]) == (3.0, 3.0)


@pytest.mark.parametrize(
    ("values", "kwargs", "message"),
    [
        ([], {}, "no values"),
        ([1.0, float("nan")], {}, "not finite"),
        ([1.0], {"confidence": 1.5}, "confidence"),
        ([1.0], {"n_resamples": 0}, "n_resamples"),
    ],
)
def test_bootstrap_interval_rejects_bad_input(values, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(values, **kwargs)


def test_summarize_values_drops_missing() -> None:
    out = summarize_values([1.0, None, 3.0, float("nan"), 5.0, 7.0])
    assert out["n"] == 4
    assert out["n_missing"] == 2
    assert out["mean"] == pytest.approx(4.0)
    assert out["median"] == pytest.approx(4.0)
    assert out["std"] == pytest.approx(np.std([1, 3, 5, 7], ddof=1))
    assert (out["ci_low"], out["ci_high"]) == pytest.approx(
        _percentile_bootstrap([1.0, 3.0, 5.0, 7.0], 10000, 0), abs=1e-12
    )
    assert (out["ci_low"], out["ci_high"]) == (2.0, 6.0)  # measured, seed 0
    # Student t: 4 ± t_{0.975,3} · s / 2 with s = 2.581989: 4 ± 4.108521
    assert out["t_low"] == pytest.approx(4.0 - 4.108521, abs=1e-5)
    assert out["t_high"] == pytest.approx(4.0 + 4.108521, abs=1e-5)
    empty = summarize_values([None, None])
    assert empty["n"] == 0 and empty["n_missing"] == 2
    assert empty["mean"] is None and empty["ci_low"] is None
    assert summarize_values([2.0])["std"] is None


def test_compare_models_detects_known_shift() -> None:
    rng = np.random.default_rng(11)
    a = rng.normal(150.0, 40.0, 100)
    b = rng.normal(82.0, 40.0, 120)
    out = compare_models([*a, None], b, seed=2)
    assert out["n_a"] == 100 and out["n_b"] == 120 and out["n_missing_a"] == 1
    assert out["difference"] == pytest.approx(a.mean() - b.mean())
    assert out["ci_low"] < out["difference"] < out["ci_high"]
    assert out["ci_low"] < 68.0 < out["ci_high"]
    assert out["ci_low"] > 0
    assert out["p_value"] == pytest.approx(1 / 10001)  # no permutation as extreme
    assert out["p_value_text"] == "< 1/10000"
    assert out["t_low"] < 68.0 < out["t_high"] and out["t_low"] > 0
    # the pooled spread is ~40: at 100 and 120 per group an ~15 meV/atom difference is
    # detectable with 80 % power (2.8 · 40 · sqrt(1/100 + 1/120) = 15.2)
    assert out["pooled_std"] == pytest.approx(
        math.sqrt((99 * a.var(ddof=1) + 119 * b.var(ddof=1)) / 218)
    )
    assert out["detectable_difference"] == pytest.approx(
        2.80 * out["pooled_std"] * math.sqrt(1 / 100 + 1 / 120), rel=0.01
    )


def test_compare_models_no_difference() -> None:
    rng = np.random.default_rng(12)
    out = compare_models(rng.normal(0, 1, 60), rng.normal(0, 1, 60), seed=0)
    assert out["ci_low"] < 0.0 < out["ci_high"]
    assert out["p_value"] > 0.05
    empty = compare_models([None], [1.0, 2.0])
    assert empty["difference"] is None and empty["p_value"] is None and "a" in empty["note"]


def test_summarize_by_model_groups_rows() -> None:
    rows = [
        {"model": "cdvae", "delta_e_mev_per_atom": 100.0, "rmsd": 0.1},
        {"model": "cdvae", "delta_e_mev_per_atom": 120.0, "rmsd": None},
        {"model": "dp_cdvae", "delta_e_mev_per_atom": 40.0, "error": "relax failed"},
        {"delta_e_mev_per_atom": 1.0},
    ]
    out = summarize_by_model(rows)
    assert list(out) == ["cdvae", "dp_cdvae", "unknown"]
    assert out["cdvae"]["delta_e_mev_per_atom"]["mean"] == pytest.approx(110.0)
    assert out["cdvae"]["rmsd"]["n"] == 1 and out["cdvae"]["rmsd"]["n_missing"] == 1
    assert out["dp_cdvae"]["e_above_hull_eV"]["n"] == 0
    assert set(out["cdvae"]) == {  # the default keys
        "delta_e_mev_per_atom",
        "rmsd",
        "dft_delta_e_mev_per_atom",
        "dft_rmsd",
        "e_above_hull_eV",
    }
    custom = summarize_by_model(rows, model_key="model", keys=("rmsd",))
    assert set(custom["cdvae"]) == {"rmsd"}


def test_dataset_floor_rows_have_the_models_columns_and_settings() -> None:
    from pymatgen.core import Lattice, Structure

    from analysis.stability_rows import structure_row

    given = Structure(Lattice.cubic(3.6), ["C", "C"], [[0, 0, 0], [0.26, 0.24, 0.25]])
    relaxed = given.copy()
    relaxed.scale_lattice(given.volume * 0.9)
    doc = {
        "status": "ok",
        "error": None,
        "settings_hash": "h1",
        "initial_energy_per_atom_eV": -9.00,
        "final_energy_per_atom_eV": -9.05,
        "final_structure": relaxed.as_dict(),
    }
    rows = dataset_floor_rows(
        [("test:a", given), ("test:b", given)], {"test:a": doc}, settings_hash="h1"
    )
    first, missing = rows
    assert first["model"] == "test split" and first["settings_hash"] == "h1"
    assert first["delta_e_mev_per_atom"] == pytest.approx(50.0)
    assert first["delta_volume_frac"] == pytest.approx(-0.1)
    assert first["energy_quantity"] == "E"
    assert not any(k.startswith("_") for k in first)
    assert missing["status"] == "not_relaxed" and "test:b" in missing["error"]
    model_row = structure_row("0-0", given, doc, model="cdvae", settings_hash="h1")
    assert set(first) == {k for k in model_row if not k.startswith("_")} - {"model"} | {"model"}
    metrics = {m.name: m.value for m in summarize_stability(rows)}
    assert metrics["mean_delta_e_mev_per_atom"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="test:a: relaxed with settings 'h1'"):
        dataset_floor_rows([("test:a", given)], {"test:a": doc}, settings_hash="other")
