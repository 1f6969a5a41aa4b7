"""Evaluate a sample directory (or lists of structures) against ground-truth structures.

- ``generate`` samples: construction / structural / compositional validity over all samples,
  COV-R / COV-P / AMSD / AMCD against the ground-truth split, Wasserstein distances of density,
  number of elements and (with a predictor) a property over ``n_samples`` valid samples.
- ``csp`` / ``reconstruct`` samples: grouped by ``target_id`` and ``candidate``; match rate and
  RMSE under each applicable protocol of :mod:`analysis.matching`, plus validity.

Results are a dict ``key -> MetricResult`` (keys such as ``validity``, ``cov_recall``,
``diffcsp.match_rate``) and are written to ``metrics.json``; :func:`evaluate` also returns one
row per target (CSP / reconstruction: matched, RMS and validity per protocol) or per sample
(generation: validity flags). Bad items (a malformed structure dict, NaN coordinates, a
zero-volume cell, an unknown element) are counted invalid with their id and reason; the
evaluation goes on.

The ground truth is given, never looked up here: structures, a
:class:`analysis.ground_truth.GroundTruth`, or a loader of one (``flows.evaluation`` reads
dataset splits; :func:`analysis.ground_truth.read_gt_file` reads a raw-CIF file).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from analysis.construction import (
    CheckedStructure,
    check_structure,
    check_structures,
    classify_reason,
)
from analysis.coverage import Criterion, coverage_from_fingerprints, fingerprint_diversity
from analysis.datasets import cov_cutoffs
from analysis.distributions import (
    N_SAMPLES,
    PropertyPredictor,
    draw_valid_indices,
    wasserstein_property,
    wasserstein_structure_scalars,
)
from analysis.fingerprints import (
    Fingerprint,
    FingerprintCache,
    compute_fingerprints,
    default_cache_path,
)
from analysis.ground_truth import GroundTruth, GroundTruthLoader
from analysis.gt_fingerprints import GroundTruthFingerprints
from analysis.matching import PROTOCOLS, match_targets
from analysis.results import MetricResult, write_metrics_json
from analysis.validity import (
    DEFAULT_OXIDATION_STATE_SET,
    ValidityRecord,
    assess_validity,
    validity_definition,
    validity_metrics,
)

MODES = ("generate", "csp", "reconstruct")


@dataclass
class EvalItem:
    """One sample as the evaluator sees it.

    Parameters
    ----------
    sample_id
        Sample id.
    structure
        A Structure, a raw ``Structure.as_dict()`` dict (parsed leniently later) or ``None``.
    target_id
        Ground-truth material id for CSP/reconstruction.
    candidate
        Candidate number.
    error
        The sampler's reason when there is no structure.
    """

    sample_id: str
    structure: Any
    target_id: str | None = None
    candidate: int = 0
    error: str | None = None

    def checked(self) -> CheckedStructure:
        """Run the construction checks, keeping the sampler's own error when it has one."""
        if self.structure is None and self.error:
            from dftloop_io.samples import UNREADABLE

            # the sampler made nothing, or the file's row could not be read back
            kind = classify_reason(self.error) if UNREADABLE in self.error else "missing_structure"
            return CheckedStructure(self.sample_id, None, f"{kind}: {self.error}")
        return check_structure(self.structure, self.sample_id)


def read_sample_dir(directory: str | Path) -> tuple[dict[str, Any], list[EvalItem]]:
    """Read a sample directory (docs/architecture.md §4) through ``dftloop_io.samples``.

    ``load_samples`` is tolerant per item: a row it cannot read comes back without a structure
    and with the reason, and is reported for its sample (:meth:`EvalItem.checked`) while the
    rest of the directory is evaluated.

    Parameters
    ----------
    directory
        Written by ``generators.sampler`` (or any writer of that format).

    Returns
    -------
    tuple
        ``(index, items)``: the ``index.json`` dict and one :class:`EvalItem` per row.
    """
    from dftloop_io.samples import load_samples, read_index

    return read_index(directory), _as_items(load_samples(directory))


