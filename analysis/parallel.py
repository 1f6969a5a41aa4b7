"""A process-pool map with a progress bar, used for the slow per-structure work.

Every function of :mod:`analysis` that takes ``n_jobs`` follows one convention
(:func:`resolve_jobs`): ``None`` (the default) means ``DFTLOOP_JOBS`` if set, else all the cores
this process may use; a positive number is that many worker processes; 1 runs in this process.
Small batches run in this process whatever ``n_jobs`` says (a pool costs start-up time), and so
does all work inside a daemonic process (a Dask or multiprocessing worker may not start children).
"""

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


def resolve_jobs(n_jobs: int | None) -> int:
    """The number of worker processes ``n_jobs`` asks for (the module's convention).

    Parameters
    ----------
    n_jobs
        ``None`` for :func:`default_jobs`, else a positive number.

    Returns
    -------
    int
        At least 1.

    Raises
    ------
    ValueError
        For zero or a negative number.
    """
    if n_jobs is None:
        return default_jobs()
    if int(n_jobs) < 1:
        raise ValueError(f"n_jobs must be None (all cores) or a positive number, not {n_jobs}")
    return int(n_jobs)


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
        Worker processes (:func:`resolve_jobs`); ``None`` means :func:`default_jobs`, 1 runs
        in this process.
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
    n_jobs = resolve_jobs(n_jobs)
    if multiprocessing.current_process().daemon:
        n_jobs = 1  # a daemonic process (a Dask or pool worker) may not start children
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
