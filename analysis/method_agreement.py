"""The force field against DFT: ΔE (ΔH) of the same structures from both methods.

The stability experiment relaxes every structure with the force field and a subset with DFT.
On that subset each structure has both values, so the two methods can be compared pair by
pair: a force-field verdict over all structures means something for DFT only if the force field
tracks DFT on the subset.

Definitions (per row label, over the structures with both values)
-----------------------------------------------------------------
``difference``
    ``ΔE_DFT − ΔE_force field`` per structure, meV/atom; its mean with a Student-t interval
    (:func:`analysis.stability_stats.t_interval`).
``n_dft_larger`` / ``n_dft_smaller``
    Structures whose DFT value is the larger / the smaller; the two-sided sign test
    (``scipy.stats.binomtest`` with p = 1/2 over the structures that differ) says whether one
    method is systematically larger.
``spearman``
    Spearman rank correlation of the two values: whether the force field orders the structures
    as DFT does (``None`` below three pairs or with a constant column).
``scale``
    Slope of the least-squares line through the origin of the force-field values against the
    DFT values, ``Σ ΔE_ff ΔE_DFT / Σ ΔE_DFT²``, with a percentile-bootstrap interval over the
    pairs (:func:`analysis.stability.bootstrap_interval`, seeded). 1 means the force field
    gives DFT's values; below 1 its energy surface is softer than DFT's, every ΔE scaled down
    alike, the "PES softening" of universal force fields (Deng et al., npj Comput.
    Mater. (2025), doi:10.1038/s41524-024-01500-6). A scale, unlike a constant offset, does not
    cancel in the difference between two rows: it multiplies that difference as well.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from analysis.stability import bootstrap_interval
from analysis.stability_stats import t_interval

FORCE_FIELD_KEY = "delta_e_mev_per_atom"
DFT_KEY = "dft_delta_e_mev_per_atom"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(float(value))


def _through_origin_slope(
    ff: np.ndarray, dft: np.ndarray, confidence: float, seed: int
) -> dict[str, Any]:
    """``scale`` of ``ff`` against ``dft`` with its bootstrap interval over the pairs.

    Pairs with ``ΔE_DFT = 0`` add nothing to either sum of the slope; they are left out so that
    every resample has a slope.
    """
    keep = dft != 0
    ff, dft = ff[keep], dft[keep]
    if not len(dft):
        return {"scale": None, "scale_low": None, "scale_high": None}

    def slope(indices: np.ndarray, axis: int = -1) -> np.ndarray:
        i = np.asarray(indices, dtype=int)
        return (ff[i] * dft[i]).sum(axis=axis) / (dft[i] ** 2).sum(axis=axis)

    low = high = None
    if len(dft) >= 2:
        low, high = bootstrap_interval(
            np.arange(len(dft), dtype=float), slope, confidence=confidence, seed=seed
        )
    return {"scale": float(slope(np.arange(len(dft)))), "scale_low": low, "scale_high": high}


def dft_vs_force_field(
    rows: Sequence[Mapping[str, Any]],
    models: Sequence[str],
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Paired comparison of the DFT and force-field ΔE (ΔH) per row label.

    Parameters
    ----------
    rows
        Experiment rows with ``model``, ``delta_e_mev_per_atom`` and
        ``dft_delta_e_mev_per_atom``.
    models
        Row labels in report order; labels without a pair are left out.
    confidence
        Coverage of the t-interval of the mean difference and of the scale's bootstrap
        interval.
    seed
        Seed of the scale's bootstrap.

    Returns
    -------
    list of dict
        Per label: ``model``, ``n`` (pairs), ``mean_force_field``, ``mean_dft``,
        ``mean_difference`` (DFT − force field, meV/atom), ``t_low``/``t_high`` (``None``
        below two pairs), ``n_dft_larger``, ``n_dft_smaller``, ``sign_test_p`` (``None`` when
        no pair differs), ``spearman``, and ``scale`` with ``scale_low``/``scale_high``
        (``None`` without a non-zero DFT value; no interval below two).
    """
    out = []
    for model in models:
        pairs = [
            (float(r[FORCE_FIELD_KEY]), float(r[DFT_KEY]))
            for r in rows
            if r.get("model") == model
            and _finite(r.get(FORCE_FIELD_KEY))
            and _finite(r.get(DFT_KEY))
        ]
        if not pairs:
            continue
        ff, dft = (np.array(column) for column in zip(*pairs, strict=True))
        diff = dft - ff
        low, high = t_interval(diff.tolist(), confidence)
        larger, smaller = int((diff > 0).sum()), int((diff < 0).sum())
        sign_p = (
            float(stats.binomtest(larger, larger + smaller, 0.5).pvalue)
            if larger + smaller
            else None
        )
        spearman = None
        if len(pairs) >= 3 and np.ptp(ff) > 0 and np.ptp(dft) > 0:
            spearman = float(stats.spearmanr(ff, dft).statistic)
        out.append(
            {
                "model": model,
                "n": len(pairs),
                "mean_force_field": float(ff.mean()),
                "mean_dft": float(dft.mean()),
                "mean_difference": float(diff.mean()),
                "t_low": low,
                "t_high": high,
                "n_dft_larger": larger,
                "n_dft_smaller": smaller,
                "sign_test_p": sign_p,
                "spearman": spearman,
                **_through_origin_slope(ff, dft, confidence, seed),
            }
        )
    return out
