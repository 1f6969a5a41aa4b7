"""Evaluate a sample directory (or lists of structures) against a dataset split.

- ``generate`` samples: construction / structural / compositional validity over all samples,
  COV-R / COV-P / AMSD / AMCD against the ground-truth split, Wasserstein distances of density,
  number of elements and (with a predictor) a property over ``n_samples`` valid samples.
- ``csp`` / ``reconstruct`` samples: grouped by ``target_id`` and ``candidate``; match rate and
  RMSE under each applicable protocol of :mod:`analysis.matching`, plus validity.

Results are a dict ``key -> MetricResult`` (keys such as ``validity``, ``cov_recall``,
``diffcsp.match_rate``) and are written to ``metrics.json``. Bad items (a malformed structure
dict, NaN coordinates, a zero-volume cell, an unknown element) are counted invalid with their id
and reason; the evaluation goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from analysis.construction import CheckedStructure, check_structure, classify_reason
from analysis.coverage import Criterion, coverage_from_fingerprints, fingerprint_diversity
from analysis.datasets import cov_cutoffs
from analysis.distributions import (
    N_SAMPLES,
    PropertyPredictor,
    draw_valid_indices,
    wasserstein_property,
    wasserstein_structure_scalars,
)
from analysis.fingerprints import FingerprintCache, compute_fingerprints, default_cache_path
from analysis.matching import PROTOCOLS, csp_match
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
            from generators.sample_io import UNREADABLE

            # the sampler made nothing, or the file's row could not be read back
            kind = classify_reason(self.error) if UNREADABLE in self.error else "missing_structure"
            return CheckedStructure(self.sample_id, None, f"{kind}: {self.error}")
        return check_structure(self.structure, self.sample_id)


def read_sample_dir(directory: str | Path) -> tuple[dict[str, Any], list[EvalItem]]:
    """Read a sample directory (docs/architecture.md §4) through ``generators.sample_io``.

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
    from generators.sample_io import load_samples, read_index

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


