"""How far a generated structure is from its relaxed ground state: ΔE, RMSD, ΔV.

Minimal and documented: one function for one structure (:func:`compare_to_relaxed`) and one
summary over many (:func:`summarize_stability`, a list of :class:`~analysis.results.MetricResult`).
Per-model statistics: :func:`summarize_values` (mean, median, std and a percentile-bootstrap 95 %
interval of the mean, :func:`bootstrap_interval`), :func:`summarize_by_model` over per-structure
rows, and :func:`compare_models` (difference of two models' means with a bootstrap interval, a
Welch t-interval, a permutation p-value and the smallest difference the sample sizes could detect,
:mod:`analysis.stability_stats`). :func:`dataset_floor_rows` gives the same per-structure rows for
test-split structures relaxed with the same relaxer (the floor every model is read against).
Energy above hull is in :mod:`analysis.hull`, S.U.N. in :mod:`analysis.sun`, rows of the stability
experiment in :mod:`analysis.stability_rows`, plots in :mod:`analysis.stability_plots`.

Definitions
-----------
``delta_e_mev_per_atom``
    ``1000 * (E_initial - E_relaxed) / atom``, both energies from the same method (the relaxer's
    own energy of the structure as given, then of the relaxed one); ≥ 0 for a relaxation that
    went downhill.
``rmsd``
    ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(initial, relaxed)[0]``,
    the RMS displacement normalised by ``(V/N)^(1/3)`` as in the CDVAE/DiffCSP protocol (the same
    matcher tolerances as the CSP metrics); ``None`` when the matcher finds no match.
``rmsd_unscaled``
    The same with ``scale=False`` (cells compared without rescaling to a common volume,
    :func:`analysis.structure_metrics.rmsd_to_relaxed`).
``delta_volume_frac``
    ``(V_relaxed - V_initial) / V_initial``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from analysis.results import MetricResult
from analysis.stability_rows import DATASET_LABEL, public_row, structure_row
from analysis.stability_stats import (
    minimum_detectable_difference,
    p_value_text,
    pooled_std,
    t_interval,
    welch_interval,
)
from analysis.structure_metrics import MATCHER_TOLERANCES, rmsd_to_relaxed


def compare_to_relaxed(
    initial: Structure,
    relaxed: Structure,
    initial_energy_per_atom_eV: float | None,
    relaxed_energy_per_atom_eV: float | None,
    *,
    matcher: StructureMatcher | None = None,
) -> dict[str, Any]:
    """Compare one structure with its relaxed version.

    Parameters
    ----------
    initial
        The structure as generated.
    relaxed
        The relaxed structure.
    initial_energy_per_atom_eV, relaxed_energy_per_atom_eV
        Energies per atom (eV) of both, from the same method; ``None`` if unknown.
    matcher
        A StructureMatcher (default: :data:`MATCHER_TOLERANCES`).

    Returns
    -------
    dict
        ``delta_e_mev_per_atom`` (float or None), ``rmsd`` (float or None), ``matched``
        (bool), ``rmsd_unscaled`` (float or None), ``matched_unscaled`` (bool),
        ``delta_volume_frac`` (float), ``n_sites`` (int).
    """
    matcher = matcher or StructureMatcher(**MATCHER_TOLERANCES)
    delta_e = None
    if initial_energy_per_atom_eV is not None and relaxed_energy_per_atom_eV is not None:
        delta_e = 1000.0 * (float(initial_energy_per_atom_eV) - float(relaxed_energy_per_atom_eV))
        if not math.isfinite(delta_e):
            delta_e = None
    rms = matcher.get_rms_dist(initial, relaxed)
    rmsd = None if rms is None else float(rms[0])
    unscaled = rmsd_to_relaxed(initial, relaxed, scale=False)
    return {
        "delta_e_mev_per_atom": delta_e,
        "rmsd": rmsd,
        "matched": rmsd is not None,
        "rmsd_unscaled": unscaled,
        "matched_unscaled": unscaled is not None,
        "delta_volume_frac": (relaxed.volume - initial.volume) / initial.volume,
        "n_sites": len(initial),
    }


def summarize_stability(rows: Sequence[dict[str, Any]]) -> list[MetricResult]:
    """Summarise per-structure comparisons into metrics.

    Parameters
    ----------
    rows
        Outputs of :func:`compare_to_relaxed` (rows with ``error`` set count as failed).

    Returns
    -------
    list of MetricResult
        ``mean_delta_e_mev_per_atom``, ``median_delta_e_mev_per_atom``, ``match_rate_to_relaxed``,
        ``mean_rmsd_to_relaxed`` and ``mean_abs_delta_volume_frac``.
    """
    ok = [r for r in rows if not r.get("error")]
    de = np.array(
        [r["delta_e_mev_per_atom"] for r in ok if r.get("delta_e_mev_per_atom") is not None]
    )
    rmsd = np.array([r["rmsd"] for r in ok if r.get("rmsd") is not None])
    dv = np.array(
        [abs(r["delta_volume_frac"]) for r in ok if r.get("delta_volume_frac") is not None]
    )
    counts = {"n_total": len(rows), "n_compared": len(ok), "n_failed": len(rows) - len(ok)}
    definition = {"matcher": MATCHER_TOLERANCES, "energy": "relaxer's own energies, per atom"}
    errors = [
        {"id": str(r.get("structure_id", "?")), "reason": str(r["error"])}
        for r in rows
        if r.get("error")
    ]

    def _stat(values: np.ndarray, fn: Any) -> float | None:
        return float(fn(values)) if values.size else None

    return [
        MetricResult(
            "mean_delta_e_mev_per_atom",
            _stat(de, np.mean),
            definition,
            {**counts, "n_with_energy": int(de.size)},
            "Mean energy drop on relaxation, meV/atom (initial minus relaxed).",
            errors,
        ),
        MetricResult(
            "median_delta_e_mev_per_atom",
            _stat(de, np.median),
            definition,
            {**counts, "n_with_energy": int(de.size)},
            "Median energy drop on relaxation, meV/atom.",
        ),
        MetricResult(
            "match_rate_to_relaxed",
            (rmsd.size / len(ok)) if ok else None,
            definition,
            {**counts, "n_matched": int(rmsd.size)},
            "Fraction of compared structures that StructureMatcher matches to their relaxed form.",
        ),
        MetricResult(
            "mean_rmsd_to_relaxed",
            _stat(rmsd, np.mean),
            definition,
            {**counts, "n_matched": int(rmsd.size)},
            "Mean normalised RMS displacement between generated and relaxed (matched only).",
        ),
        MetricResult(
            "mean_abs_delta_volume_frac",
            _stat(dv, np.mean),
            definition,
            counts,
            "Mean |V_relaxed - V_initial| / V_initial.",
        ),
    ]


# --------------------------------------------------------------------------------------------
# Summaries with bootstrap intervals, and the difference between two models
# --------------------------------------------------------------------------------------------

STABILITY_KEYS: tuple[str, ...] = (
    "delta_e_mev_per_atom",
    "rmsd",
    "dft_delta_e_mev_per_atom",
    "dft_rmsd",
    "e_above_hull_eV",
)
"""Per-structure quantities summarised per model by :func:`summarize_by_model`."""

_BOOTSTRAP_CHUNK = 1000
"""Resamples drawn at once (bounds memory to ``chunk * n`` floats)."""


def _finite(values: Sequence[float | None] | np.ndarray) -> tuple[np.ndarray, int]:
    """Return the finite values as a float array and the number of dropped (None/NaN/inf) ones."""
    kept: list[float] = []
    missing = 0
    for value in values:
        if value is None:
            missing += 1
            continue
        x = float(value)
        if math.isfinite(x):
            kept.append(x)
        else:
            missing += 1
    return np.asarray(kept, dtype=float), missing


def _apply_rowwise(statistic: Callable[..., Any], samples: np.ndarray) -> np.ndarray:
    """Apply ``statistic`` to each row of ``samples`` (vectorised when it takes ``axis``)."""
    try:
        out = np.asarray(statistic(samples, axis=-1), dtype=float)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(statistic(row)) for row in samples])


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[..., Any] = np.mean,
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a statistic.

    ``n_resamples`` samples of size ``n`` are drawn with replacement from ``values``; the
    interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    statistic over the resamples (the percentile method, Efron & Tibshirani 1993, §13.3).

    Parameters
    ----------
    values
        The observed sample (finite numbers).
    statistic
        Function of a 1-d array; if it accepts ``axis`` (as the numpy reductions do) the
        resamples are evaluated in vectorised chunks.
    n_resamples
        Number of bootstrap resamples.
    confidence
        Coverage of the interval, in (0, 1).
    seed
        Seed of the ``numpy.random.default_rng`` generator (same seed, same interval).

    Returns
    -------
    tuple of float
        ``(low, high)``.

    Raises
    ------
    ValueError
        Empty ``values``, a non-finite value, ``n_resamples < 1`` or ``confidence`` outside (0, 1).
    """
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_interval: no values")
    if not np.all(np.isfinite(data)):
        bad = int(np.flatnonzero(~np.isfinite(data))[0])
        raise ValueError(f"bootstrap_interval: value {bad} is not finite ({data[bad]})")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    stats: list[np.ndarray] = []
    for start in range(0, n_resamples, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, n_resamples - start)
        idx = rng.integers(0, data.size, size=(size, data.size))
        stats.append(_apply_rowwise(statistic, data[idx]))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.concatenate(stats), [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize_values(
    values: Sequence[float | None],
    *,
    seed: int = 0,
    n_resamples: int = 10000,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Mean, median, spread and a bootstrap interval of the mean of one quantity.

    Parameters
    ----------
    values
        Per-structure values; ``None``, NaN and inf are dropped and counted in ``n_missing``.
    seed
        Seed of the bootstrap.
    n_resamples
        Bootstrap resamples.
    confidence
        Coverage of the interval (default 95 %).

    Returns
    -------
    dict
        ``n`` (finite values used), ``n_missing``, ``mean``, ``median``, ``std`` (sample
        standard deviation, ``ddof=1``; ``None`` for ``n < 2``), ``ci_low``/``ci_high``
        (percentile bootstrap interval of the mean, :func:`bootstrap_interval`), ``t_low``/
        ``t_high`` (Student-t interval of the mean, ``None`` for ``n < 2``), ``confidence`` and
        ``n_resamples``. With ``n == 0`` every statistic is ``None``.
    """
    data, missing = _finite(values)
    out: dict[str, Any] = {
        "n": int(data.size),
        "n_missing": missing,
        "mean": None,
        "median": None,
        "std": None,
        "ci_low": None,
        "ci_high": None,
        "t_low": None,
        "t_high": None,
        "confidence": confidence,
        "n_resamples": n_resamples,
    }
    if data.size == 0:
        return out
    low, high = bootstrap_interval(
        data, np.mean, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    out.update(
        mean=float(np.mean(data)),
        median=float(np.median(data)),
        std=float(np.std(data, ddof=1)) if data.size > 1 else None,
        ci_low=low,
        ci_high=high,
    )
    out["t_low"], out["t_high"] = t_interval(data, confidence)
    return out


def compare_models(
    values_a: Sequence[float | None],
    values_b: Sequence[float | None],
    *,
    seed: int = 0,
    n_resamples: int = 10000,
    n_permutations: int = 10000,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Difference of means ``mean(a) - mean(b)`` of two independent samples, with its uncertainty.

    The interval is a percentile bootstrap in which each group is resampled independently
    with replacement (its own size kept); a Welch t-interval is given beside it. The p-value is
    a two-sided permutation test of ``|mean(a) - mean(b)|`` under random relabelling of the
    pooled values, ``(1 + #{|d_perm| >= |d_obs|}) / (1 + n_permutations)`` (never exactly 0;
    ``p_value_text`` says ``"< 1/N"`` at that resolution). ``detectable_difference`` is the
    smallest true difference a two-sample t-test at these sizes and this pooled spread detects
    with 80 % power at the 5 % level.

    Parameters
    ----------
    values_a, values_b
        Per-structure values of the two models (``None``/NaN dropped and counted).
    seed
        Seed of both the bootstrap and the permutations.
    n_resamples
        Bootstrap resamples.
    n_permutations
        Random permutations of the test.
    confidence
        Coverage of the interval.

    Returns
    -------
    dict
        ``difference``, ``ci_low``, ``ci_high`` (bootstrap), ``t_low``, ``t_high`` (Welch),
        ``p_value``, ``p_value_text``, ``pooled_std``, ``detectable_difference``, ``mean_a``,
        ``mean_b``, ``n_a``, ``n_b``, ``n_missing_a``, ``n_missing_b``, ``confidence``,
        ``n_resamples``, ``n_permutations`` and ``method``. If a group has no finite value the
        statistics are ``None`` (and ``note`` says why) instead of an exception, so a report
        still renders.
    """
    _check_confidence(confidence)
    a, miss_a = _finite(values_a)
    b, miss_b = _finite(values_b)
    out: dict[str, Any] = {
        "difference": None,
        "ci_low": None,
        "ci_high": None,
        "t_low": None,
        "t_high": None,
        "p_value": None,
        "p_value_text": "",
        "pooled_std": None,
        "detectable_difference": None,
        "mean_a": float(np.mean(a)) if a.size else None,
        "mean_b": float(np.mean(b)) if b.size else None,
        "n_a": int(a.size),
        "n_b": int(b.size),
        "n_missing_a": miss_a,
        "n_missing_b": miss_b,
        "confidence": confidence,
        "n_resamples": n_resamples,
        "n_permutations": n_permutations,
        "method": "difference of means a - b; percentile bootstrap resampling each group "
        "independently; Welch t-interval; two-sided permutation test; smallest difference "
        "detected with 80 % power at the 5 % level (two-sample t-test, pooled spread)",
    }
    if a.size == 0 or b.size == 0:
        out["note"] = "no finite values in " + ("a" if a.size == 0 else "b")
        return out
    diff = float(np.mean(a) - np.mean(b))
    rng = np.random.default_rng(seed)
    boot: list[np.ndarray] = []
    for start in range(0, n_resamples, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, n_resamples - start)
        ma = a[rng.integers(0, a.size, size=(size, a.size))].mean(axis=1)
        mb = b[rng.integers(0, b.size, size=(size, b.size))].mean(axis=1)
        boot.append(ma - mb)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.concatenate(boot), [alpha, 1.0 - alpha])

    pooled = np.concatenate([a, b])
    exceed = 0
    tol = 1e-12 * max(1.0, abs(diff))
    for start in range(0, n_permutations, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, n_permutations - start)
        perm = rng.permuted(np.broadcast_to(pooled, (size, pooled.size)), axis=1)
        d = perm[:, : a.size].mean(axis=1) - perm[:, a.size :].mean(axis=1)
        exceed += int(np.count_nonzero(np.abs(d) >= abs(diff) - tol))
    p_value = (1 + exceed) / (1 + n_permutations)
    t_low, t_high = welch_interval(a, b, confidence)
    spread = pooled_std(a, b)
    out.update(
        difference=diff,
        ci_low=float(low),
        ci_high=float(high),
        t_low=t_low,
        t_high=t_high,
        p_value=p_value,
        p_value_text=p_value_text(p_value, n_permutations),
        pooled_std=spread,
        detectable_difference=minimum_detectable_difference(
            int(a.size), int(b.size), spread, alpha=1.0 - confidence
        ),
    )
    return out


def summarize_by_model(
    rows: Sequence[dict[str, Any]],
    *,
    model_key: str = "model",
    keys: Sequence[str] = STABILITY_KEYS,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Group per-structure rows by model and summarise each quantity.

    Parameters
    ----------
    rows
        Per-structure rows (e.g. from ``analyze_task`` with a model column added). A row
        without ``model_key`` is grouped under ``"unknown"``; a missing or ``None`` quantity
        counts in ``n_missing``; rows with ``error`` set still count (their values are usually
        ``None``).
    model_key
        The row key that names the model.
    keys
        The quantities to summarise.
    seed
        Seed of the bootstraps.

    Returns
    -------
    dict
        ``{model: {key: summarize_values(...)}}``, models in first-seen order.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(str(row.get(model_key, "unknown")), []).append(row)
    return {
        model: {key: summarize_values([r.get(key) for r in group], seed=seed) for key in keys}
        for model, group in grouped.items()
    }


def dataset_floor_rows(
    structures: Sequence[tuple[str, Structure]],
    docs: Mapping[str, Mapping[str, Any] | None],
    *,
    settings_hash: str | None = None,
    label: str = DATASET_LABEL,
    keep_structures: bool = False,
) -> list[dict[str, Any]]:
    """Stability rows of test-split structures relaxed with the models' relaxer and protocol.

    The dataset's own floor: what ΔE (ΔH), RMSD and ΔV the same relaxer gives to structures
    that are already minima of the reference method. Every model's numbers are read against
    it; the rows have the same columns as the models' rows
    (:func:`analysis.stability_rows.structure_row`), so :func:`summarize_stability` and
    :func:`summarize_by_model` take them as they are.

    Parameters
    ----------
    structures
        ``(id, structure)`` of the test-split structures as stored in the split (e.g. ids
        ``"test:<material id>"``), drawn at random (:func:`analysis.dft_subset.random_subset`).
    docs
        ``{id: relaxation document}`` of the same relaxer and settings as the models' rows
        (``None`` or absent: not relaxed, the row says so).
    settings_hash
        The models' relaxation settings hash: every document must carry it.
    label
        The ``model`` value of the rows.
    keep_structures
        Keep the private structure fields (``_structure``, ``_relaxed_structure``) that the
        hull and S.U.N. steps read.

    Returns
    -------
    list of dict
        One row per structure, in input order.

    Raises
    ------
    ValueError
        A document whose settings hash differs from ``settings_hash`` (the message names the
        structure and both hashes): its numbers would not be comparable with the models'.
    """
    rows = []
    for sid, structure in structures:
        doc = docs.get(sid)
        found = (doc or {}).get("settings_hash")
        if doc is not None and settings_hash is not None and found != settings_hash:
            raise ValueError(
                f"{sid}: relaxed with settings {found!r}, not the models' {settings_hash!r}; "
                "the dataset floor must use the same relaxer and protocol"
            )
        row = structure_row(sid, structure, doc, model=label, settings_hash=settings_hash or found)
        rows.append(row if keep_structures else public_row(row))
    return rows
