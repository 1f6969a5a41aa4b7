"""Prefect tasks: thin wrappers that call the library (generators, relax, analysis) and the store.

The library modules are imported inside the tasks, so this module imports even while a
colleague's package is incomplete. Only :func:`relax_chunk` runs on Dask workers; every store
write happens in the flow process (one writer per store, no SQLite lock contention).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from pymatgen.core import Structure

from flows.hashing import structure_hash
from flows.store import DONE_STATUSES, Provenance, ResultStore
from flows.timing import library_time

RELAX_CACHE_POLICY = INPUTS + TASK_SOURCE
"""A relax chunk with the same inputs and the same task code is taken from Prefect's cache."""

FINISHED_MARKER = "finished.json"
"""Written by :func:`train_generator_task` into a run directory when its training has ended."""

TRAINING_LOGGERS: tuple[str, ...] = ("generators.trainer",)
"""Library loggers whose records (epoch, losses, ETA) belong in the flow-run logs."""


def _root_run_copy_handler() -> logging.Handler | None:
    """A handler that also sends records to the top-level flow run, when this run is a subflow.

    A user watches the run they started (e.g. ``generate-and-relax``), while a training runs in
    its ``train-generator`` subflow; the copy makes the progress visible on both. ``None`` at
    the top level, outside a run, or when the API cannot be asked.
    """
    from prefect.logging.handlers import APILogHandler
    from prefect.runtime import flow_run

    try:
        current, root = flow_run.get_id(), flow_run.root_flow_run_id
    except Exception:  # best effort: the run's own logs still get the records
        return None
    if not current or not root or str(root) == str(current):
        return None

    class _CopyToRootRun(APILogHandler):
        def emit(self, record: logging.LogRecord) -> None:
            copy = logging.makeLogRecord(record.__dict__)
            copy.flow_run_id, copy.task_run_id = str(root), None
            super().emit(copy)

    return _CopyToRootRun()


@contextlib.contextmanager
def library_logs_to_run(
    names: tuple[str, ...] = TRAINING_LOGGERS, level: int = logging.INFO
) -> Iterator[None]:
    """Send the records of library loggers to the logs of the current Prefect run.

    The library does not import Prefect; its modules log with :mod:`logging`. Inside this
    context each named logger has Prefect's ``APILogHandler`` (unless
    ``PREFECT_LOGGING_EXTRA_LOGGERS`` attached one already) and passes records of ``level`` and
    above (a logger left at ``NOTSET`` would inherit the root logger's ``WARNING``). Inside a
    subflow the records also go to the top-level flow run (the one the user started). All of it
    is undone on exit.

    Parameters
    ----------
    names
        Logger names.
    level
        Lowest level sent.
    """
    from prefect.logging.handlers import APILogHandler

    copy = _root_run_copy_handler()
    undo: list[tuple[logging.Logger, list[logging.Handler], int]] = []
    for name in names:
        logger = logging.getLogger(name)
        added: list[logging.Handler] = []
        if not any(isinstance(h, APILogHandler) for h in logger.handlers):
            added.append(APILogHandler())
        if copy is not None:
            added.append(copy)
        for handler in added:
            logger.addHandler(handler)
        undo.append((logger, added, logger.level))
        if logger.getEffectiveLevel() > level:
            logger.setLevel(level)
    try:
        yield
    finally:
        for logger, added, old_level in undo:
            logger.setLevel(old_level)
            for handler in added:  # records already queued are still sent
                logger.removeHandler(handler)


@functools.lru_cache(maxsize=4)
def _cached_relaxer(name: str, settings_json: str) -> Any:
    from relax import get_relaxer

    return get_relaxer(name, **json.loads(settings_json))


def get_relaxer_cached(name: str, settings: dict[str, Any] | None) -> Any:
    """Build a relaxer once per process (CHGNet's weights load once per Dask worker).

    Parameters
    ----------
    name
        Relaxer name for ``relax.get_relaxer``.
    settings
        Its keyword settings.

    Returns
    -------
    relax.Relaxer
        The relaxer.
    """
    return _cached_relaxer(name, json.dumps(settings or {}, sort_keys=True))


