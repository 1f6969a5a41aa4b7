"""CSP / reconstruction match rate and RMSE (metrics.md §5.5), in four named protocols.

Every protocol uses ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)`` and the first value of
``get_rms_dist``: the RMS displacement normalised by (V/N)^(1/3). A pair for which the matcher
returns ``None`` or raises is unmatched. Match rate = #matched targets / #targets (all targets,
also those with an invalid ground truth or without prediction); RMSE = mean over matched targets.

================  ====  =====================  ========================================
protocol          k     validity gate          source
================  ====  =====================  ========================================
``diffcsp``       1     pred.valid AND gt.valid DiffCSP ``RecEval``
``cdvae``         1     pred.valid             CDVAE reconstruction
``diffcsp_multi`` N     pred.valid (per cand.) DiffCSP ``RecEvalBatch`` (min RMSE)
``continuousp``   N     none                   ContinuouSP ``get_rms_dist(gt, gen)``
================  ====  =====================  ========================================

``valid`` is structural AND compositional validity (:mod:`analysis.validity`). Deviation: CDVAE
and DiffCSP also mark a crystal invalid when its CrystalNN fingerprint throws (they compute
fingerprints for every crystal, also in CSP); that gate is off here by default because it costs
~0.03-0.2 s per site. Pass ``fingerprint_gate=True`` to apply it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from analysis.construction import CheckedStructure, check_structures
from analysis.parallel import parallel_map
from analysis.results import MetricResult
from analysis.validity import (
    DEFAULT_OXIDATION_STATE_SET,
    assess_validity,
    oxidation_state_set_description,
)

MATCHER_TOLERANCES = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}
"""StructureMatcher tolerances used by CDVAE, DiffCSP and ContinuouSP."""


@dataclass(frozen=True)
class MatchProtocol:
    """How candidates are gated and combined.

    Parameters
    ----------
    name
        Protocol key.
    multi
        ``True``: all k candidates count (any match, min RMSE); ``False``: only candidate 0.
    gate
        ``"pred_and_gt"``, ``"pred"`` or ``"none"``.
    gt_first
        Call ``get_rms_dist(gt, pred)`` instead of ``(pred, gt)``.
    reference
        Where the protocol comes from.
    """

    name: str
    multi: bool
    gate: str
    gt_first: bool
    reference: str


PROTOCOLS: dict[str, MatchProtocol] = {
    "diffcsp": MatchProtocol(
        "diffcsp", False, "pred_and_gt", False, "DiffCSP scripts/compute_metrics.py RecEval"
    ),
    "cdvae": MatchProtocol("cdvae", False, "pred", False, "CDVAE reconstruction (RecEval)"),
    "diffcsp_multi": MatchProtocol(
        "diffcsp_multi", True, "pred", False, "DiffCSP RecEvalBatch (--multi_eval)"
    ),
    "continuousp": MatchProtocol(
        "continuousp", True, "none", True, "ContinuouSP exec/eval.py, tester.get_rms_dists"
    ),
}


@dataclass
class TargetMatch:
    """The match of one target under one protocol.

    Parameters
    ----------
    target_id
        The target's id (material id).
    matched
        Whether a (gated) candidate matches the ground truth.
    rms
        Normalised RMS distance of the best matching candidate, else ``None``.
    best_candidate
        Index of that candidate among the target's candidates, else ``None``.
    n_candidates
        Candidates the protocol looks at (1 for single-candidate protocols).
    n_compared
        Candidates that passed the construction check and the validity gate.
    gt_constructed
        Whether the ground truth could be built.
    gt_passed_gate
        Whether the ground truth passed the protocol's gate (always ``True`` without a gate).
    reason
        Why the target cannot match (no candidate, ground truth missing or gated), else ``None``.
    """

    target_id: str
    matched: bool
    rms: float | None
    best_candidate: int | None
    n_candidates: int
    n_compared: int
    gt_constructed: bool
    gt_passed_gate: bool
    reason: str | None = None


@dataclass
class MatchOutcome:
    """What :func:`match_targets` returns: per-target matches and the two metrics.

    Parameters
    ----------
    targets
        One :class:`TargetMatch` per target, in input order.
    metrics
        ``{"match_rate": MetricResult, "rmse": MetricResult}`` (what :func:`csp_match` returns).
    """

    targets: list[TargetMatch]
    metrics: dict[str, MetricResult]


def _rms_pair(
    args: tuple[Structure, Structure, dict[str, float]],
) -> tuple[float | None, str | None]:
    first, second, tolerances = args
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = StructureMatcher(**tolerances).get_rms_dist(first, second)
    except Exception as exc:
        return None, f"matcher raised {type(exc).__name__}: {exc}"
    return (None, None) if out is None else (float(out[0]), None)


def rms_dist(
    pred: Structure, gt: Structure, tolerances: dict[str, float] | None = None
) -> float | None:
    """Normalised RMS distance of a matched pair, or ``None`` if they do not match.

    Parameters
    ----------
    pred, gt
        The two structures.
    tolerances
        StructureMatcher keyword arguments (default :data:`MATCHER_TOLERANCES`).

    Returns
    -------
    float or None
        ``StructureMatcher(...).get_rms_dist(pred, gt)[0]``.
    """
    return _rms_pair((pred, gt, dict(tolerances or MATCHER_TOLERANCES)))[0]


def csp_match(
    preds: Sequence[Sequence[Any]],
    gts: Sequence[Any],
    protocol: str = "diffcsp",
    **options: Any,
) -> dict[str, MetricResult]:
    """Match rate and RMSE of predicted candidates against their ground-truth structures.

    The two metrics of :func:`match_targets` (same arguments); use that function for the
    per-target matches.

    Returns
    -------
    dict[str, MetricResult]
        ``match_rate`` and ``rmse``.
    """
    return match_targets(preds, gts, protocol, **options).metrics


def match_targets(
    preds: Sequence[Sequence[Any]],
    gts: Sequence[Any],
    protocol: str = "diffcsp",
    *,
    ids: Sequence[str] | None = None,
    pred_valid: Sequence[Sequence[bool]] | None = None,
    gt_valid: Sequence[bool] | None = None,
    tolerances: dict[str, float] | None = None,
    oxidation_states_set: str = DEFAULT_OXIDATION_STATE_SET,
    fingerprint_gate: bool = False,
    n_jobs: int | None = None,
    progress: bool = False,
    dataset: str | None = None,
) -> MatchOutcome:
    """Match every target's candidates against its ground truth: per target and in total.

    Parameters
    ----------
    preds
        ``preds[i]`` holds the k candidates (Structure, dict, CIF, or ``None``) for target ``i``.
    gts
        Ground-truth structure per target.
    protocol
        A key of :data:`PROTOCOLS`.
    ids
        Target ids (material ids), for the error lists.
    pred_valid, gt_valid
        Precomputed validity flags; computed here when the protocol needs them and they are
        not given.
    tolerances
        StructureMatcher tolerances (default stol 0.5, angle_tol 10, ltol 0.3).
    oxidation_states_set
        SMACT set for the validity gate (default SMACT-14).
    fingerprint_gate
        Also count a crystal invalid when its CrystalNN fingerprint throws (slow; see module).
    n_jobs
        Worker processes (:func:`analysis.parallel.resolve_jobs`: ``None`` = ``DFTLOOP_JOBS``
        or all cores, 1 = this process).
    progress
        Show progress bars.
    dataset
        Dataset name, recorded in the definition.

    Returns
    -------
    MatchOutcome
        One :class:`TargetMatch` per target, and ``match_rate`` and ``rmse``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown match protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
    proto = PROTOCOLS[protocol]
    tolerances = dict(tolerances or MATCHER_TOLERANCES)
    n = len(gts)
    if len(preds) != n:
        raise ValueError(f"{len(preds)} prediction lists for {n} ground-truth structures")
    ids = [str(i) for i in (ids if ids is not None else range(n))]
    cand_lists = [list(c) if proto.multi else list(c)[:1] for c in preds]
    flat_ids = [f"{ids[i]}#{j}" for i, c in enumerate(cand_lists) for j in range(len(c))]
    flat = check_structures([s for c in cand_lists for s in c], flat_ids)
    gt_checked = check_structures(list(gts), ids)

    flat_valid = _flat_validity(
        proto,
        flat,
        pred_valid,
        cand_lists,
        oxidation_states_set,
        fingerprint_gate,
        n_jobs,
        progress,
    )
    gt_ok = _gt_validity(
        proto, gt_checked, gt_valid, oxidation_states_set, fingerprint_gate, n_jobs, progress
    )

    jobs: list[tuple[Structure, Structure, dict[str, float]]] = []
    owners: list[tuple[int, int]] = []
    errors: list[dict[str, str]] = []
    reasons: list[str | None] = [None] * n
    pos = 0
    n_pred_total = n_pred_missing = n_pred_gated = 0
    for i, cands in enumerate(cand_lists):
        gt = gt_checked[i]
        if not gt.constructed:
            reasons[i] = f"ground truth: {gt.error}"
            errors.append({"id": ids[i], "reason": reasons[i]})
        elif not gt_ok[i]:
            reasons[i] = "ground truth invalid (gated by protocol)"
            errors.append({"id": ids[i], "reason": reasons[i]})
        for j in range(len(cands)):
            item, ok = flat[pos], flat_valid[pos]
            pos += 1
            n_pred_total += 1
            if not item.constructed:
                n_pred_missing += 1
                errors.append({"id": item.id, "reason": str(item.error)})
                continue
            if not ok:
                n_pred_gated += 1
                continue
            if gt.constructed and gt_ok[i] and item.structure is not None:
                assert gt.structure is not None
                pair = (
                    (gt.structure, item.structure)
                    if proto.gt_first
                    else (item.structure, gt.structure)
                )
                jobs.append((*pair, tolerances))
                owners.append((i, j))
        if not cands:
            reasons[i] = "no candidate"
            errors.append({"id": ids[i], "reason": reasons[i]})
    results = parallel_map(
        _rms_pair, jobs, n_jobs=n_jobs, desc=f"match ({protocol})", progress=progress
    )
    best: dict[int, float] = {}
    best_candidate: dict[int, int] = {}
    n_compared = [0] * n
    for (owner, candidate), (rms, err) in zip(owners, results, strict=True):
        n_compared[owner] += 1
        if err:
            errors.append({"id": ids[owner], "reason": err})
        if rms is not None and rms < best.get(owner, np.inf):
            best[owner] = rms
            best_candidate[owner] = candidate
    targets = [
        TargetMatch(
            target_id=ids[i],
            matched=i in best,
            rms=best.get(i),
            best_candidate=best_candidate.get(i),
            n_candidates=len(cand_lists[i]),
            n_compared=n_compared[i],
            gt_constructed=gt_checked[i].constructed,
            gt_passed_gate=bool(gt_ok[i]),
            reason=_unmatched_reason(reasons[i], i in best, n_compared[i]),
        )
        for i in range(n)
    ]
    n_matched = len(best)
    counts = {
        "n_targets": n,
        "n_matched": n_matched,
        "n_candidates": n_pred_total,
        "n_candidates_not_constructed": n_pred_missing,
        "n_candidates_gated_invalid": n_pred_gated,
        "n_gt_invalid": sum(1 for ok in gt_ok if not ok),
        "n_pairs_compared": len(jobs),
    }
    k_max = max((len(c) for c in preds), default=0)
    definition = {
        "protocol": protocol,
        "reference": proto.reference,
        "k": "all candidates (any match, min RMSE)" if proto.multi else 1,
        "k_available_max": k_max,
        "validity_gate": proto.gate,
        "fingerprint_gate": fingerprint_gate,
        "matcher": "pymatgen StructureMatcher("
        + ", ".join(f"{k}={v}" for k, v in tolerances.items())
        + ")",
        "rms": ("get_rms_dist(gt, pred)[0]" if proto.gt_first else "get_rms_dist(pred, gt)[0]")
        + ", RMS displacement normalised by (V/N)^(1/3)",
        "match_rate_denominator": "all targets",
        "smact_oxidation_states": oxidation_state_set_description(oxidation_states_set)
        if proto.gate != "none"
        else None,
        "dataset": dataset,
    }
    rmse = float(np.mean(list(best.values()))) if best else None
    metrics = {
        "match_rate": MetricResult(
            "match_rate",
            n_matched / n if n else None,
            definition,
            counts,
            "Fraction of targets whose (best) candidate matches the ground truth.",
            errors,
        ),
        "rmse": MetricResult(
            "rmse",
            rmse,
            definition,
            counts,
            "Mean over matched targets of the normalised RMS distance (min over candidates).",
            [],
        ),
    }
    return MatchOutcome(targets, metrics)


