"""Dask task runners for the relaxation fan-out: a LocalCluster, or SLURM jobs via dask-jobqueue."""

from __future__ import annotations

from typing import Any, Literal

from prefect_dask import DaskTaskRunner

Cluster = Literal["local", "slurm"]

LOCAL_DEFAULTS: dict[str, Any] = {
    "n_workers": 1,
    "threads_per_worker": 1,
    "dashboard_address": ":0",
}
"""One single-threaded worker: CHGNet with one torch thread is fastest on a busy box.

Without ``processes`` in the cluster settings, one worker is a thread of the flow's process and
several workers are processes (:func:`local_processes`)."""

SLURM_DEFAULTS: dict[str, Any] = {
    "queue": "debug",
    "cores": 1,
    "processes": 1,
    "memory": "4GB",
    "walltime": "01:00:00",
    "scheduler_options": {"dashboard_address": ":0"},
}
"""One Dask worker per SLURM job (partition ``debug`` of the one-node cluster in deploy/slurm)."""


def local_processes(kwargs: dict[str, Any]) -> bool:
    """Whether a local cluster's workers are processes: as given, else only for several workers.

    One worker in a process of its own adds, on every relaxation stage, its start (its own
    imports of Prefect, torch and CHGNet) and its shutdown: the relaxation stage of a
    32-structure main job spent 23.7 s outside CHGNet with a worker process, 3.1 s with a
    thread, on a loaded 2-core machine (docs/benchmarks.md, "Pipeline overhead"). Several
    workers still get processes, which relax in parallel without sharing the interpreter.
    """
    if kwargs.get("processes") is not None:
        return bool(kwargs["processes"])
    return int(kwargs.get("n_workers") or 1) > 1


def worker_api_environment() -> dict[str, str]:
    """``PREFECT_API_URL`` of the current flow run's API, when worker processes would miss it.

    A flow run without ``PREFECT_API_URL`` (a script, ``deploy/run-main.sh``) talks to Prefect's
    ephemeral API server, a subprocess of the flow's process on a local port. A Dask worker
    process started from it does not know that server and would start a temporary one of its
    own (about 20 s more before its first task on a loaded 2-core machine); given this
    variable, the worker reports to the flow's server instead.

    Returns
    -------
    dict
        ``{"PREFECT_API_URL": url}`` inside a flow run on the ephemeral API, else ``{}`` (the
        URL is configured and the workers inherit it, or there is no flow run).
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    context = FlowRunContext.get()
    if PREFECT_API_URL.value() or context is None or context.client is None:
        return {}
    return {"PREFECT_API_URL": str(context.client.api_url)}


def build_task_runner(
    cluster: Cluster | str = "local",
    cluster_kwargs: dict[str, Any] | None = None,
    max_jobs: int = 2,
) -> DaskTaskRunner:
    """Return a :class:`~prefect_dask.DaskTaskRunner` for the chosen cluster.

    Parameters
    ----------
    cluster
        ``"local"`` (``distributed.LocalCluster``; one worker thread of this process by
        default, see :func:`local_processes`) or ``"slurm"``
        (``dask_jobqueue.SLURMCluster``: each Dask worker is an ``sbatch`` job).
    cluster_kwargs
        Overrides of :data:`LOCAL_DEFAULTS` / :data:`SLURM_DEFAULTS` (for SLURM: ``queue`` is the
        partition, ``cores``, ``memory``, ``walltime``, ``job_extra_directives`` e.g.
        ``["--gres=gpu:1"]``). Local worker processes are given the flow run's Prefect API
        (:func:`worker_api_environment`) in their ``env``.
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
        kwargs = {**LOCAL_DEFAULTS, **(cluster_kwargs or {})}
        kwargs["processes"] = local_processes(kwargs)
        if kwargs["processes"]:  # worker processes use the flow's API (ephemeral or not)
            kwargs["env"] = {**worker_api_environment(), **(kwargs.get("env") or {})}
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)
    if cluster == "slurm":
        return DaskTaskRunner(
            cluster_class="dask_jobqueue.SLURMCluster",
            cluster_kwargs={**SLURM_DEFAULTS, **(cluster_kwargs or {})},
            adapt_kwargs={"minimum": 1, "maximum": max_jobs},
        )
    raise ValueError(f"unknown cluster {cluster!r}; use 'local' or 'slurm'")
