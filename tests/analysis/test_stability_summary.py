"""Bootstrap intervals, per-model summaries and the difference between two models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.stability import (
    bootstrap_interval,
    compare_models,
    summarize_by_model,
    summarize_values,
)


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
    low, high = bootstrap_interval(values, np.median, n_resamples=500)
    assert 1.0 <= low <= high <= 10.0
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
    assert out["ci_low"] < 4.0 < out["ci_high"]
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
    assert out["p_value"] < 0.001


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
    assert set(out["cdvae"]) == {
        "delta_e_mev_per_atom",
        "rmsd",
        "dft_delta_e_mev_per_atom",
        "dft_rmsd",
        "e_above_hull_eV",
    }
    custom = summarize_by_model(rows, model_key="model", keys=("rmsd",))
    assert set(custom["cdvae"]) == {"rmsd"}
