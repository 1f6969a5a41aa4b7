"""A process-pool map with a progress bar, used for the slow per-structure work."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


def default_jobs() -> int:
    """Number of worker processes to use by default: all cores (``DFTLOOP_JOBS`` overrides).

    Returns
    -------
    int
        At least 1.
    """
    env = os.environ.get("DFTLOOP_JOBS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def parallel_map(
    func: Callable[[T], R],
    items: Sequence[T],
    n_jobs: int | None = None,
    desc: str | None = None,
    progress: bool = True,
    min_items_per_job: int = 8,
) -> list[R]:
    """Apply ``func`` to every item, in a process pool when it pays off, keeping the order.

    Parameters
    ----------
    func
        A picklable (module-level) function. It should not raise for bad items: return an
        error value instead, so one bad item does not stop the batch.
    items
        The inputs.
    n_jobs
        Worker processes; ``None`` means :func:`default_jobs`, 1 runs in this process.
    desc
        Progress-bar label.
    progress
        Show a tqdm progress bar.
    min_items_per_job
        Below this many items per worker the work runs serially (a pool costs start-up time).

    Returns
    -------
    list
        ``[func(item) for item in items]``.
    """
    n_jobs = default_jobs() if n_jobs is None else max(1, n_jobs)
    n_jobs = min(n_jobs, max(1, len(items) // max(1, min_items_per_job)))
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    try:
        if n_jobs <= 1:
            out: list[R] = []
            for item in items:
                out.append(func(item))
                bar.update(1)
            return out
        chunksize = max(1, min(64, len(items) // (n_jobs * 8)))
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context) as pool:
            out = []
            for result in pool.map(func, items, chunksize=chunksize):
                out.append(result)
                bar.update(1)
            return out
    finally:
        bar.close()
