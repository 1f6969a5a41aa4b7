"""Dask task runners for the relaxation fan-out: a LocalCluster, or SLURM jobs via dask-jobqueue."""

from __future__ import annotations

from typing import Any, Literal

from prefect_dask import DaskTaskRunner

Cluster = Literal["local", "slurm"]

LOCAL_DEFAULTS: dict[str, Any] = {
    "n_workers": 1,
    "threads_per_worker": 1,
    "processes": True,
    "dashboard_address": ":0",
}
"""One single-threaded worker process: CHGNet with one torch thread is fastest on a busy box."""

SLURM_DEFAULTS: dict[str, Any] = {
    "queue": "debug",
    "cores": 1,
    "processes": 1,
    "memory": "4GB",
    "walltime": "01:00:00",
    "scheduler_options": {"dashboard_address": ":0"},
}
"""One Dask worker per SLURM job (partition ``debug`` of the one-node cluster in deploy/slurm)."""


def build_task_runner(
    cluster: Cluster | str = "local",
    cluster_kwargs: dict[str, Any] | None = None,
    max_jobs: int = 2,
) -> DaskTaskRunner:
    """Return a :class:`~prefect_dask.DaskTaskRunner` for the chosen cluster.

    Parameters
    ----------
    cluster
        ``"local"`` (``distributed.LocalCluster``) or ``"slurm"``
        (``dask_jobqueue.SLURMCluster``: each Dask worker is an ``sbatch`` job).
    cluster_kwargs
        Overrides of :data:`LOCAL_DEFAULTS` / :data:`SLURM_DEFAULTS` (for SLURM: ``queue`` is the
        partition, ``cores``, ``memory``, ``walltime``, ``job_extra_directives`` e.g.
        ``["--gres=gpu:1"]``).
    max_jobs
        For SLURM: the cluster adapts between 1 and this many jobs.

    Returns
    -------
    DaskTaskRunner
        Not started; Prefect starts it with the flow.

    Raises
    ------
    ValueError
        For an unknown cluster name.
    """
    if cluster == "local":
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={**LOCAL_DEFAULTS, **(cluster_kwargs or {})},
        )
    if cluster == "slurm":
        return DaskTaskRunner(
            cluster_class="dask_jobqueue.SLURMCluster",
            cluster_kwargs={**SLURM_DEFAULTS, **(cluster_kwargs or {})},
            adapt_kwargs={"minimum": 1, "maximum": max_jobs},
        )
    raise ValueError(f"unknown cluster {cluster!r}; use 'local' or 'slurm'")
