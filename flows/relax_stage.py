"""One relaxation stage inside a flow: skip what the store has, fan the rest out over Dask.

The store is the resume mechanism: before anything is submitted, the structures whose
relaxation with these exact relaxer settings is already stored are dropped
(:meth:`flows.store.ResultStore.pending_relaxations`). Each chunk's results are written to the
store as soon as that chunk finishes, so a run killed half-way loses at most the chunks in
flight. A chunk that crashes (after its Prefect retry) is not written, so a rerun tries it again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
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

    Must be called inside a flow run.

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
    logger = get_run_logger()
    info = describe_relaxer(relaxer, relaxer_settings)
    prov = Provenance(**{**asdict(provenance), "relaxer": relaxer})
    prov.relaxer_settings = info["settings"]
    summary = StageSummary(relaxer, info["settings_hash"], info["settings"], n_input=len(items))
    source = {sid: src for sid, _, src in items}
    with ResultStore(home=home) as store:
        pending = store.pending_relaxations(
            [(sid, s) for sid, s, _ in items], info["settings_hash"], retry_failed=retry_failed
        )
    summary.n_skipped = len(items) - len(pending)
    summary.n_submitted = len(pending)
    logger.info(
        "%s: %d structures, %d already in the store, %d to relax",
        relaxer,
        len(items),
        summary.n_skipped,
        len(pending),
    )
    if not pending:
        return summary
    chunks = [pending[i : i + chunk_size] for i in range(0, len(pending), chunk_size)]
    width = max(1, int(math.log10(len(chunks))) + 1)
    ledger = ledger_path(home)
    # a retry must really run: without refresh_cache Prefect would replay the cached failure
    chunk_task = relax_chunk.with_options(refresh_cache=True) if retry_failed else relax_chunk
    with build_task_runner(cluster, cluster_kwargs) as runner:
        futures = {}
        for number, chunk in enumerate(chunks):
            payload = [(sid, s.as_dict()) for sid, s in chunk]
            future = runner.submit(
                chunk_task,
                parameters={
                    "relaxer_name": relaxer,
                    "relaxer_settings": relaxer_settings,
                    "items": payload,
                    "label": f"{number:0{width}d}of{len(chunks)}",
                    "ledger": ledger,
                },
            )
            futures[future] = chunk
        done = 0
        for future in as_completed(list(futures)):
            chunk = futures[future]
            done += 1
            try:
                results = future.result()
            except Exception as exc:  # a crashed chunk is retried by the next run
                summary.n_crashed_chunks += 1
                ids = ", ".join(sid for sid, _ in chunk)
                summary.errors.append(f"chunk [{ids}] crashed: {type(exc).__name__}: {exc}")
                logger.error("%s: chunk [%s] crashed: %s", relaxer, ids, exc)
                continue
            entries = []
            for (sid, structure), result in zip(chunk, results, strict=True):
                result["source_structure_hash"] = source.get(sid)
                entries.append((structure_hash(structure), result))
                if result.get("error"):
                    summary.n_errors += 1
                    summary.errors.append(str(result["error"]))
                else:
                    summary.n_ok += 1
            with ResultStore(home=home) as store:
                store.put_relaxations(entries, prov)
            summary.n_stored += len(entries)
            logger.info(
                "%s: chunk %d/%d stored (%d/%d structures)",
                relaxer,
                done,
                len(chunks),
                summary.n_stored,
                len(pending),
            )
    return summary


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