def describe_relaxer(name: str, settings: dict[str, Any] | None) -> dict[str, Any]:
    """Return ``{"name", "settings", "settings_hash"}`` of a relaxer (its full, resolved settings).

    Parameters
    ----------
    name
        Relaxer name.
    settings
        Keyword settings given by the user.

    Returns
    -------
    dict
        ``settings`` is the relaxer's own ``settings()`` (defaults included); its hash keys the
        relaxation documents.
    """
    relaxer = get_relaxer_cached(name, settings)
    return {"name": name, "settings": relaxer.settings(), "settings_hash": relaxer.settings_hash}


@task(
    retries=1,
    retry_delay_seconds=5,
    cache_policy=RELAX_CACHE_POLICY,
    persist_result=True,
    task_run_name="relax-{relaxer_name}-{label}",
)
def relax_chunk(
    relaxer_name: str,
    relaxer_settings: dict[str, Any] | None,
    items: list[tuple[str, dict[str, Any]]],
    label: str = "chunk",
    ledger: str | None = None,
) -> list[dict[str, Any]]:
    """Relax one chunk of structures (runs on a Dask worker: a thread or a process).

    Parameters
    ----------
    relaxer_name, relaxer_settings
        Passed to ``relax.get_relaxer``.
    items
        ``(structure_id, Structure.as_dict())`` pairs.
    label
        Name of the chunk in the Prefect UI.
    ledger
        A JSON-lines file to which one line per computed relaxation is appended (an audit of
        what was really computed; a result served from Prefect's cache adds nothing).

    Returns
    -------
    list of dict
        ``RelaxResult.model_dump(mode="json")`` per item, in order; a bad structure gives an
        error result and the rest goes on.
    """
    import torch

    threads = torch.get_num_threads()  # restored: the worker may be a thread of the flow
    torch.set_num_threads(int(os.environ.get("DFTLOOP_TORCH_THREADS", "1")))
    try:
        relaxer = get_relaxer_cached(relaxer_name, relaxer_settings)
        pairs = [(sid, Structure.from_dict(d)) for sid, d in items]
        inputs = [(sid, right_handed(s)) for sid, s in pairs]
        with library_time("relax"):
            relaxed = relax_sized_items(relaxer, inputs)
    finally:
        torch.set_num_threads(threads)
    results = [r.model_dump(mode="json") for r in relaxed]
    if ledger:
        append_ledger(ledger, relaxer_name, pairs, results)
    return results


def right_handed(structure: Structure) -> Structure:
    """Return the same crystal on a right-handed basis (the structure itself if it is one).

    Generators return lattices with either handedness (DiffCSP's lattice DDPM is
    unconstrained), while the relaxers' input check rejects a non-positive determinant and
    stress and volume conventions assume a positive one. A left-handed cell (a, b, c) becomes
    (a, b, −c) with the third fractional coordinate negated: every atom keeps its Cartesian
    position, so energies, the relaxed structure and its comparison with the sample are those
    of the same crystal.

    Parameters
    ----------
    structure
        Any periodic structure.

    Returns
    -------
    Structure
        A structure whose lattice matrix has a positive determinant (or the input, unchanged,
        when its determinant is not negative, e.g. a degenerate cell left to the input check).
    """
    import numpy as np
    from pymatgen.core import Lattice

    matrix = np.array(structure.lattice.matrix, dtype=float)
    if not np.all(np.isfinite(matrix)) or np.linalg.det(matrix) >= 0:
        return structure
    matrix[2] = -matrix[2]
    frac = np.array(structure.frac_coords, dtype=float)
    frac[:, 2] = np.mod(-frac[:, 2], 1.0)
    return Structure(
        Lattice(matrix, pbc=structure.lattice.pbc),
        structure.species_and_occu,
        frac,
        site_properties=structure.site_properties or None,
        properties=getattr(structure, "properties", None),
    )


