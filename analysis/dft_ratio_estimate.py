"""DFT ΔE of a whole row from the force field on all of it and DFT on a random subset.

The stability experiment relaxes every structure of a row with the force field and a random
subset with DFT. Where the two methods' ΔE are nearly proportional on the subset (see
:mod:`analysis.method_agreement`), the force-field values of the whole row carry information
about the DFT mean that the subset alone lacks. This is two-phase (double) sampling with the
ratio estimator (W. G. Cochran, *Sampling Techniques*, 3rd ed., Wiley 1977, chapter 12).

Definitions (per row label)
---------------------------
phase 1
    The ``N`` eligible structures: a finite force-field ΔE and, under a cell-size cap, at most
    ``max_sites`` atoms (the structures the DFT subset was drawn from).
phase 2
    The ``n`` of them with a DFT ΔE as well.
``ratio``
    ``R = ȳ₂ / x̄₂``: mean DFT over mean force-field ΔE on the pairs.
``estimate``
    ``R · x̄₁``: the DFT mean over the ``N`` eligible structures.
``se``
    ``sqrt(s_y²/N + (1/n − 1/N)(s_y² + R² s_x² − 2 R s_xy))`` with the sample variances and
    covariance of the pairs (``ddof = 1``); interval ``estimate ± t_{(1+c)/2, n−1} · se``.
differences
    ``estimate_a − estimate_b ± t_ν · sqrt(se_a² + se_b²)`` with the Welch–Satterthwaite
    ``ν = (v_a + v_b)² / (v_a²/(n_a − 1) + v_b²/(n_b − 1))``; two-sided t-test p.

Assumptions, which the report states: the DFT subset is a random draw of the eligible
structures with equal chances (random or stratified by cell size in equal-count groups);
DFT and force field are proportional through the origin over the eligible structures, not only
on the subset; chosen structures without a DFT value (failed, or not yet run) are missing at
random. The estimate says nothing of cells above the cap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from analysis.method_agreement import DFT_KEY, FORCE_FIELD_KEY
from analysis.stability_stats import welch_satterthwaite_df

RANDOM_SELECTIONS: tuple[str, ...] = ("stratified", "random")
"""DFT selections (:mod:`analysis.dft_subset`) that draw with equal chances."""


def _value(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    if isinstance(value, int | float) and math.isfinite(float(value)):
        return float(value)
    return None


def ratio_estimate(
    force_field_all: Sequence[float],
    pairs: Sequence[tuple[float, float]],
    confidence: float = 0.95,
) -> dict[str, Any] | None:
    """Two-phase ratio estimate of the DFT mean of one row.

    Parameters
    ----------
    force_field_all
        Force-field ΔE of the ``N`` phase-1 structures (the pairs' structures among them).
    pairs
        ``(force field, DFT)`` ΔE of the ``n`` phase-2 structures.
    confidence
        Coverage of the t-interval, in (0, 1).

    Returns
    -------
    dict or None
        ``N``, ``n``, ``mean_force_field`` (phase 1), ``ratio``, ``estimate``, ``se``, ``t_low``,
        ``t_high``; ``None`` below two pairs or when the pairs' force-field mean is zero.
    """
    x_all = np.asarray(force_field_all, dtype=float)
    if len(pairs) < 2 or len(pairs) > len(x_all):
        return None
    x, y = (np.asarray(column, dtype=float) for column in zip(*pairs, strict=True))
    if x.mean() == 0:
        return None
    big_n, n = len(x_all), len(x)
    ratio = float(y.mean() / x.mean())
    estimate = ratio * float(x_all.mean())
    s_xy = float(np.cov(x, y, ddof=1)[0, 1])
    s_x2, s_y2 = float(x.var(ddof=1)), float(y.var(ddof=1))
    residual = max(s_y2 + ratio**2 * s_x2 - 2.0 * ratio * s_xy, 0.0)
    se = math.sqrt(s_y2 / big_n + (1.0 / n - 1.0 / big_n) * residual)
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * se
    return {
        "N": big_n,
        "n": n,
        "mean_force_field": float(x_all.mean()),
        "ratio": ratio,
        "estimate": estimate,
        "se": se,
        "t_low": estimate - half,
        "t_high": estimate + half,
    }


def dft_ratio_estimates(
    rows: Sequence[Mapping[str, Any]],
    models: Sequence[str],
    pairs: Sequence[tuple[str, str]] = (),
    max_sites: int | None = None,
    selection: str = "stratified",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Ratio estimates of every row's DFT mean and their differences.

    Parameters
    ----------
    rows
        Experiment rows with ``model``, ``n_sites``, ``delta_e_mev_per_atom`` and
        ``dft_delta_e_mev_per_atom``.
    models
        Row labels in report order; labels without an estimate are left out.
    pairs
        ``(a, b)`` labels whose difference ``a − b`` is wanted (pairs without two estimates
        are left out).
    max_sites
        The DFT subset's cell-size cap (``None``: every cell was eligible).
    selection
        How the DFT subset was drawn; outside :data:`RANDOM_SELECTIONS` (``"smallest"``,
        ``"lowest_energy"``) the subset is not a random draw and nothing is estimated.
    confidence
        Coverage of the intervals.

    Returns
    -------
    dict
        ``max_sites``, ``selection``, ``rows`` (per label: ``model``, the fields of
        :func:`ratio_estimate` and ``n_chosen``, the eligible structures chosen for DFT, of
        which ``n`` have a value), ``differences`` (per pair with two estimates: ``a``, ``b``,
        ``difference``, ``t_low``, ``t_high``, ``df``, ``p_value``) and, for DFT values from
        a selection that is not random, ``skipped`` (why; no rows).
    """
    out: dict[str, Any] = {"max_sites": max_sites, "selection": selection}
    has_dft = any(_value(r, DFT_KEY) is not None for r in rows)
    if selection not in RANDOM_SELECTIONS and has_dft:
        why = f"DFT selection {selection!r} is not a random draw of the eligible structures"
        return {**out, "rows": [], "differences": [], "skipped": why}
    estimates = []
    for model in models:
        eligible = [
            r
            for r in rows
            if r.get("model") == model
            and _value(r, FORCE_FIELD_KEY) is not None
            and (max_sites is None or int(r.get("n_sites") or 0) <= max_sites)
        ]
        both = [
            (_value(r, FORCE_FIELD_KEY), _value(r, DFT_KEY))
            for r in eligible
            if _value(r, DFT_KEY) is not None
        ]
        found = ratio_estimate([_value(r, FORCE_FIELD_KEY) for r in eligible], both, confidence)
        if found is not None:
            n_chosen = sum(1 for r in eligible if r.get("dft_selected"))
            estimates.append({"model": model, **found, "n_chosen": max(n_chosen, found["n"])})
    by_label = {e["model"]: e for e in estimates}
    differences = []
    for a_label, b_label in pairs:
        a, b = by_label.get(a_label), by_label.get(b_label)
        if a is None or b is None:
            continue
        va, vb = a["se"] ** 2, b["se"] ** 2
        if va + vb == 0:
            continue
        df = welch_satterthwaite_df(va, vb, a["n"], b["n"])
        difference = a["estimate"] - b["estimate"]
        se = math.sqrt(va + vb)
        half = float(stats.t.ppf((1.0 + confidence) / 2.0, df)) * se
        differences.append(
            {
                "a": a["model"],
                "b": b["model"],
                "difference": difference,
                "t_low": difference - half,
                "t_high": difference + half,
                "df": float(df),
                "p_value": float(2.0 * stats.t.sf(abs(difference) / se, df)),
            }
        )
    return {**out, "rows": estimates, "differences": differences}