def load_ground_truth(
    dataset: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[list[str], list[Structure], list[dict[str, str]]]:
    """Ground-truth structures of a dataset split, through ``generators.data.load_split``.

    Parameters
    ----------
    dataset, split
        Registry keys.
    data_dir
        Data directory override.
    limit
        Only the first ``limit`` rows.
    progress
        Show the loader's progress bar.

    Returns
    -------
    tuple
        ``(material_ids, structures, row_errors)``.
    """
    from generators.data import load_split

    loaded = load_split(dataset, split, data_dir=data_dir, limit=limit, progress=progress)
    ids = [r.material_id for r in loaded.records]
    structures = [r.structure for r in loaded.records]
    errors = [{"id": e.material_id, "reason": e.reason} for e in loaded.errors]
    return ids, structures, errors


def evaluate_samples(
    samples: str | Path | Sequence[Any],
    dataset: str,
    *,
    mode: str | None = None,
    gt: Sequence[Structure] | None = None,
    gt_ids: Sequence[str] | None = None,
    gt_split: str = "test",
    data_dir: str | Path | None = None,
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
) -> dict[str, MetricResult]:
    """Compute the applicable paper metrics of a sample set and write ``metrics.json``.

    Parameters
    ----------
    samples
        A sample directory, or a list of ``SampleRecord`` / ``EvalItem`` / structures (a plain
        list of structures is treated as ``generate`` samples).
    dataset
        Dataset name (cutoffs, ground truth).
    mode
        ``generate``, ``csp`` or ``reconstruct``; default from ``index.json`` (or ``generate``
        for plain structures).
    gt, gt_ids
        Ground-truth structures and their material ids; default: loaded from ``gt_split``.
    gt_split
        Split used as ground truth (``test``).
    data_dir
        Data directory override for the ground truth.
    limit
        Evaluate only the first ``limit`` samples (generate) or targets (csp/reconstruct); for
        generation the ground truth is also limited to its first ``limit`` rows.
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
        an in-memory cache.
    n_jobs
        Worker processes (``None`` = all cores).
    progress
        Show progress bars.
    out
        Where to write ``metrics.json`` (default ``<sample_dir>/metrics.json`` for a directory,
        nothing for lists).
    log
        Called with one-line progress messages.

    Returns
    -------
    dict[str, MetricResult]
        Metric key -> result.
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
    gt_errors: list[dict[str, str]] = []
    t0 = time.perf_counter()
    if gt is None:
        # generation: the first `limit` rows are the ground truth. CSP: the targets are usually
        # the first rows of the split (the sampler walks it in order), so try the first
        # `limit` rows and read the whole split only if a target is not among them.
        gt_ids, gt_list, gt_errors = load_ground_truth(dataset, gt_split, data_dir, limit, progress)
        if mode != "generate" and limit is not None:
            wanted = list(dict.fromkeys(i.target_id for i in items if i.target_id))[:limit]
            if not set(wanted) <= set(gt_ids):
                gt_ids, gt_list, gt_errors = load_ground_truth(
                    dataset, gt_split, data_dir, None, progress
                )
    else:
        gt_list = list(gt)
        gt_ids = [str(i) for i in (gt_ids if gt_ids is not None else range(len(gt_list)))]
    timings["load_ground_truth_s"] = time.perf_counter() - t0
    say(f"ground truth: {len(gt_list)} structures of {dataset}/{gt_split}")
    common = {
        "dataset": dataset,
        "ground_truth": f"{dataset}/{gt_split} via generators.data.load_split "
        f"(preprocessed as the papers do), {len(gt_list)} structures",
        "n_gt_rows_failed": len(gt_errors),
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
        results = _evaluate_generation(
            items,
            gt_list,
            dataset,
            cache=cache,
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
        results = _evaluate_csp(
            items,
            gt_list,
            list(gt_ids),
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
            "gt_split": gt_split,
            "sample_dir": str(sample_dir) if sample_dir else None,
            "model": index.get("model"),
            "checkpoint_sha256": index.get("checkpoint_sha256"),
            "n_samples_read": len(items),
            "limit": limit,
            "gt_row_errors": gt_errors,
            "timings_s": timings,
        }
        write_metrics_json(results, out, metadata)
        say(f"wrote {out}")
    return results


def _evaluate_generation(
    items: list[EvalItem],
    gt: list[Structure],
    dataset: str,
    *,
    cache: FingerprintCache,
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
) -> dict[str, MetricResult]:
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
        gen_fps = compute_fingerprints(checked, cache=cache, n_jobs=n_jobs, progress=progress)
        gt_fps = compute_fingerprints(gt, cache=cache, n_jobs=n_jobs, progress=progress)
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
    return results


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
) -> dict[str, MetricResult]:
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
    results: dict[str, MetricResult] = {}
    for protocol in protocols:
        t0 = time.perf_counter()
        out = csp_match(
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
        for name, result in out.items():
            result.definition["mode"] = mode
            result.definition["n_targets_missing_from_gt"] = len(missing)
            results[f"{protocol}.{name}"] = result
        say(f"{protocol}: match rate {out['match_rate'].value}, RMSE {out['rmse'].value}")
    results.update(validity_metrics(flat_records, validity_definition(oxidation_states_set=ox_set)))
    return results


def evaluate_split(
    dataset: str,
    split: str = "test",
    *,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    with_coverage: bool = True,
    coverage_criterion: Criterion = "code",
    oxidation_states_set: str = DEFAULT_OXIDATION_STATE_SET,
    fingerprint_cache: FingerprintCache | str | Path | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, MetricResult]:
    """Evaluate a dataset split against itself (the pipeline's first sanity stage).

    Every structure is its own CSP prediction (expected: match rate 1, RMSE 0) and the split is
    also treated as a generated set against itself (expected: COV-R = COV-P = 1, W1 = 0);
    validity is that of the dataset.

    Parameters
    ----------
    dataset, split
        Registry keys.
    limit
        Only the first ``limit`` rows.
    data_dir
        Data directory override.
    with_coverage
        Compute COV (CrystalNN fingerprints).
    coverage_criterion
        ``code`` (default) or ``joint``.
    oxidation_states_set
        SMACT set (default SMACT-14).
    fingerprint_cache
        Fingerprint cache or SQLite path.
    n_jobs
        Worker processes.
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
    t0 = time.perf_counter()
    ids, structures, errors = load_ground_truth(dataset, split, data_dir, limit, progress)
    timings = {"load_split_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    common: dict[str, Any] = {
        "gt": structures,
        "gt_ids": ids,
        "gt_split": split,
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
        result.definition["self_evaluation"] = f"{dataset}/{split} against itself"
        result.definition["n_gt_rows_failed"] = len(errors)
    if out is not None:
        write_metrics_json(
            results,
            out,
            {
                "dataset": dataset,
                "split": split,
                "limit": limit,
                "self_evaluation": True,
                "gt_row_errors": errors,
                "timings_s": timings,
            },
        )
    return results