MAX_VOLUME_PER_ATOM_A3 = 1000.0
"""Loosest cell handed to a relaxer. Crystals have ~5-100 Å^3 per atom; an undertrained
generator can return cells hundreds of Å long (a 500-Å DiffCSP-C cell of 5 atoms, 2e7 Å^3 per
atom, took a CHGNet worker past 9 GB of memory before it was stopped). Such a sample is an
``invalid_input`` result, never a relaxation."""


def oversized_cell(structure: Structure) -> str | None:
    """Say why a cell is too loose to be a crystal worth relaxing, or return ``None``.

    Parameters
    ----------
    structure
        A structure with at least one site.

    Returns
    -------
    str or None
        E.g. ``"cell of 1.9e+07 Å^3 per atom (a, b, c = 480, 631, 535 Å) is not a crystal:
        more than 1000 Å^3 per atom"``.
    """
    per_atom = abs(structure.volume) / max(len(structure), 1)
    if per_atom <= MAX_VOLUME_PER_ATOM_A3:
        return None
    abc = ", ".join(f"{x:.3g}" for x in structure.lattice.abc)
    return (
        f"cell of {per_atom:.3g} Å^3 per atom (a, b, c = {abc} Å) is not a crystal: more than "
        f"{MAX_VOLUME_PER_ATOM_A3:.0f} Å^3 per atom"
    )


def relax_sized_items(relaxer: Any, pairs: list[tuple[str, Structure]]) -> list[Any]:
    """Relax the crystals, reject the cells that are too loose to be crystals.

    :func:`relax_per_item` for the structures :func:`oversized_cell` accepts; an
    ``invalid_input`` result naming the cell for the others (never handed to the relaxer).
    Results are in input order.
    """
    from relax import RelaxResult

    reasons = [oversized_cell(s) for _, s in pairs]
    fine = [pair for pair, reason in zip(pairs, reasons, strict=True) if reason is None]
    relaxed = iter(relax_per_item(relaxer, fine) if fine else [])
    return [
        next(relaxed)
        if reason is None
        else RelaxResult.failure(sid, relaxer, reason, structure=s, status="invalid_input")
        for (sid, s), reason in zip(pairs, reasons, strict=True)
    ]


def relax_per_item(relaxer: Any, pairs: list[tuple[str, Structure]]) -> list[Any]:
    """``relaxer.relax(pairs)``; if it raises for the whole batch, relax one by one.

    An item that still raises becomes a ``failed`` result naming the structure and the error
    (e.g. a ``MemoryError`` from the neighbour list of an absurd generated cell), so one bad
    structure never takes its chunk down.
    """
    from relax import RelaxResult

    try:
        return list(relaxer.relax(pairs))
    except Exception as exc:
        if len(pairs) == 1:
            sid, structure = pairs[0]
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            return [RelaxResult.failure(sid, relaxer, reason, structure=structure)]
    out: list[Any] = []
    for pair in pairs:
        out.extend(relax_per_item(relaxer, [pair]))
    return out


def append_ledger(
    ledger: str,
    relaxer_name: str,
    pairs: list[tuple[str, Structure]],
    results: list[dict[str, Any]],
) -> None:
    """Append one JSON line per computed relaxation to ``ledger`` (``O_APPEND`` writes)."""
    path = Path(ledger)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        json.dumps(
            {
                "structure_id": sid,
                "structure_hash": structure_hash(structure),
                "relaxer": relaxer_name,
                "settings_hash": res.get("settings_hash"),
                "status": res.get("status"),
                "pid": os.getpid(),
            }
        )
        + "\n"
        for (sid, structure), res in zip(pairs, results, strict=True)
    )
    with open(path, "a") as stream:
        stream.write(lines)


