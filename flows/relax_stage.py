"""One relaxation stage inside a flow: skip what the store has, fan the rest out over Dask.

The store is the resume mechanism: before anything is submitted, the structures whose
relaxation with these exact relaxer settings is already stored are dropped
(:meth:`flows.store.ResultStore.pending_relaxations`). Each chunk's results are written to the
store as soon as that chunk finishes, so a run killed half-way loses at most the chunks in
flight. A chunk that crashes (after its Prefect retry) is not written, so a rerun tries it again.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any, TypedDict, Unpack

from prefect import get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from pymatgen.core import Structure

from flows.hashing import structure_hash
from flows.runners import build_task_runner
from flows.store import Provenance, ResultStore, dftloop_home
from flows.tasks import describe_relaxer, relax_chunk


class StageOptions(TypedDict, total=False):
    """Where a relaxation stage keeps its results and how it fans out (:func:`run_relax_stage`)."""

    home: str | None
    chunk_size: int
    cluster: str
    cluster_kwargs: dict[str, Any] | None
    retry_failed: bool


@dataclass
class StageSummary:
    """What one relaxation stage did (counts are structures unless said otherwise)."""

    relaxer: str
    settings_hash: str
    settings: dict[str, Any]
    n_input: int = 0
    n_skipped: int = 0
    n_submitted: int = 0
    n_stored: int = 0
    n_ok: int = 0
    n_errors: int = 0
    n_crashed_chunks: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as a dict."""
        return asdict(self)


def ledger_path(home: str | None) -> str:
    """Return the relaxation ledger file of the project directory."""
    return str(dftloop_home(home) / "ledger" / "relaxations.jsonl")


def run_relax_stage(
    items: list[tuple[str, Structure, str]],
    relaxer: str,
    relaxer_settings: dict[str, Any] | None,
    provenance: Provenance,
    *,
    home: str | None = None,
    chunk_size: int = 4,
    cluster: str = "local",
    cluster_kwargs: dict[str, Any] | None = None,
    retry_failed: bool = False,
) -> StageSummary:
    """Relax ``items`` that the store does not have yet; store results chunk by chunk.

    Must be called inside a flow run. One group of :func:`run_relax_queue`, every chunk
    submitted at once.

    Parameters
    ----------
    items
        ``(structure_id, structure to relax, source hash)``; the source hash (of the generated
        sample) is recorded in each relaxation document as ``source_structure_hash``.
    relaxer, relaxer_settings
        For ``relax.get_relaxer``.
    provenance
        Model, dataset, config of the samples (relaxer fields are filled in here).
    home
        Project directory.
    chunk_size
        Structures per Dask task (CHGNet relaxes a chunk as one batch).
    cluster, cluster_kwargs
        See :func:`flows.runners.build_task_runner`.
    retry_failed
        Relax again structures whose stored relaxation has status ``failed``; their chunks
        bypass Prefect's task cache (``refresh_cache``), which would hand back the failure.

    Returns
    -------
    StageSummary
        Counts of skipped, submitted, stored and failed relaxations.
    """
    outcome = run_relax_queue(
        [QueueGroup("", items, provenance)],
        relaxer,
        relaxer_settings,
        home=home,
        chunk_size=chunk_size,
        cluster=cluster,
        cluster_kwargs=cluster_kwargs,
        retry_failed=retry_failed,
    )
    return outcome.summaries[""]


@dataclass
class QueueGroup:
    """Structures of one provenance (one model's, say) in a :func:`run_relax_queue`."""

    name: str
    items: list[tuple[str, Structure, str]]
    """``(structure_id, structure to relax, source hash)``."""
    provenance: Provenance


@dataclass
class QueueOutcome:
    """What :func:`run_relax_queue` did, by group name."""

    summaries: dict[str, StageSummary]
    not_started: dict[str, list[str]]
    """Structure ids left out because the time budget was used up."""
    seconds: dict[str, float]
    """Sum over the group's chunks of the wall time from submission to result."""


