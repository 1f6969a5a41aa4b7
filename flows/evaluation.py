"""The paper metrics with their ground truth read from a dataset split.

:mod:`analysis.evaluate` takes its ground truth as given; this module reads it from a dataset
split through the data layer (``generators.data.load_split``, preprocessed as the papers do) and
passes it on. The commands and flows call these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.evaluate import Evaluation, evaluate, evaluate_against_itself
from analysis.ground_truth import GroundTruth, GroundTruthLoader
from analysis.results import MetricResult


def load_split_ground_truth(
    dataset: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> GroundTruth:
    """Ground-truth structures of a dataset split.

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
    GroundTruth
        Material ids and structures; rows the loader rejected are in ``row_errors``. Its
        ``content_key`` is the split's cache key and its ``cache_dir`` the data cache
        directory, so the metrics keep the split's fingerprints beside the preprocessed split
        (:mod:`analysis.gt_fingerprints`).
    """
    from generators.data import load_split
    from generators.data.locations import cache_dir

    loaded = load_split(dataset, split, data_dir=data_dir, limit=limit, progress=progress)
    return GroundTruth(
        ids=[r.material_id for r in loaded.records],
        structures=[r.structure for r in loaded.records],
        source=f"{dataset}/{split} via generators.data.load_split (preprocessed as the papers do)",
        label=split,
        row_errors=[{"id": e.material_id, "reason": e.reason} for e in loaded.errors],
        content_key=loaded.content_key or None,
        cache_dir=cache_dir() if loaded.content_key else None,
    )


def split_ground_truth(
    dataset: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> GroundTruthLoader:
    """A loader of a split's first ``limit`` rows, for the ``gt`` argument of the metrics.

    Parameters
    ----------
    dataset, split, data_dir, progress
        As for :func:`load_split_ground_truth`.

    Returns
    -------
    GroundTruthLoader
        ``loader(limit) -> GroundTruth``.
    """

    def loader(limit: int | None) -> GroundTruth:
        return load_split_ground_truth(dataset, split, data_dir, limit, progress)

    return loader


def evaluate_with_split(
    samples: str | Path | Sequence[Any],
    dataset: str,
    *,
    gt_split: str = "test",
    data_dir: str | Path | None = None,
    gt: Any = None,
    progress: bool = True,
    **options: Any,
) -> Evaluation:
    """:func:`analysis.evaluate.evaluate` with the ground truth read from ``gt_split``.

    Parameters
    ----------
    samples, dataset
        As for :func:`analysis.evaluate.evaluate`.
    gt_split, data_dir
        The split read as ground truth when ``gt`` is not given, and the data directory.
    gt
        Ground truth given by the caller (structures, a ``GroundTruth`` or a loader); then no
        split is read.
    progress
        Show progress bars (the split loader's too).
    **options
        Passed on (``limit``, ``protocols``, ``n_jobs``, ``out``, ...).

    Returns
    -------
    Evaluation
        Metrics and per-target rows.
    """
    if gt is None:
        gt = split_ground_truth(dataset, gt_split, data_dir, progress)
    return evaluate(samples, dataset, gt=gt, progress=progress, **options)


def evaluate_samples(
    samples: str | Path | Sequence[Any], dataset: str, **options: Any
) -> dict[str, MetricResult]:
    """The metrics of :func:`evaluate_with_split` (same arguments).

    Returns
    -------
    dict[str, MetricResult]
        Metric key -> result.
    """
    return evaluate_with_split(samples, dataset, **options).metrics


def evaluate_split(
    dataset: str,
    split: str = "test",
    *,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, MetricResult]:
    """Evaluate a dataset split against itself (the pipeline's first sanity stage).

    Parameters
    ----------
    dataset, split
        Registry keys.
    limit
        Only the first ``limit`` rows.
    data_dir
        Data directory override.
    progress
        Show progress bars.
    **options
        Passed to :func:`analysis.evaluate.evaluate_against_itself`.

    Returns
    -------
    dict[str, MetricResult]
        CSP and generation metrics of the split against itself.
    """
    truth = load_split_ground_truth(dataset, split, data_dir, limit, progress)
    return evaluate_against_itself(truth, dataset, progress=progress, **options)