def _unmatched_reason(reason: str | None, matched: bool, n_compared: int) -> str | None:
    if reason is not None or matched:
        return reason
    if n_compared:
        return "no candidate matches the ground truth"
    return "no candidate passed the construction check and the validity gate"


def _validity_flags(
    items: Sequence[CheckedStructure],
    ox_set: str,
    fingerprint_gate: bool,
    n_jobs: int | None,
    progress: bool,
) -> list[bool]:
    records = assess_validity(items, oxidation_states_set=ox_set, n_jobs=n_jobs, progress=progress)
    flags = [r.valid for r in records]
    if fingerprint_gate:
        from analysis.fingerprints import compute_fingerprints

        fps = compute_fingerprints(items, n_jobs=n_jobs, progress=progress)
        flags = [f and fp.ok for f, fp in zip(flags, fps, strict=True)]
    return flags


def _flat_validity(
    proto: MatchProtocol,
    flat: list[CheckedStructure],
    pred_valid: Sequence[Sequence[bool]] | None,
    cand_lists: list[list[Any]],
    ox_set: str,
    fingerprint_gate: bool,
    n_jobs: int | None,
    progress: bool,
) -> list[bool]:
    if proto.gate == "none":
        return [True] * len(flat)
    if pred_valid is not None:
        return [bool(pred_valid[i][j]) for i, c in enumerate(cand_lists) for j in range(len(c))]
    return _validity_flags(flat, ox_set, fingerprint_gate, n_jobs, progress)


def _gt_validity(
    proto: MatchProtocol,
    gts: list[CheckedStructure],
    gt_valid: Sequence[bool] | None,
    ox_set: str,
    fingerprint_gate: bool,
    n_jobs: int | None,
    progress: bool,
) -> list[bool]:
    if proto.gate != "pred_and_gt":
        return [True] * len(gts)
    if gt_valid is not None:
        return [bool(v) for v in gt_valid]
    return _validity_flags(gts, ox_set, fingerprint_gate, n_jobs, progress)