@task
def sample_structures_task(
    model: str,
    n: int,
    out_dir: str,
    *,
    dataset: str,
    checkpoint: str | None = None,
    seed: int = 0,
    mode: str | None = None,
    steps: int | None = None,
    split: str = "test",
    smoke_split: str = "val",
    smoke_rattle: float = 0.05,
) -> str:
    """Write a sample directory (or reuse a finished one) and return its path.

    Parameters
    ----------
    model
        A generator name, or ``"dataset"`` for the smoke-test pseudo-model
        (:mod:`flows.smoke_model`).
    n
        Number of samples.
    out_dir
        Sample directory.
    dataset
        Dataset name.
    checkpoint
        Checkpoint path (required for real generators).
    seed
        Random seed.
    mode
        Sampling mode for real generators (``"generate"`` or ``"csp"``: n targets of the test
        split); default: the checkpoint config's ``model.mode``, else ``"generate"`` when the
        model supports it.
    steps
        Sampling steps (default: the model's).
    split
        CSP: the split whose first ``n`` structures are the targets.
    smoke_split, smoke_rattle
        Only for the pseudo-model.

    Returns
    -------
    str
        The sample directory.
    """
    from flows.smoke_model import SMOKE_MODEL, sample_from_dataset

    out = Path(out_dir)
    if (out / "index.json").is_file():
        from dftloop_io.samples import is_complete, read_index

        index = read_index(out)
        if index.get("total") == n and is_complete(index):
            return str(out)  # an interrupted directory goes on to the sampler, which resumes
    if model == SMOKE_MODEL:
        with library_time("sample"):
            smoke = sample_from_dataset(
                dataset, n, out, split=smoke_split, rattle=smoke_rattle, seed=seed
            )
        return str(smoke)
    if checkpoint is None:
        raise ValueError(f"model {model!r}: a checkpoint is needed to sample (or train first)")
    from generators.sampler import sample

    mode = mode or checkpoint_mode(checkpoint)
    kwargs: dict[str, Any] = {"n": n} if mode == "generate" else {"split": split, "limit": n}
    with library_time("sample"):
        summary = sample(checkpoint, out, mode, seed=seed, steps=steps, progress=False, **kwargs)
    return str(summary.out_dir)


def checkpoint_mode(checkpoint: str) -> str:
    """Return the sampling mode a checkpoint was trained for (``generate`` or ``csp``)."""
    from generators.registry import model_class
    from generators.trainer import read_checkpoint

    meta = read_checkpoint(checkpoint)
    mode = (meta.get("config") or {}).get("model", {}).get("mode")
    if mode in ("generate", "csp"):
        return mode
    return "generate" if "generate" in model_class(meta["model"]).supports else "csp"