def run_relax_queue(
    groups: list[QueueGroup],
    relaxer: str,
    relaxer_settings: dict[str, Any] | None,
    *,
    home: str | None = None,
    chunk_size: int = 4,
    cluster: str = "local",
    cluster_kwargs: dict[str, Any] | None = None,
    retry_failed: bool = False,
    in_flight: int | None = None,
    max_seconds: float | None = None,
) -> QueueOutcome:
    """Relax several groups' structures through one queue; store each with its own provenance.

    Must be called inside a flow run. The chunks the store does not have yet are queued round
    robin over the groups (first chunk of each group, then the second, ...), so a run stopped
    early has results for every group. At most ``in_flight`` chunks run at once; the next one
    is submitted as soon as any finishes, so a worker never waits for a slower structure of
    another chunk. Each chunk's results are written as soon as it finishes.

    Parameters
    ----------
    groups
        The groups, in the order their chunks take turns.
    relaxer, relaxer_settings, home, chunk_size, cluster, cluster_kwargs, retry_failed
        As :func:`run_relax_stage`.
    in_flight
        Chunks running at once (the number of workers); ``None`` submits every chunk at once.
    max_seconds
        Wall-time budget from the call: no chunk is submitted after it; those chunks'
        structure ids are in :attr:`QueueOutcome.not_started`. ``None``: no budget.

    Returns
    -------
    QueueOutcome
        Per group: the stage summary, what was not started, the chunks' wall time.
    """
    logger = get_run_logger()
    start = time.perf_counter()
    info = describe_relaxer(relaxer, relaxer_settings)
    outcome = QueueOutcome({}, {}, {})
    provenances: dict[str, Provenance] = {}
    queues: list[list[tuple[QueueGroup, list[tuple[str, Structure]]]]] = []
    with ResultStore(home=home) as store:
        pendings = [
            store.pending_relaxations(
                [(sid, s) for sid, s, _ in group.items],
                info["settings_hash"],
                retry_failed=retry_failed,
            )
            for group in groups
        ]
    for group, pending in zip(groups, pendings, strict=True):
        summary = StageSummary(
            relaxer, info["settings_hash"], info["settings"], n_input=len(group.items)
        )
        summary.n_skipped = len(group.items) - len(pending)
        logger.info(
            "%s: %d structures, %d already in the store, %d to relax",
            _label(relaxer, group.name),
            len(group.items),
            summary.n_skipped,
            len(pending),
        )
        prov = Provenance(**{**asdict(group.provenance), "relaxer": relaxer})
        prov.relaxer_settings = info["settings"]
        provenances[group.name] = prov
        outcome.summaries[group.name] = summary
        outcome.not_started[group.name] = []
        outcome.seconds[group.name] = 0.0
        queues.append(
            [(group, pending[i : i + chunk_size]) for i in range(0, len(pending), chunk_size)]
        )
    order = [chunk for turn in zip_longest(*queues) for chunk in turn if chunk is not None]
    if not order:
        return outcome
    if max_seconds is not None and max_seconds <= 0:
        _leave_out(order, outcome)
        return outcome
    sources = {(group.name, sid): src for group in groups for sid, _, src in group.items}
    width = max(1, int(math.log10(len(order))) + 1)
    limit = len(order) if in_flight is None else max(1, in_flight)
    ledger = ledger_path(home)
    # a retry must really run: without refresh_cache Prefect would replay the cached failure
    chunk_task = relax_chunk.with_options(refresh_cache=True) if retry_failed else relax_chunk
    with build_task_runner(cluster, cluster_kwargs) as runner:
        running: dict[Any, tuple[QueueGroup, list[tuple[str, Structure]], float]] = {}
        chunk_seconds: list[float] = []
        submitted = 0
        while submitted < len(order) or running:
            while submitted < len(order) and len(running) < limit:
                if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                    _leave_out(order[submitted:], outcome)
                    logger.info(
                        "%s: time budget of %.0f s used up; %d chunks not started",
                        relaxer,
                        max_seconds,
                        len(order) - submitted,
                    )
                    submitted = len(order)
                    break
                group, chunk = order[submitted]
                future = runner.submit(
                    chunk_task,
                    parameters={
                        "relaxer_name": relaxer,
                        "relaxer_settings": relaxer_settings,
                        "items": [(sid, s.as_dict()) for sid, s in chunk],
                        "label": f"{submitted:0{width}d}of{len(order)}",
                        "ledger": ledger,
                    },
                )
                running[future] = (group, chunk, time.perf_counter())
                outcome.summaries[group.name].n_submitted += len(chunk)
                submitted += 1
            if not running:
                break
            future = next(iter(as_completed(list(running))))
            group, chunk, submitted_at = running.pop(future)
            elapsed = time.perf_counter() - submitted_at
            outcome.seconds[group.name] += elapsed
            summary = outcome.summaries[group.name]
            label = _label(relaxer, group.name)
            try:
                results = future.result()
            except Exception as exc:  # a crashed chunk is retried by the next run
                summary.n_crashed_chunks += 1
                ids = ", ".join(sid for sid, _ in chunk)
                summary.errors.append(f"chunk [{ids}] crashed: {type(exc).__name__}: {exc}")
                logger.error("%s: chunk [%s] crashed: %s", label, ids, exc)
                continue
            entries = []
            for (sid, structure), result in zip(chunk, results, strict=True):
                result["source_structure_hash"] = sources.get((group.name, sid))
                entries.append((structure_hash(structure), result))
                if result.get("error"):
                    summary.n_errors += 1
                    summary.errors.append(str(result["error"]))
                else:
                    summary.n_ok += 1
            with ResultStore(home=home) as store:
                store.put_relaxations(entries, provenances[group.name])
            summary.n_stored += len(entries)
            chunk_seconds.append(elapsed)
            logger.info(
                "%s: stored %d/%d structures (%s, %.1f min); %s",
                label,
                summary.n_stored,
                summary.n_input - summary.n_skipped,
                ", ".join(sid for sid, _ in chunk),
                chunk_seconds[-1] / 60.0,
                queue_progress(chunk_seconds, len(order) - submitted, len(running), limit),
            )
    return outcome


