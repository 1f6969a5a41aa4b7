"""COV-R / COV-P and AMSD / AMCD (CDVAE ``compute_cov``, metrics.md §5.4).

Distances are Euclidean (``scipy.spatial.distance.cdist``) between fingerprints of the generated
crystals that have both fingerprints and the ground-truth crystals. With ``criterion="code"``
(default, as CDVAE's code):

- COV-R = mean over GT of [min_gen d_struc <= δ_S and min_gen d_comp <= δ_C]; the two minima
  are taken separately, so they may come from two different generated crystals;
- COV-P = #gen with [min_GT d_struc <= δ_S and min_GT d_comp <= δ_C] / #generated, the
  denominator counting every generated crystal, failed ones included.

``criterion="joint"`` requires one and the same crystal to be within both cutoffs (the paper's
wording). AMSD/AMCD are the means of those minimum distances (recall: over GT; precision: over
generated with fingerprints).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.spatial.distance import cdist, pdist

from analysis.datasets import cov_cutoffs
from analysis.fingerprints import (
    Fingerprint,
    FingerprintCache,
    comp_scaler,
    compute_fingerprints,
    standardise_composition,
)
from analysis.results import MetricResult

Criterion = Literal["code", "joint"]


def coverage_from_fingerprints(
    gen: Sequence[Fingerprint],
    gt: Sequence[Fingerprint],
    struct_cutoff: float,
    comp_cutoff: float,
    n_generated: int | None = None,
    criterion: Criterion = "code",
    definition: dict[str, Any] | None = None,
    gen_ids: Sequence[str] | None = None,
) -> dict[str, MetricResult]:
    """COV and AMSD/AMCD from precomputed fingerprints.

    Parameters
    ----------
    gen, gt
        Fingerprints of the generated and ground-truth crystals.
    struct_cutoff, comp_cutoff
        δ_S and δ_C.
    n_generated
        COV-P denominator (default ``len(gen)``, i.e. failed ones included).
    criterion
        ``"code"`` (separate minima, CDVAE code) or ``"joint"`` (one crystal within both).
    definition
        Extra definition entries (dataset...).
    gen_ids
        Ids of ``gen`` for the error list.

    Returns
    -------
    dict[str, MetricResult]
        ``cov_recall``, ``cov_precision``, ``amsd_recall``, ``amsd_precision``,
        ``amcd_recall``, ``amcd_precision``.
    """
    n_generated = len(gen) if n_generated is None else n_generated
    gen_ok = [fp for fp in gen if fp.ok]
    gt_ok = [fp for fp in gt if fp.ok]
    errors = [
        {"id": (gen_ids[i] if gen_ids else str(i)), "reason": str(fp.error)}
        for i, fp in enumerate(gen)
        if not fp.ok
    ]
    _, _, scaler_source = comp_scaler()
    definition = {
        "reference": "CDVAE scripts/eval_utils.py compute_cov (§5.4)",
        "struct_cutoff": struct_cutoff,
        "comp_cutoff": comp_cutoff,
        "comparison": "<= (as the code; the paper says <)",
        "criterion": criterion,
        "criterion_meaning": (
            "struct and comp minima taken separately (CDVAE code)"
            if criterion == "code"
            else "the same crystal must be within both cutoffs (paper wording)"
        ),
        "distance": "Euclidean (scipy cdist)",
        "struct_fingerprint": "matminer CrystalNNFingerprint.from_preset('ops'), site mean",
        "comp_fingerprint": "matminer ElementProperty.from_preset('magpie'), standardised",
        "comp_scaler": f"CDVAE CompScalerMeans/CompScalerStds, NaN->0; {scaler_source}",
        "cov_p_denominator": "all generated crystals, failed ones included",
        **(definition or {}),
    }
    counts = {
        "n_generated": n_generated,
        "n_generated_with_fingerprint": len(gen_ok),
        "n_gt": len(gt),
        "n_gt_with_fingerprint": len(gt_ok),
    }
    if not gen_ok or not gt_ok:
        names = ["cov_recall", "cov_precision", "amsd_recall", "amsd_precision"]
        names += ["amcd_recall", "amcd_precision"]
        value0 = {"cov_recall": 0.0, "cov_precision": 0.0}
        return {
            n: MetricResult(n, value0.get(n), definition, counts, _DESCRIPTIONS[n], errors)
            for n in names
        }
    s_gen = np.stack([fp.struct for fp in gen_ok])  # type: ignore[misc]
    s_gt = np.stack([fp.struct for fp in gt_ok])  # type: ignore[misc]
    c_gen = standardise_composition(np.stack([fp.comp for fp in gen_ok]))  # type: ignore[misc]
    c_gt = standardise_composition(np.stack([fp.comp for fp in gt_ok]))  # type: ignore[misc]
    d_struct = cdist(s_gen, s_gt)
    d_comp = cdist(c_gen, c_gt)
    s_recall, s_precision = d_struct.min(axis=0), d_struct.min(axis=1)
    c_recall, c_precision = d_comp.min(axis=0), d_comp.min(axis=1)
    if criterion == "code":
        recalled = (s_recall <= struct_cutoff) & (c_recall <= comp_cutoff)
        precise = (s_precision <= struct_cutoff) & (c_precision <= comp_cutoff)
    elif criterion == "joint":
        close = (d_struct <= struct_cutoff) & (d_comp <= comp_cutoff)
        recalled, precise = close.any(axis=0), close.any(axis=1)
    else:
        raise ValueError(f"unknown COV criterion {criterion!r}: use 'code' or 'joint'")
    counts = {
        **counts,
        "n_gt_covered": int(recalled.sum()),
        "n_generated_precise": int(precise.sum()),
    }
    values = {
        "cov_recall": float(recalled.mean()),
        "cov_precision": float(precise.sum() / n_generated) if n_generated else None,
        "amsd_recall": float(s_recall.mean()),
        "amsd_precision": float(s_precision.mean()),
        "amcd_recall": float(c_recall.mean()),
        "amcd_precision": float(c_precision.mean()),
    }
    return {
        name: MetricResult(name, value, definition, counts, _DESCRIPTIONS[name], errors)
        for name, value in values.items()
    }


_DESCRIPTIONS = {
    "cov_recall": "COV-R: fraction of GT crystals with generated ones within δ_S and δ_C.",
    "cov_precision": "COV-P: fraction of all generated crystals within δ_S and δ_C of the GT.",
    "amsd_recall": "AMSD-R: mean over GT of the closest generated structure distance.",
    "amsd_precision": "AMSD-P: mean over generated of the closest GT structure distance.",
    "amcd_recall": "AMCD-R: mean over GT of the closest generated composition distance.",
    "amcd_precision": "AMCD-P: mean over generated of the closest GT composition distance.",
}


def coverage(
    gen: Sequence[Any],
    gt: Sequence[Any],
    dataset: str | None = None,
    *,
    struct_cutoff: float | None = None,
    comp_cutoff: float | None = None,
    criterion: Criterion = "code",
    cache: FingerprintCache | str | Path | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
    gen_ids: Sequence[str] | None = None,
) -> dict[str, MetricResult]:
    """COV-R / COV-P / AMSD / AMCD of generated structures against a ground-truth set.

    Parameters
    ----------
    gen
        Generated structures (``None`` or bad items count in the COV-P denominator).
    gt
        Ground-truth structures (the dataset's test split).
    dataset
        Dataset name, used for the cutoffs unless both cutoffs are given.
    struct_cutoff, comp_cutoff
        Override δ_S / δ_C.
    criterion
        ``"code"`` (default) or ``"joint"``; see the module docstring.
    cache
        Fingerprint cache (object or SQLite path).
    n_jobs
        Worker processes for the fingerprints (:func:`analysis.parallel.resolve_jobs`:
        ``None`` = ``DFTLOOP_JOBS`` or all cores, 1 = this process).
    progress
        Show progress bars.
    gen_ids
        Ids of the generated items.

    Returns
    -------
    dict[str, MetricResult]
        See :func:`coverage_from_fingerprints`.
    """
    source = "given"
    if struct_cutoff is None or comp_cutoff is None:
        if dataset is None:
            raise ValueError("give a dataset or both struct_cutoff and comp_cutoff")
        ds_struct, ds_comp, source = cov_cutoffs(dataset)
        struct_cutoff = ds_struct if struct_cutoff is None else struct_cutoff
        comp_cutoff = ds_comp if comp_cutoff is None else comp_cutoff
    if not isinstance(cache, FingerprintCache):
        cache = FingerprintCache(cache)
    gen_fps = compute_fingerprints(gen, gen_ids, cache=cache, n_jobs=n_jobs, progress=progress)
    gt_fps = compute_fingerprints(gt, None, cache=cache, n_jobs=n_jobs, progress=progress)
    return coverage_from_fingerprints(
        gen_fps,
        gt_fps,
        struct_cutoff,
        comp_cutoff,
        n_generated=len(gen),
        criterion=criterion,
        definition={"dataset": dataset, "cutoff_source": source},
        gen_ids=gen_ids,
    )


def fingerprint_diversity(
    fps: Sequence[Fingerprint], definition: dict[str, Any] | None = None
) -> dict[str, MetricResult]:
    """CDVAE's ``comp_div`` / ``struct_div``: mean pairwise fingerprint distance of the samples.

    CDVAE computes them over the 1000 drawn valid samples (DiffCSP dropped them); the
    composition fingerprints are standardised first.

    Parameters
    ----------
    fps
        Fingerprints of the drawn valid samples (those without fingerprints are skipped).
    definition
        Extra definition entries (sampling).

    Returns
    -------
    dict[str, MetricResult]
        ``struct_div`` and ``comp_div`` (``None`` with fewer than two fingerprints).
    """
    ok = [fp for fp in fps if fp.ok]
    counts = {"n_samples": len(fps), "n_with_fingerprint": len(ok)}
    base = {
        "reference": "CDVAE GenEval get_comp_diversity/get_struct_diversity",
        **(definition or {}),
    }
    if len(ok) < 2:
        struct_div = comp_div = None
    else:
        struct_div = float(pdist(np.stack([fp.struct for fp in ok])).mean())  # type: ignore[misc]
        comp = standardise_composition(np.stack([fp.comp for fp in ok]))  # type: ignore[misc]
        comp_div = float(pdist(comp).mean())
    return {
        "struct_div": MetricResult(
            "struct_div",
            struct_div,
            {**base, "distance": "mean pairwise L2 of CrystalNN fingerprints (scipy pdist)"},
            counts,
            "Mean pairwise structure-fingerprint distance of the valid samples.",
        ),
        "comp_div": MetricResult(
            "comp_div",
            comp_div,
            {**base, "distance": "mean pairwise L2 of standardised magpie fingerprints"},
            counts,
            "Mean pairwise composition-fingerprint distance of the valid samples.",
        ),
    }