def _as_items(samples: Sequence[Any]) -> list[EvalItem]:
    items: list[EvalItem] = []
    for i, sample in enumerate(samples):
        if isinstance(sample, EvalItem):
            items.append(sample)
        elif hasattr(sample, "sample_id") and hasattr(sample, "structure"):
            items.append(
                EvalItem(
                    str(sample.sample_id),
                    sample.structure,
                    None if sample.target_id is None else str(sample.target_id),
                    int(getattr(sample, "candidate", 0) or 0),
                    getattr(sample, "error", None),
                )
            )
        else:
            items.append(EvalItem(str(i), sample))
    return items


@dataclass
class Evaluation:
    """What :func:`evaluate` returns.

    Parameters
    ----------
    metrics
        Metric key -> result (what :func:`evaluate_samples` returns).
    rows
        CSP / reconstruction: one row per target (``target_id``, ``n_candidates``,
        ``n_candidates_valid``, ``candidate0_valid``, ``gt_valid``, then per protocol
        ``<protocol>.matched``, ``<protocol>.rms``, ``<protocol>.best_candidate``,
        ``<protocol>.reason``). Generation: one row per sample (``sample_id``, ``constructed``,
        ``comp_valid``, ``struct_valid``, ``valid``, ``reason``).
    mode
        ``generate``, ``csp`` or ``reconstruct``.
    """

    metrics: dict[str, MetricResult]
    rows: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "generate"

    def write_rows_csv(self, path: str | Path) -> Path:
        """Write :attr:`rows` as a CSV (empty cells for ``None``) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def _ground_truth(
    gt: GroundTruth | GroundTruthLoader | Sequence[Any] | None,
    gt_ids: Sequence[str] | None,
    mode: str,
    items: list[EvalItem],
    limit: int | None,
) -> GroundTruth:
    """The ground truth the caller gave, read through its loader when it is one."""
    if gt is None:
        raise ValueError(
            "no ground truth: pass gt= (structures, a GroundTruth, or a loader such as "
            "flows.evaluation.split_ground_truth or analysis.ground_truth.read_gt_file)"
        )
    if isinstance(gt, GroundTruth):
        return gt
    if callable(gt):
        # generation: the first `limit` rows are the ground truth. CSP: the targets are usually
        # the first rows of the split (the sampler walks it in order), so try the first
        # `limit` rows and read all rows only if a target is not among them.
        truth = gt(limit)
        if mode != "generate" and limit is not None:
            wanted = list(dict.fromkeys(i.target_id for i in items if i.target_id))[:limit]
            if not set(wanted) <= set(truth.ids):
                truth = gt(None)
        return truth
    return GroundTruth.from_structures(list(gt), gt_ids)


def evaluate(
    samples: str | Path | Sequence[Any],
    dataset: str,
    *,
    gt: GroundTruth | GroundTruthLoader | Sequence[Any] | None = None,
    gt_ids: Sequence[str] | None = None,
    mode: str | None = None,
    limit: int | None = None,
    protocols: Sequence[str] | None = None,
    n_samples: int = N_SAMPLES,
    seed: int = 0,
    property_predictor: PropertyPredictor | None = None,
    property_name: str = "property",
    coverage_criterion: Criterion = "code",
    with_coverage: bool = True,
    oxidation_states_set: str = DEFAULT_OXIDATION_STATE_SET,
    fingerprint_cache: FingerprintCache | str | Path | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Evaluation:
    """Compute the applicable paper metrics of a sample set, per target and in total.

    Parameters
    ----------
    samples
        A sample directory, or a list of ``SampleRecord`` / ``EvalItem`` / structures (a plain
        list of structures is treated as ``generate`` samples).
    dataset
        Dataset name (COV cutoffs; checked against the sample directory's index).
    gt
        The ground truth: a :class:`~analysis.ground_truth.GroundTruth`, a loader of one
        (called with ``limit``, see below), or a list of structures (Structure, dict, CIF text
        or :class:`~analysis.construction.CheckedStructure`; ids from ``gt_ids``). Required.
    gt_ids
        Material ids of a plain list of ground-truth structures (default ``"0"``, ``"1"``...).
    mode
        ``generate``, ``csp`` or ``reconstruct``; default from ``index.json`` (or ``generate``
        for plain structures).
    limit
        Evaluate only the first ``limit`` samples (generate) or targets (csp/reconstruct). A
        loader reads the first ``limit`` rows (generation: they are the ground truth; CSP: all
        rows are read when a target is not among them); given structures are used whole.
    protocols
        Match protocols (default: every protocol that applies to the mode and k).
    n_samples, seed
        Valid samples drawn for the Wasserstein distances, and the seed.
    property_predictor, property_name
        Optional property model for d_E.
    coverage_criterion
        ``code`` (default) or ``joint``.
    with_coverage
        Compute COV (CrystalNN fingerprints: the slow part).
    oxidation_states_set
        SMACT set (default SMACT-14).
    fingerprint_cache
        Fingerprint cache or SQLite path; ``None`` means the persistent default
        (:func:`analysis.fingerprints.default_cache_path`); pass ``FingerprintCache(None)`` for
        an in-memory cache. Independently of it, a ground truth that names its content and a
        cache directory (a dataset split read by ``flows.evaluation``) keeps its own
        fingerprints in a file beside the dataset cache (:mod:`analysis.gt_fingerprints`), so
        that only the samples' fingerprints are computed after the first run.
    n_jobs
        Worker processes (:func:`analysis.parallel.resolve_jobs`: ``None`` = ``DFTLOOP_JOBS``
        or all cores, 1 = this process).
    progress
        Show progress bars.
    out
        Where to write ``metrics.json`` (default ``<sample_dir>/metrics.json`` for a directory,
        nothing for lists).
    log
        Called with one-line progress messages.

    Returns
    -------
    Evaluation
        The metrics and the per-target (or per-sample) rows.

    Raises
    ------
    ValueError
        Without ground truth, for an unknown mode or protocol, for samples of another dataset,
        or for CSP samples without a ``target_id``.
    """
    say = log or (lambda _msg: None)
    timings: dict[str, float] = {}
    index: dict[str, Any] = {}
    sample_dir: Path | None = None
    if isinstance(samples, str | Path):
        sample_dir = Path(samples)
        index, items = read_sample_dir(sample_dir)
        if out is None:
            out = sample_dir / "metrics.json"
    else:
        items = _as_items(samples)
    mode = mode or index.get("mode") or "generate"
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if index.get("dataset") and index["dataset"] != dataset:
        raise ValueError(
            f"{sample_dir}: samples are for dataset {index['dataset']!r}, not {dataset!r}"
        )
    t0 = time.perf_counter()
    truth = _ground_truth(gt, gt_ids, mode, items, limit)
    timings["load_ground_truth_s"] = time.perf_counter() - t0
    say(f"ground truth: {len(truth.structures)} structures ({truth.label})")
    common = {
        "dataset": dataset,
        "ground_truth": f"{truth.source}, {len(truth.structures)} structures",
        "n_gt_rows_failed": len(truth.row_errors),
    }
    if mode == "generate":
        if limit is not None:
            items = items[:limit]
        if isinstance(fingerprint_cache, FingerprintCache):
            cache = fingerprint_cache
        elif with_coverage:
            cache = FingerprintCache(fingerprint_cache or default_cache_path())
        else:
            cache = FingerprintCache(None)
        gt_checked = check_structures(truth.structures, truth.ids)
        gt_structures = [c.structure for c in gt_checked if c.constructed]
        common["n_gt_not_constructed"] = len(gt_checked) - len(gt_structures)
        results, rows = _evaluate_generation(
            items,
            gt_structures,
            dataset,
            cache=cache,
            gt_store=GroundTruthFingerprints.for_ground_truth(truth, dataset),
            n_samples=n_samples,
            seed=seed,
            predictor=property_predictor,
            property_name=property_name,
            criterion=coverage_criterion,
            with_coverage=with_coverage,
            ox_set=oxidation_states_set,
            n_jobs=n_jobs,
            progress=progress,
            timings=timings,
            say=say,
        )
    else:
        results, rows = _evaluate_csp(
            items,
            list(truth.structures),
            list(truth.ids),
            dataset,
            mode=mode,
            limit=limit,
            protocols=protocols,
            ox_set=oxidation_states_set,
            n_jobs=n_jobs,
            progress=progress,
            timings=timings,
            say=say,
        )
    for result in results.values():
        for key, value in common.items():
            result.definition.setdefault(key, value)
    if out is not None:
        metadata = {
            "dataset": dataset,
            "mode": mode,
            "gt_split": truth.label,
            "gt_source": truth.source,
            "sample_dir": str(sample_dir) if sample_dir else None,
            "model": index.get("model"),
            "checkpoint_sha256": index.get("checkpoint_sha256"),
            "n_samples_read": len(items),
            "limit": limit,
            "gt_row_errors": truth.row_errors,
            "timings_s": timings,
        }
        write_metrics_json(results, out, metadata)
        say(f"wrote {out}")
    return Evaluation(results, rows, mode)


def evaluate_samples(
    samples: str | Path | Sequence[Any], dataset: str, **options: Any
) -> dict[str, MetricResult]:
    """Compute the applicable paper metrics of a sample set and write ``metrics.json``.

    The metrics of :func:`evaluate` (same arguments; ``gt`` is required); use that function
    for the per-target rows.

    Returns
    -------
    dict[str, MetricResult]
        Metric key -> result.
    """
    return evaluate(samples, dataset, **options).metrics


def _evaluate_generation(
    items: list[EvalItem],
    gt: list[Structure],
    dataset: str,
    *,
    cache: FingerprintCache,
    gt_store: GroundTruthFingerprints | None,
    n_samples: int,
    seed: int,
    predictor: PropertyPredictor | None,
    property_name: str,
    criterion: Criterion,
    with_coverage: bool,
    ox_set: str,
    n_jobs: int | None,
    progress: bool,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> tuple[dict[str, MetricResult], list[dict[str, Any]]]:
    checked = [item.checked() for item in items]
    t0 = time.perf_counter()
    records = assess_validity(
        checked, oxidation_states_set=ox_set, n_jobs=n_jobs, progress=progress
    )
    timings["validity_s"] = time.perf_counter() - t0
    results: dict[str, MetricResult] = {}
    definition = validity_definition(oxidation_states_set=ox_set)
    if with_coverage:
        t0 = time.perf_counter()
        gen_fps, gt_fps = _generation_fingerprints(
            checked, gt, cache, gt_store, n_jobs, progress, timings, say
        )
        timings["fingerprints_s"] = time.perf_counter() - t0
        # CDVAE: a crystal whose CrystalNN fingerprint throws is invalid
        records = [
            _fp_invalid(r, fp.error) if r.valid and not fp.ok else r
            for r, fp in zip(records, gen_fps, strict=True)
        ]
        definition["fingerprint_gate"] = "a crystal whose CrystalNN fingerprint throws is invalid"
        struct_cut, comp_cut, source = cov_cutoffs(dataset)
        t0 = time.perf_counter()
        results.update(
            coverage_from_fingerprints(
                gen_fps,
                gt_fps,
                struct_cut,
                comp_cut,
                n_generated=len(items),
                criterion=criterion,
                definition={"cutoff_source": source},
                gen_ids=[c.id for c in checked],
            )
        )
        timings["coverage_s"] = time.perf_counter() - t0
    else:
        definition["fingerprint_gate"] = "not applied (coverage not computed)"
    results.update(validity_metrics(records, definition))
    say(
        f"validity {results['validity'].value}, "
        f"COV-R {results.get('cov_recall', MetricResult('', None)).value}"
    )
    structures = [c.structure for c in checked]
    drawn, sampling = draw_valid_indices(
        [r.valid and c.structure is not None for r, c in zip(records, checked, strict=True)],
        n_samples=n_samples,
        seed=seed,
    )
    chosen = [structures[i] for i in drawn]
    if with_coverage:
        results.update(fingerprint_diversity([gen_fps[i] for i in drawn], sampling))
    t0 = time.perf_counter()
    results.update(wasserstein_structure_scalars(chosen, gt, sampling))
    if predictor is not None:
        results["wdist_prop"] = wasserstein_property(chosen, gt, predictor, property_name, sampling)
    timings["wasserstein_s"] = time.perf_counter() - t0
    rows = [
        {
            "sample_id": r.id,
            "constructed": r.constructed,
            "comp_valid": r.comp_valid,
            "struct_valid": r.struct_valid,
            "valid": r.valid,
            "reason": r.reason,
        }
        for r in records
    ]
    return results, rows


def _generation_fingerprints(
    checked: list[CheckedStructure],
    gt: list[Structure],
    cache: FingerprintCache,
    gt_store: GroundTruthFingerprints | None,
    n_jobs: int | None,
    progress: bool,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> tuple[list[Fingerprint], list[Fingerprint]]:
    """Fingerprints of the samples and of the ground truth, the missing ones in one pool.

    The ground truth's stored fingerprints (``gt_store``) are served from memory; what is
    computed for the ground truth is added to the store for the next run.
    """
    if gt_store is not None:
        t0 = time.perf_counter()
        stored = gt_store.load()
        cache.remember(stored)
        timings["gt_fingerprints_load_s"] = time.perf_counter() - t0
        say(f"ground-truth fingerprints: {len(stored)} stored in {gt_store.path}")
    both = compute_fingerprints([*checked, *gt], cache=cache, n_jobs=n_jobs, progress=progress)
    gen_fps, gt_fps = both[: len(checked)], both[len(checked) :]
    if gt_store is not None:
        added = gt_store.add(gt, gt_fps)
        if added:
            say(f"ground-truth fingerprints: {added} added to {gt_store.path}")
    return gen_fps, gt_fps


def _fp_invalid(record: ValidityRecord, error: str | None) -> ValidityRecord:
    return ValidityRecord(
        record.id,
        record.constructed,
        record.comp_valid,
        record.struct_valid,
        False,
        f"fingerprint: {error}",
    )


def _evaluate_csp(
    items: list[EvalItem],
    gt: list[Structure],
    gt_ids: list[str],
    dataset: str,
    *,
    mode: str,
    limit: int | None,
    protocols: Sequence[str] | None,
    ox_set: str,
    n_jobs: int | None,
    progress: bool,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> tuple[dict[str, MetricResult], list[dict[str, Any]]]:
    groups: dict[str, list[EvalItem]] = {}
    for item in items:
        if item.target_id is None:
            raise ValueError(f"sample {item.sample_id}: {mode} samples need a target_id")
        groups.setdefault(item.target_id, []).append(item)
    targets = list(groups)
    if limit is not None:
        targets = targets[:limit]
    by_id = dict(zip(gt_ids, gt, strict=True))
    k = max((len(groups[t]) for t in targets), default=0)
    if protocols is None:
        protocols = ["diffcsp", "cdvae", "continuousp"]
        if k > 1:
            protocols.insert(2, "diffcsp_multi")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {sorted(PROTOCOLS)}")
    cand_lists = [
        [c.checked() for c in sorted(groups[t], key=lambda c: c.candidate)] for t in targets
    ]
    gts: list[Any] = [by_id.get(t) for t in targets]
    missing = [t for t, g in zip(targets, gts, strict=True) if g is None]
    gts = [
        g
        if g is not None
        else CheckedStructure(t, None, f"missing_structure: target {t} not in the ground truth")
        for t, g in zip(targets, gts, strict=True)
    ]
    # validity once, shared by all protocols
    t0 = time.perf_counter()
    flat = [c for cands in cand_lists for c in cands]
    flat_records = assess_validity(
        flat, oxidation_states_set=ox_set, n_jobs=n_jobs, progress=progress
    )
    gt_records = assess_validity(
        gts, ids=targets, oxidation_states_set=ox_set, n_jobs=n_jobs, progress=progress
    )
    timings["validity_s"] = time.perf_counter() - t0
    pred_valid: list[list[bool]] = []
    pos = 0
    for cands in cand_lists:
        pred_valid.append([r.valid for r in flat_records[pos : pos + len(cands)]])
        pos += len(cands)
    rows: list[dict[str, Any]] = [
        {
            "target_id": target,
            "n_candidates": len(valid),
            "n_candidates_valid": sum(valid),
            "candidate0_valid": valid[0] if valid else None,
            "gt_valid": gt_record.valid,
        }
        for target, valid, gt_record in zip(targets, pred_valid, gt_records, strict=True)
    ]
    results: dict[str, MetricResult] = {}
    for protocol in protocols:
        t0 = time.perf_counter()
        outcome = match_targets(
            cand_lists,
            gts,
            protocol,
            ids=targets,
            pred_valid=pred_valid,
            gt_valid=[r.valid for r in gt_records],
            oxidation_states_set=ox_set,
            n_jobs=n_jobs,
            progress=progress,
            dataset=dataset,
        )
        timings[f"match_{protocol}_s"] = time.perf_counter() - t0
        out = outcome.metrics
        for name, result in out.items():
            result.definition["mode"] = mode
            result.definition["n_targets_missing_from_gt"] = len(missing)
            results[f"{protocol}.{name}"] = result
        for row, match in zip(rows, outcome.targets, strict=True):
            row[f"{protocol}.matched"] = match.matched
            row[f"{protocol}.rms"] = match.rms
            row[f"{protocol}.best_candidate"] = match.best_candidate
            row[f"{protocol}.reason"] = match.reason
        say(f"{protocol}: match rate {out['match_rate'].value}, RMSE {out['rmse'].value}")
    results.update(validity_metrics(flat_records, validity_definition(oxidation_states_set=ox_set)))
    return results, rows


def evaluate_against_itself(
    truth: GroundTruth,
    dataset: str,
    *,
    with_coverage: bool = True,
    coverage_criterion: Criterion = "code",
    oxidation_states_set: str = DEFAULT_OXIDATION_STATE_SET,
    fingerprint_cache: FingerprintCache | str | Path | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, MetricResult]:
    """Evaluate a set of ground-truth structures against itself (a sanity check of the metrics).

    Every structure is its own CSP prediction (expected: match rate 1, RMSE 0) and the set is
    also treated as a generated set against itself (expected: COV-R = COV-P = 1, W1 = 0);
    validity is that of the dataset.

    Parameters
    ----------
    truth
        The structures (a dataset split read by ``flows.evaluation.evaluate_split``, or a file
        read by :func:`analysis.ground_truth.read_gt_file`).
    dataset
        Dataset name (COV cutoffs).
    with_coverage
        Compute COV (CrystalNN fingerprints).
    coverage_criterion
        ``code`` (default) or ``joint``.
    oxidation_states_set
        SMACT set (default SMACT-14).
    fingerprint_cache
        Fingerprint cache or SQLite path.
    n_jobs
        Worker processes (:func:`analysis.parallel.resolve_jobs`).
    progress
        Show progress bars.
    out
        Where to write ``metrics.json`` (nothing if ``None``).
    log
        Progress messages.

    Returns
    -------
    dict[str, MetricResult]
        CSP metrics (``diffcsp.*``, ``cdvae.*``, ``continuousp.*``) and generation metrics.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ids, structures = truth.ids, truth.structures
    common: dict[str, Any] = {
        "gt": truth,
        "oxidation_states_set": oxidation_states_set,
        "n_jobs": n_jobs,
        "progress": progress,
        "log": log,
    }
    csp_items = [EvalItem(mid, s, mid, 0) for mid, s in zip(ids, structures, strict=True)]
    results = evaluate_samples(csp_items, dataset, mode="csp", **common)
    timings["csp_metrics_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen_items = [EvalItem(mid, s) for mid, s in zip(ids, structures, strict=True)]
    gen = evaluate_samples(
        gen_items,
        dataset,
        mode="generate",
        with_coverage=with_coverage,
        coverage_criterion=coverage_criterion,
        fingerprint_cache=fingerprint_cache,
        **common,
    )
    timings["generation_metrics_s"] = time.perf_counter() - t0
    results.update(gen)
    for result in results.values():
        result.definition["self_evaluation"] = f"{truth.label} against itself"
        result.definition["n_gt_rows_failed"] = len(truth.row_errors)
    if out is not None:
        write_metrics_json(
            results,
            out,
            {
                "dataset": dataset,
                "split": truth.label,
                "gt_source": truth.source,
                "self_evaluation": True,
                "gt_row_errors": truth.row_errors,
                "timings_s": timings,
            },
        )
    return results