def queue_progress(
    chunk_seconds: list[float], n_waiting: int, n_running: int, n_workers: int
) -> str:
    """Describe what is left in a relaxation queue and estimate its wall time.

    The estimate takes the median wall time of the chunks finished so far for every chunk
    left, counts a running chunk as half done, and spreads the work over ``n_workers``.

    Parameters
    ----------
    chunk_seconds
        Wall time (submission to result) of each finished chunk, seconds.
    n_waiting
        Chunks not submitted yet.
    n_running
        Chunks submitted and not finished.
    n_workers
        Chunks that run at once.

    Returns
    -------
    str
        For example ``"queue: 2 running, 4 waiting, about 50 min left (median chunk
        20.0 min over 3)"``.
    """
    head = f"queue: {n_running} running, {n_waiting} waiting"
    if not chunk_seconds or n_waiting + n_running == 0:
        return head
    median = statistics.median(chunk_seconds) / 60.0
    left = median * (n_waiting + 0.5 * n_running) / max(1, n_workers)
    if left < 10:
        when = f"{left:.1f} min"
    elif left < 120:
        when = f"{left:.0f} min"
    else:
        when = f"{left / 60.0:.1f} h"
    return f"{head}, about {when} left (median chunk {median:.1f} min over {len(chunk_seconds)})"


def _label(relaxer: str, group: str) -> str:
    return f"{relaxer} ({group})" if group else relaxer


def _leave_out(
    chunks: list[tuple[QueueGroup, list[tuple[str, Structure]]]], outcome: QueueOutcome
) -> None:
    for group, chunk in chunks:
        outcome.not_started[group.name].extend(sid for sid, _ in chunk)


def with_flow_run(provenance: Provenance) -> Provenance:
    """Set ``provenance.flow_run_id`` to the current flow run's id (``None`` outside a run).

    Parameters
    ----------
    provenance
        The provenance to complete (changed in place).

    Returns
    -------
    Provenance
        The same object.
    """
    run_id = flow_run.get_id()
    provenance.flow_run_id = str(run_id) if run_id else None
    return provenance


def samples_provenance(sample_dir: str | Path, config: dict[str, Any]) -> Provenance:
    """Build the provenance of a sample directory from its ``index.json`` and the run config."""
    from dftloop_io.samples import read_index

    index = read_index(sample_dir)
    return Provenance(
        model=index.get("model"),
        checkpoint_sha256=index.get("checkpoint_sha256"),
        dataset=index.get("dataset"),
        config={**config, "sample_dir": str(sample_dir), "mode": index.get("mode")},
    )


def flow_run_provenance(sample_dir: str | Path, config: dict[str, Any]) -> Provenance:
    """Return :func:`samples_provenance` with the id of the current flow run (``None`` outside).

    Parameters
    ----------
    sample_dir
        The sample directory (its ``index.json`` names model, dataset and checkpoint).
    config
        The run's configuration recorded with the documents.

    Returns
    -------
    Provenance
        The provenance, ``flow_run_id`` filled in.
    """
    return with_flow_run(samples_provenance(sample_dir, config))


def relax_samples(
    items: list[tuple[str, Structure]],
    relaxer: str,
    relaxer_settings: dict[str, Any] | None,
    provenance: Provenance,
    **options: Unpack[StageOptions],
) -> StageSummary:
    """Relax generated samples as they are: :func:`run_relax_stage` with each own hash as source.

    Parameters
    ----------
    items
        ``(sample id, structure)`` (:func:`flows.tasks.load_sample_items`).
    relaxer, relaxer_settings, provenance
        As :func:`run_relax_stage`.
    **options
        :class:`StageOptions`.

    Returns
    -------
    StageSummary
        What the stage did.
    """
    triples = [(sid, s, structure_hash(s)) for sid, s in items]
    return run_relax_stage(triples, relaxer, relaxer_settings, provenance, **options)