@task
def train_generator_task(
    model: str,
    dataset: str,
    config_name: str,
    out_dir: str,
    max_minutes: float | None = None,
    limit: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Train a generator with ``generators.trainer.train`` and return its best checkpoint.

    A finished training in ``out_dir`` is reused (delete the directory to train again): the
    checkpoint recorded in its ``finished.json`` (``best.pt``, or ``last.pt`` when no validation
    ran, e.g. a run stopped by its time budget), else an existing ``best.pt``.
    """
    marker = Path(out_dir) / FINISHED_MARKER
    if marker.is_file():
        recorded = Path(json.loads(marker.read_text())["checkpoint"])
        if recorded.is_file():
            return str(recorded)
    best = Path(out_dir) / "best.pt"
    if best.is_file():
        return str(best)
    from generators.trainer import train

    with library_logs_to_run():  # epochs, losses and ETA in this run's logs
        result = train(
            model,
            dataset,
            config_name,
            out_dir,
            max_minutes=max_minutes,
            limit=limit,
            overrides=overrides,
            progress=False,
        )
    best = Path(result.out_dir) / "best.pt"
    checkpoint = best if best.is_file() else Path(result.out_dir) / "last.pt"
    record = {"checkpoint": str(checkpoint), "epochs": result.epochs}
    record["stop_reason"] = result.stop_reason
    (Path(result.out_dir) / FINISHED_MARKER).write_text(json.dumps(record))
    return str(checkpoint)


def load_sample_items(sample_dir: str) -> tuple[list[tuple[str, Structure]], list[dict[str, str]]]:
    """Read a sample directory into ``(sample_id, Structure)`` pairs and per-item errors.

    Parameters
    ----------
    sample_dir
        A directory written by ``generators.sampler`` or the pseudo-model.

    Returns
    -------
    tuple
        ``(items, errors)``; samples without a structure are listed in ``errors`` as
        ``{"id", "reason"}``: those the sampler could not build, and rows or chunk files that
        ``dftloop_io.samples.load_samples`` could not read (the rest still load).
    """
    from dftloop_io.samples import load_samples

    items, errors = [], []
    for rec in load_samples(sample_dir):
        if rec.structure is None:
            errors.append({"id": rec.sample_id, "reason": rec.error or "no structure"})
        else:
            items.append((rec.sample_id, rec.structure))
    return items, errors


@task
def store_samples_task(sample_dir: str, provenance: dict[str, Any], home: str | None) -> int:
    """Put every sample of a sample directory in the store; return how many."""
    from dftloop_io.samples import load_samples

    with ResultStore(home=home) as store:
        return len(store.put_samples(load_samples(sample_dir), Provenance(**provenance)))


def relaxed_inputs(
    items: list[tuple[str, Structure]],
    settings_hash: str,
    home: str | None,
    max_structures: int | None = None,
) -> list[tuple[str, Structure, str]]:
    """Return the structures relaxed by a previous stage, lowest energy (enthalpy at p ≠ 0) first.

    Parameters
    ----------
    items
        The original ``(sample_id, Structure)`` pairs.
    settings_hash
        Settings hash of the previous stage.
    home
        Project directory.
    max_structures
        Keep at most this many (the lowest final ``E/N``, ``H/N`` at ``p ≠ 0``, first).

    Returns
    -------
    list of (str, Structure, str)
        ``(sample_id, relaxed structure, hash of the original structure)`` of those whose
        previous relaxation produced a structure.
    """
    from analysis.enthalpy import energy_pair

    hashes = {sid: structure_hash(s) for sid, s in items}
    with ResultStore(home=home) as store:
        docs = store.get_relaxations(list(hashes.values()), settings_hash)
    rows = []
    for sid, _ in items:
        doc = docs.get(hashes[sid])
        if doc and doc.get("final_structure") and doc.get("status") in ("ok", "not_converged"):
            energy = energy_pair(doc, None).final_per_atom_eV
            rows.append((energy if energy is not None else float("inf"), sid, doc, hashes[sid]))
    rows.sort(key=lambda r: r[0])
    if max_structures is not None:
        rows = rows[:max_structures]
    return [(sid, Structure.from_dict(doc["final_structure"]), h) for _, sid, doc, h in rows]


def is_done(doc: dict[str, Any] | None) -> bool:
    """Whether a relaxation document counts as finished (see ``flows.store.DONE_STATUSES``)."""
    return bool(doc) and doc.get("status", "ok") in DONE_STATUSES


@task
def analyze_task(
    sample_dir: str,
    settings_hash: str,
    home: str | None,
    provenance: dict[str, Any],
    dft_settings_hash: str | None = None,
) -> list[dict[str, Any]]:
    """Compare each sample with its relaxed ground state and store one ``analysis`` document each.

    The comparison is against the force-field relaxation (``settings_hash``); when a DFT stage ran
    (``dft_settings_hash``), its energy drop and the RMSD to the DFT structure are added. Energies
    are read as the stability experiment reads them (:func:`analysis.enthalpy.energy_pair`):
    ``E`` per atom at zero pressure, the enthalpy ``H = E + pV`` per atom where the relaxation
    ran at ``p ≠ 0``, so ``delta_e_mev_per_atom`` is then ΔH.

    Parameters
    ----------
    sample_dir
        The sample directory.
    settings_hash
        Settings hash of the (first-stage) relaxation.
    home
        Project directory.
    provenance
        :class:`~flows.store.Provenance` fields.
    dft_settings_hash
        Settings hash of the DFT stage, if any.

    Returns
    -------
    list of dict
        One row per sample: ``structure_id``, ``formula``, ``pressure_gpa``, ``energy_quantity``
        (``"E"`` or ``"H"``), ``delta_e_mev_per_atom`` (ΔE, or ΔH at ``p ≠ 0``, meV/atom),
        ``rmsd``, ``matched``, ``delta_volume_frac``, ``status``, ``error`` and, with DFT,
        ``dft_*`` (``dft_pressure_gpa``, ``dft_energy_quantity``, ``dft_delta_e_mev_per_atom``
        of the DFT relaxation started from the force-field-relaxed structure).
    """
    from analysis.enthalpy import energy_pair
    from analysis.stability import compare_to_relaxed

    items, errors = load_sample_items(sample_dir)
    hashes = {sid: structure_hash(s) for sid, s in items}
    with ResultStore(home=home) as store:
        relaxations = store.get_relaxations(list(hashes.values()), settings_hash)
        rows: list[dict[str, Any]] = [
            {"structure_id": e["id"], "status": "no_structure", "error": e["reason"]}
            for e in errors
        ]
        dft_docs: dict[str, dict[str, Any]] = {}
        if dft_settings_hash:
            relaxed_hash = {
                h: structure_hash(Structure.from_dict(d["final_structure"]))
                for h, d in relaxations.items()
                if d.get("final_structure")
            }
            found = store.get_relaxations(list(relaxed_hash.values()), dft_settings_hash)
            dft_docs = {h: found[rh] for h, rh in relaxed_hash.items() if rh in found}
        for sid, structure in items:
            h = hashes[sid]
            doc = relaxations.get(h)
            row: dict[str, Any] = {
                "structure_id": sid,
                "structure_hash": h,
                "settings_hash": settings_hash,
                "formula": structure.composition.reduced_formula,
            }
            if doc is None:
                row.update(status="not_relaxed", error=f"{sid}: no relaxation in the store")
                rows.append(row)
                continue
            pair = energy_pair(doc, structure)
            row.update(pressure_gpa=pair.pressure_gpa, energy_quantity=pair.quantity)
            if doc.get("error") or not doc.get("final_structure"):
                row.update(status=doc.get("status"), error=doc.get("error") or "no structure")
            else:
                try:
                    relaxed = Structure.from_dict(doc["final_structure"])
                    with library_time("compare"):
                        compared = compare_to_relaxed(
                            structure, relaxed, pair.initial_per_atom_eV, pair.final_per_atom_eV
                        )
                    row.update(compared)
                    row.update(status=doc.get("status"), error=None)
                except Exception as exc:  # one bad comparison is reported, the rest goes on
                    row.update(status="analysis_failed", error=f"{sid}: {exc}")
            dft = dft_docs.get(h)
            if dft is not None and dft.get("final_structure") and not dft.get("error"):
                dft_relaxed = Structure.from_dict(dft["final_structure"])
                with library_time("compare"):
                    cmp = compare_to_relaxed(structure, dft_relaxed, None, None)
                row["dft_rmsd"] = cmp["rmsd"]
                row["dft_status"] = dft.get("status")
                # the DFT relaxation started from the force-field-relaxed structure
                dft_pair = energy_pair(dft, Structure.from_dict(doc["final_structure"]))
                e0, e1 = dft_pair.initial_per_atom_eV, dft_pair.final_per_atom_eV
                row["dft_pressure_gpa"] = dft_pair.pressure_gpa
                row["dft_energy_quantity"] = dft_pair.quantity
                row["dft_delta_e_mev_per_atom"] = (
                    None if e0 is None or e1 is None else 1000.0 * (e0 - e1)
                )
            elif dft is not None:
                row["dft_status"] = dft.get("status")
                row["dft_error"] = dft.get("error")
            rows.append(row)
        store.put_analyses([r for r in rows if r.get("structure_hash")], Provenance(**provenance))
    return rows
