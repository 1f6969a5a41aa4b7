"""The ``stability-experiment`` flow: DP-CDVAE's ΔE experiment at the scale of this CPU.

Per model: train (or take a checkpoint) → sample ``n`` structures → relax all with the force
field (CHGNet) → relax ``dft_per_model`` of them with the two-stage relaxer (force-field
pre-relax, then DFT; the DFT single point of the structure *as generated* gives the initial
energy) → per-structure rows. Across models: summaries with bootstrap intervals, model
differences beside the paper's figure, energies above a reference hull computed with the same
methods, S.U.N. flags, plots, a report directory and Prefect artifacts.

Every relaxation goes through :func:`flows.relax_stage.relax_samples` (each structure relaxed as
it is, its own hash as the source), so results land in the store as they finish and a rerun with
the same parameters skips every finished structure (samples are reused from their sample
directory, trainings from their ``best.pt``).

The flow is thin: selection, rows and tables are in :mod:`flows.experiment_rows`,
:mod:`flows.experiment_reference` and :mod:`flows.experiment_report`; the statistics, hull and
S.U.N. in :mod:`analysis.stability`, :mod:`analysis.hull`, :mod:`analysis.sun`.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pymatgen.core import Structure

from flows.experiment_rows import (
    DFT_SELECTIONS,
    dft_fields,
    hull_energies,
    pairs_of,
    select_for_dft,
    usable_energy,
    values_of,
)
from flows.hashing import structure_hash
from flows.pipeline import sample_structures, train_generator
from flows.relax_stage import flow_run_provenance, relax_samples
from flows.store import Provenance, ResultStore, dftloop_home
from flows.tasks import analyze_task, describe_relaxer, load_sample_items

ExperimentDft = Literal["none", "espresso", "vasp"]

DEFAULT_MODELS: tuple[str, ...] = ("cdvae", "dpcdvae")

DEFAULT_DFT_SETTINGS: dict[str, dict[str, Any]] = {
    "espresso": {
        "kspacing": 0.5,
        "conv_thr_per_atom": 1e-8,
        "timeout_s": 2400.0,
    },
    "vasp": {},
}
"""Fast-but-honest pw.x settings for this 2-core CPU (merged under ``dft_settings``).

``kspacing`` 0.5 Å⁻¹ instead of 0.3 (2-atom diamond: 7³ instead of 11³ k-points; an 8-atom cell
4×4×4); SSSP cutoffs unchanged (C: 45/360 Ry); SCF threshold 1e-8 Ry per atom instead of 1e-9;
pw.x's own ``nstep`` default of 100 kept (pw.x 6.7 counts the final SCF of a vc-relax against
it and stops with status 3 when that SCF hits the limit: a small ``nstep`` turns converged
relaxations into failures); 2400 s
per pw.x calculation (the single point and the vc-relax each; ``timeout_s`` is a machine setting,
not in the settings hash, so changing it does not invalidate stored results)."""


def _run_label(run_name: str | None) -> str:
    if run_name:
        return run_name
    name = flow_run.get_name()
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{name}" if name else stamp


def dft_relaxer_spec(
    relaxer: str,
    relaxer_settings: dict[str, Any] | None,
    dft: str,
    dft_settings: dict[str, Any] | None,
) -> tuple[str, dict[str, Any]]:
    """Name and settings of the two-stage relaxer (force-field pre-relax, then DFT).

    Parameters
    ----------
    relaxer, relaxer_settings
        The force field and its settings (the same as the force-field stage).
    dft, dft_settings
        ``"espresso"`` or ``"vasp"`` and its settings, merged over
        :data:`DEFAULT_DFT_SETTINGS`.

    Returns
    -------
    tuple
        ``("chgnet+espresso", {"chgnet": {...}, "espresso": {...}, "initial_single_point":
        True})`` for ``relax.get_relaxer``.
    """
    final = {**DEFAULT_DFT_SETTINGS.get(dft, {}), **(dft_settings or {})}
    return f"{relaxer}+{dft}", {
        relaxer: dict(relaxer_settings or {}),
        dft: final,
        "initial_single_point": True,
    }


def _checkpoint_for(
    model: str,
    checkpoints: dict[str, str] | None,
    dataset: str,
    train_config: str,
    train_max_minutes: float | None,
    train_overrides: dict[str, Any] | None,
    home: str | None,
) -> str | None:
    """The model's checkpoint: given, or trained (``train_max_minutes`` required)."""
    from flows.smoke_model import SMOKE_MODEL

    if checkpoints and checkpoints.get(model):
        return checkpoints[model]
    if model == SMOKE_MODEL:
        return None
    if train_max_minutes is None:
        raise ValueError(
            f"model {model!r}: no checkpoint given (checkpoints={{'{model}': path}}) and no "
            "train_max_minutes (the CPU budget of its training)"
        )
    return train_generator(
        model,
        dataset,
        train_config,
        home=home,
        max_minutes=train_max_minutes,
        overrides=train_overrides,
    )


def _relax_reference(
    references: list[tuple[str, Structure]],
    stages: list[tuple[str, dict[str, Any]]],
    dataset: str,
    home: str | None,
    cluster: str,
    cluster_kwargs: dict[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """Relax the reference structures with each ``(relaxer, settings)``; return their docs.

    Returns
    -------
    dict
        ``{relaxer name: {"settings_hash", "stage", "docs": {ref id: relaxation doc}}}``.
    """
    prov = Provenance(model="reference", dataset=dataset, config={"role": "hull reference"})
    prov.flow_run_id = str(flow_run.get_id()) if flow_run.get_id() else None
    hashes = {rid: structure_hash(s) for rid, s in references}
    out: dict[str, dict[str, Any]] = {}
    for name, settings in stages:
        stage = relax_samples(
            references,
            name,
            settings,
            prov,
            home=home,
            chunk_size=1 if "+" in name else 4,
            cluster=cluster,
            cluster_kwargs=cluster_kwargs,
        )
        with ResultStore(home=home) as store:
            found = store.get_relaxations(list(hashes.values()), stage.settings_hash)
        out[name] = {
            "settings_hash": stage.settings_hash,
            "stage": stage.as_dict(),
            "docs": {rid: found.get(h) for rid, h in hashes.items()},
        }
    return out


def _hull(references: list[tuple[str, Structure]], docs: dict[str, Any]) -> tuple[Any, dict]:
    """Build the hull from relaxed references; ``(None, description)`` if it cannot be built."""
    from analysis.hull import build_hull, reference_entries

    structures, energies, ids = [], [], []
    info: dict[str, Any] = {"entries": {}}
    for rid, structure in references:
        doc = docs.get(rid)
        energy = usable_energy(doc)
        relaxed = Structure.from_dict(doc["final_structure"]) if energy is not None else structure
        info["entries"][rid] = {
            "energy_per_atom_eV": energy,
            "status": (doc or {}).get("status"),
            "error": (doc or {}).get("error"),
            "n_sites": len(structure),
        }
        structures.append(relaxed)
        energies.append(energy)
        ids.append(rid)
    try:
        hull = build_hull(reference_entries(structures, energies, ids=ids))
    except ValueError as exc:
        info["error"] = str(exc)
        return None, info
    return hull, info


COUNTS: tuple[str, ...] = (
    "n_input",
    "n_skipped",
    "n_submitted",
    "n_stored",
    "n_ok",
    "n_errors",
    "n_crashed_chunks",
)


def _accumulate(stages: dict[str, dict[str, Any]], key: str, stage: dict[str, Any]) -> None:
    """Add a stage summary (one DFT round) to the running total under ``key``."""
    if key not in stages:
        stages[key] = {**stage, "errors": list(stage["errors"])}
        return
    total = stages[key]
    for name in COUNTS:
        total[name] += stage[name]
    total["errors"] += stage["errors"]


@dataclass
class ModelRun:
    """One model's samples and rows inside the experiment."""

    model: str
    sample_dir: str
    items: list[tuple[str, Structure]]
    provenance: Provenance
    hashes: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    dft_not_started: dict[str, str] = field(default_factory=dict)

    @property
    def structures(self) -> dict[str, Structure]:
        """``{sample id: generated structure}``."""
        return dict(self.items)


def _sample_model(
    model: str,
    dataset: str,
    checkpoints: dict[str, str] | None,
    train_config: str,
    train_max_minutes: float | None,
    train_overrides: dict[str, Any] | None,
    n: int,
    seed: int,
    sample_steps: int | None,
    run: str,
    home: str | None,
    timings: dict[str, float],
) -> ModelRun:
    """Checkpoint (given or trained) and samples of one model."""
    start = time.perf_counter()
    checkpoint = _checkpoint_for(
        model, checkpoints, dataset, train_config, train_max_minutes, train_overrides, home
    )
    timings["train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    sample_dir = sample_structures(
        model,
        dataset,
        n,
        checkpoint,
        seed,
        home=home,
        mode=None if checkpoint is None else "generate",
        steps=sample_steps,
    )
    timings["sample_s"] = time.perf_counter() - start
    items, errors = load_sample_items(sample_dir)
    if errors:
        get_run_logger().warning(
            "%s: %d samples have no structure: %s", model, len(errors), errors[:3]
        )
    prov = flow_run_provenance(sample_dir, {"n": n, "seed": seed, "experiment": run})
    hashes = {sid: structure_hash(s) for sid, s in items}
    return ModelRun(model, sample_dir, items, prov, hashes)


def _force_field_rows(mr: ModelRun, settings_hash: str, home: str | None) -> list[dict[str, Any]]:
    """``analyze_task`` rows of one model plus its model name and force-field energies."""
    rows = analyze_task(mr.sample_dir, settings_hash, home, mr.provenance.__dict__, None)
    with ResultStore(home=home) as store:
        docs = store.get_relaxations(list(mr.hashes.values()), settings_hash)
    for row in rows:
        doc = docs.get(row.get("structure_hash", ""))
        row["model"] = mr.model
        row["energy_per_atom_eV"] = usable_energy(doc)
        row["initial_energy_per_atom_eV"] = (doc or {}).get("initial_energy_per_atom_eV")
        row["dft_selected"] = False
    return rows


def _candidates(mr: ModelRun) -> list[dict[str, Any]]:
    """DFT candidates of one model: rows whose force-field relaxation gave an energy."""
    structures = mr.structures
    return [
        {
            "structure_id": r["structure_id"],
            "n_sites": r.get("n_sites") or len(structures[r["structure_id"]]),
            "energy_per_atom_eV": r["energy_per_atom_eV"],
        }
        for r in mr.rows
        if r.get("energy_per_atom_eV") is not None and r["structure_id"] in structures
    ]


def _add_dft_fields(mr: ModelRun, settings_hash: str, home: str | None) -> None:
    """Mark the chosen rows and add their DFT fields from the store.

    A chosen structure whose result an earlier run stored is reported with it and leaves
    ``mr.dft_not_started`` (a rerun with a spent budget still reports every stored result).
    """
    if not mr.chosen:
        return
    with ResultStore(home=home) as store:
        docs = store.get_relaxations([mr.hashes[sid] for sid in mr.chosen], settings_hash)
    chosen, structures = set(mr.chosen), mr.structures
    for row in mr.rows:
        sid = row["structure_id"]
        if sid in chosen:
            row["dft_selected"] = True
            h = mr.hashes[sid]
            if h in docs:  # stored by an earlier run: reported, whatever this run's budget
                mr.dft_not_started.pop(sid, None)
                row.update(dft_fields(structures[sid], docs[h]))
            elif sid in mr.dft_not_started:
                row.update(dft_status="not_started", dft_error=mr.dft_not_started[sid])
            else:
                row.update(dft_status="not_relaxed", dft_error=f"{sid}: no DFT result in the store")


@flow(name="stability-experiment")
def stability_experiment(
    models: list[str] | None = None,
    dataset: str = "carbon_24",
    train_config: str = "cpu-small",
    train_max_minutes: float | None = None,
    train_overrides: dict[str, Any] | None = None,
    checkpoints: dict[str, str] | None = None,
    n: int = 100,
    seed: int = 0,
    sample_steps: int | None = None,
    relaxer: str = "chgnet",
    relaxer_settings: dict[str, Any] | None = None,
    dft: ExperimentDft = "espresso",
    dft_settings: dict[str, Any] | None = None,
    dft_per_model: int = 10,
    dft_selection: Literal["smallest", "random", "lowest_energy"] = "smallest",
    reference_structures: list[str] | None = None,
    n_reference: int = 4,
    sun: bool = True,
    novelty_limit: int | None = None,
    chunk_size: int = 4,
    workers: int = 1,
    dft_workers: int = 1,
    dft_max_minutes: float | None = None,
    cluster: str = "local",
    cluster_kwargs: dict[str, Any] | None = None,
    retry_failed: bool = False,
    run_name: str | None = None,
    home: str | None = None,
) -> dict[str, Any]:
    """Generated structures versus their relaxed ground states, per model (DP-CDVAE's ΔE).

    Parameters
    ----------
    models
        Generators to compare (default ``["cdvae", "dpcdvae"]``); ``"dataset"`` is the
        smoke-test pseudo-model (rattled dataset structures; tests only).
    dataset
        Dataset of training, novelty and hull references.
    train_config
        Configuration of the trainings (models without a checkpoint).
    train_max_minutes
        CPU budget per training, minutes; required for a model without a checkpoint.
    train_overrides
        Configuration overrides of the trainings (e.g. ``{"train": {"max_epochs": 2}}``).
    checkpoints
        ``{model: checkpoint path}``: these models are not trained.
    n
        Structures generated per model.
    seed
        Sampling seed (and the seed of ``dft_selection="random"`` and of the bootstraps).
    sample_steps
        Sampling steps (default: the model's; CDVAE runs ``steps // 50`` Langevin steps per
        noise level, DP-CDVAE an evenly strided subset of its 1000 steps).
    relaxer, relaxer_settings
        The force field that relaxes every structure (default CHGNet, its defaults:
        ``fmax`` 0.05 eV/Å, ``max_steps`` 500).
    dft
        ``"espresso"`` (pw.x), ``"vasp"`` or ``"none"``.
    dft_settings
        Settings of the DFT relaxer, merged over :data:`DEFAULT_DFT_SETTINGS`.
    dft_per_model
        Structures per model sent to the two-stage relaxer (force-field pre-relax, DFT single
        point of the generated structure, DFT relaxation).
    dft_selection
        ``"smallest"`` (fewest atoms first, ties in sample order: the cheapest), ``"random"``
        (seeded) or ``"lowest_energy"`` (lowest force-field energy first); only structures
        whose force-field relaxation succeeded are candidates.
    reference_structures
        Hull references: material ids of the dataset or structure files; default
        :data:`flows.experiment_reference.DEFAULT_REFERENCE_IDS` (carbon_24: diamond and
        graphite of the training split), else the ``n_reference`` lowest-energy distinct
        structures. Relaxed with the force field and, when ``dft`` runs, with the same
        two-stage relaxer.
    n_reference
        See ``reference_structures``.
    sun
        Compute S.U.N. flags (novelty against the training split).
    novelty_limit
        Use only the first training structures for novelty (tests; ``None``: all).
    chunk_size
        Structures per force-field relaxation task.
    workers, dft_workers
        Dask worker processes of the force-field and of the DFT stage (``cluster="local"``;
        each pw.x runs serially, so two DFT workers use both cores).
    dft_max_minutes
        Wall-time budget of the DFT phase: no new round starts once it is used up (a round in
        flight finishes); the chosen structures not started are rows with ``dft_status``
        ``"not_started"`` and the reason. ``None``: no budget. A rerun with a larger budget
        continues where this one stopped (finished DFT results are in the store).
    cluster, cluster_kwargs
        Dask cluster of the relaxations (``"local"`` or ``"slurm"``) and its overrides.
    retry_failed
        Relax again structures whose stored relaxation failed.
    run_name
        Name of the report directory (default: UTC time stamp + flow run name).
    home
        Project directory (default ``$DFTLOOP_HOME`` or ``./dftloop-runs``).

    Returns
    -------
    dict
        ``report_dir``, ``files``, ``artifacts``, ``summary`` (``summary.json`` without its
        tables), ``tables`` (summary, comparison, sun rows) and ``rows``.
    """
    from analysis.stability import summarize_by_model
    from flows.experiment_report import (
        QUANTITIES,
        comparison_table,
        publish_experiment_artifacts,
        summary_table,
        sun_table,
        write_report,
    )

    logger = get_run_logger()
    models = list(models or DEFAULT_MODELS)
    if dft_selection not in DFT_SELECTIONS:
        raise ValueError(f"dft_selection must be one of {DFT_SELECTIONS}, not {dft_selection!r}")
    run = _run_label(run_name)
    report_dir = dftloop_home(home) / "reports" / "experiment" / run
    ff_kwargs = {**(cluster_kwargs or {}), "n_workers": workers}
    dft_kwargs = {**(cluster_kwargs or {}), "n_workers": dft_workers}
    if cluster != "local":
        ff_kwargs = dft_kwargs = dict(cluster_kwargs or {})
    ff_info = describe_relaxer(relaxer, relaxer_settings)
    two_stage = dft_relaxer_spec(relaxer, relaxer_settings, dft, dft_settings)
    two_stage_info = describe_relaxer(*two_stage) if dft != "none" else None

    timings: dict[str, dict[str, float]] = {m: {} for m in models}
    stages: dict[str, dict[str, Any]] = {}
    model_errors: dict[str, str] = {}
    runs: dict[str, ModelRun] = {}
    # phase 1: checkpoints and samples of every model
    for model in models:
        try:
            runs[model] = _sample_model(
                model,
                dataset,
                checkpoints,
                train_config,
                train_max_minutes,
                train_overrides,
                n,
                seed,
                sample_steps,
                run,
                home,
                timings[model],
            )
        except Exception as exc:  # one model failing leaves the others in the report
            logger.error("%s: %s: %s", model, type(exc).__name__, exc)
            model_errors[model] = f"{type(exc).__name__}: {exc}"
    # phase 2: the force field on every structure of every model
    for model, mr in list(runs.items()):
        try:
            start = time.perf_counter()
            stage = relax_samples(
                mr.items,
                relaxer,
                relaxer_settings,
                mr.provenance,
                home=home,
                chunk_size=chunk_size,
                cluster=cluster,
                cluster_kwargs=ff_kwargs,
                retry_failed=retry_failed,
            )
            timings[model]["force_field_s"] = time.perf_counter() - start
            stages[f"{model}:{relaxer}"] = stage.as_dict()
            mr.rows = _force_field_rows(mr, stage.settings_hash, home)
        except Exception as exc:
            logger.error("%s: %s: %s", model, type(exc).__name__, exc)
            model_errors[model] = f"{type(exc).__name__}: {exc}"
            del runs[model]
    # reference hull, before the DFT phase (cheap, and every row needs it)
    start = time.perf_counter()
    ref_stages = [(relaxer, relaxer_settings or {})]
    if two_stage_info is not None:
        ref_stages.append(two_stage)
    ff_hull, dft_hull, reference_info = _reference_hulls(
        dataset, reference_structures, n_reference, ref_stages, home, cluster, dft_kwargs
    )
    timings["reference"] = {"reference_s": time.perf_counter() - start}

    # phase 3: DFT on the chosen structures, round robin over the models
    if two_stage_info is not None and dft_per_model > 0:
        for model, mr in runs.items():
            mr.chosen = select_for_dft(_candidates(mr), dft_per_model, dft_selection, seed)
            logger.info("%s: DFT for %s", model, ", ".join(mr.chosen))
        _dft_rounds(
            runs,
            two_stage,
            dft_workers,
            home,
            cluster,
            dft_kwargs,
            retry_failed,
            stages,
            timings,
            model_errors,
            dft_max_minutes,
        )
        for mr in runs.values():
            _add_dft_fields(mr, two_stage_info["settings_hash"], home)
    rows = [row for mr in runs.values() for row in mr.rows]

    relaxed_structures = _relaxed_structures(rows, home, ff_info["settings_hash"])
    _attach_hull(rows, relaxed_structures, runs, ff_hull, dft_hull)

    # -- S.U.N. --------------------------------------------------------------------------------
    sun_rates: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    if sun and rows:
        try:
            sun_rates = _sun(rows, relaxed_structures, models, dataset, novelty_limit)
        except Exception as exc:
            logger.error("S.U.N.: %s: %s", type(exc).__name__, exc)
            sun_rates = {"error": {"n": 0, "error": f"{type(exc).__name__}: {exc}"}}
    timings["sun"] = {"sun_s": time.perf_counter() - start}
    for row in rows:
        row.pop("_dft_structure", None)

    # -- summaries, comparisons, plots, report -------------------------------------------------
    keys = tuple(QUANTITIES)
    per_model = summarize_by_model(rows, keys=keys, seed=seed)
    present = [m for m in models if m in per_model]
    comparisons = _comparisons(rows, present, seed)
    plots = _plots(rows, present, report_dir)
    tables = {
        "summary": summary_table(per_model),
        "comparison": comparison_table(comparisons),
        "sun": sun_table({k: v for k, v in sun_rates.items() if "error" not in v}),
    }
    summary = {
        "run": run,
        "dataset": dataset,
        "models": models,
        "n": n,
        "seed": seed,
        "relaxer": relaxer,
        "dft": dft,
        "dft_per_model": dft_per_model,
        "dft_selection": dft_selection,
        "dft_max_minutes": dft_max_minutes,
        "dft_not_started": {m: sorted(mr.dft_not_started) for m, mr in runs.items()},
        "per_model": per_model,
        "comparisons": comparisons,
        "sun": sun_rates,
        "reference": reference_info,
        "stages": stages,
        "timings_s": timings,
        "model_errors": model_errors,
        "plots": plots,
        "settings": {
            "relaxer": ff_info,
            "dft_relaxer": two_stage_info,
            "checkpoints": checkpoints,
            "train_config": train_config,
            "train_max_minutes": train_max_minutes,
            "train_overrides": train_overrides,
            "sample_steps": sample_steps,
            "novelty_limit": novelty_limit,
        },
    }
    files = write_report(report_dir, rows, summary, tables)
    artifacts = publish_experiment_artifacts(
        f"experiment-{dataset}", tables, rows, plots, report_dir
    )
    logger.info("report: %s", files["report"])
    return {
        "report_dir": str(report_dir),
        "files": files,
        "artifacts": artifacts,
        "summary": summary,
        "tables": tables,
        "rows": rows,
    }


def _reference_hulls(
    dataset: str,
    reference_structures: list[str] | None,
    n_reference: int,
    ref_stages: list[tuple[str, dict[str, Any]]],
    home: str | None,
    cluster: str,
    cluster_kwargs: dict[str, Any] | None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Relax the hull references with each stage; return (force-field hull, DFT hull, info).

    A hull that cannot be built is ``None`` and ``info`` says why (the ΔE part stands alone).
    """
    from flows.experiment_reference import resolve_reference_structures

    info: dict[str, Any] = {}
    try:
        references, info = resolve_reference_structures(dataset, reference_structures, n_reference)
        relaxed = _relax_reference(references, ref_stages, dataset, home, cluster, cluster_kwargs)
        ff_hull, info["force_field"] = _hull(references, relaxed[ref_stages[0][0]]["docs"])
        dft_hull = None
        if len(ref_stages) > 1:
            dft_hull, info["dft"] = _hull(references, relaxed[ref_stages[1][0]]["docs"])
    except Exception as exc:
        get_run_logger().error("reference hull: %s: %s", type(exc).__name__, exc)
        info["error"] = f"{type(exc).__name__}: {exc}"
        return None, None, info
    return ff_hull, dft_hull, info


def _dft_rounds(
    runs: dict[str, ModelRun],
    two_stage: tuple[str, dict[str, Any]],
    dft_workers: int,
    home: str | None,
    cluster: str,
    cluster_kwargs: dict[str, Any] | None,
    retry_failed: bool,
    stages: dict[str, dict[str, Any]],
    timings: dict[str, dict[str, float]],
    model_errors: dict[str, str],
    max_minutes: float | None = None,
) -> None:
    """DFT-relax each model's chosen structures, ``dft_workers`` per model per round.

    Round robin, so that a run stopped early has DFT results for every model; each round's
    results are in the store as soon as they finish (a rerun skips them). With ``max_minutes``,
    no batch starts after that much wall time; its structures go to ``mr.dft_not_started``.
    """
    per_round = max(1, dft_workers)
    n_rounds = max((len(mr.chosen) for mr in runs.values()), default=0)
    phase_start = time.perf_counter()
    for first in range(0, n_rounds, per_round):
        for model, mr in runs.items():
            batch = mr.chosen[first : first + per_round]
            if not batch:
                continue
            start = time.perf_counter()
            if max_minutes is not None and start - phase_start >= 60.0 * max_minutes:
                reason = f"not started: the DFT budget of {max_minutes:g} min was used up"
                mr.dft_not_started.update(dict.fromkeys(batch, reason))
                continue
            try:
                stage = relax_samples(
                    [(sid, mr.structures[sid]) for sid in batch],
                    two_stage[0],
                    two_stage[1],
                    mr.provenance,
                    home=home,
                    chunk_size=1,
                    cluster=cluster,
                    cluster_kwargs=cluster_kwargs,
                    retry_failed=retry_failed,
                )
            except Exception as exc:  # reported; the rows say "not relaxed"
                get_run_logger().error("%s DFT: %s: %s", model, type(exc).__name__, exc)
                model_errors[f"{model} DFT"] = f"{type(exc).__name__}: {exc}"
                continue
            t = timings[model]
            t["dft_s"] = t.get("dft_s", 0.0) + time.perf_counter() - start
            _accumulate(stages, f"{model}:{two_stage[0]}", stage.as_dict())


def _attach_hull(
    rows: list[dict[str, Any]],
    relaxed: list[Structure | None],
    runs: dict[str, ModelRun],
    ff_hull: Any,
    dft_hull: Any,
) -> None:
    """Add the energies above the hulls to the rows (force field: relaxed and as generated; DFT)."""
    values, reasons = hull_energies(relaxed, [r.get("energy_per_atom_eV") for r in rows], ff_hull)
    structures = {model: mr.structures for model, mr in runs.items()}
    generated = [structures.get(r["model"], {}).get(r["structure_id"]) for r in rows]
    as_generated, _ = hull_energies(
        generated, [r.get("initial_energy_per_atom_eV") for r in rows], ff_hull
    )
    for row, value, reason, gen_value in zip(rows, values, reasons, as_generated, strict=True):
        row["e_above_hull_eV"] = value
        row["e_above_hull_reason"] = reason
        row["e_above_hull_generated_eV"] = gen_value
    if dft_hull is None:
        return
    dft_rows = [
        r for r in rows if r.get("_dft_structure") and r.get("dft_energy_per_atom_eV") is not None
    ]
    dft_values, _ = hull_energies(
        [Structure.from_dict(r["_dft_structure"]) for r in dft_rows],
        [r["dft_energy_per_atom_eV"] for r in dft_rows],
        dft_hull,
    )
    for row, value in zip(dft_rows, dft_values, strict=True):
        row["dft_e_above_hull_eV"] = value


def _comparisons(rows: list[dict[str, Any]], models: list[str], seed: int) -> list[dict[str, Any]]:
    """Every model against the first: ΔE and RMSD (force field and DFT) differences of means."""
    from analysis.stability import compare_models

    out = []
    for other in models[1:]:
        for key in ("delta_e_mev_per_atom", "dft_delta_e_mev_per_atom", "rmsd", "dft_rmsd"):
            a = values_of([r for r in rows if r["model"] == other], key)
            b = values_of([r for r in rows if r["model"] == models[0]], key)
            if a and b:
                result = compare_models(a, b, seed=seed)
                out.append({"a": other, "b": models[0], "key": key, "result": result})
    return out


def _relaxed_structures(
    rows: list[dict[str, Any]],
    home: str | None,
    settings_hash: str,
) -> list[Structure | None]:
    """Force-field-relaxed structure of each row (``None`` where the relaxation failed)."""
    hashes = [r.get("structure_hash") for r in rows]
    with ResultStore(home=home) as store:
        docs = store.get_relaxations([h for h in hashes if h], settings_hash)
    out: list[Structure | None] = []
    for h in hashes:
        doc = docs.get(h or "")
        if usable_energy(doc) is not None and doc.get("final_structure"):
            out.append(Structure.from_dict(doc["final_structure"]))
        else:
            out.append(None)
    return out


def _sun(
    rows: list[dict[str, Any]],
    relaxed: list[Structure | None],
    models: list[str],
    dataset: str,
    novelty_limit: int | None,
) -> dict[str, dict[str, Any]]:
    """S.U.N. flags per row (force-field E_hull; DFT E_hull on the DFT rows) and rates."""
    from analysis.sun import STABILITY_THRESHOLD_EV, NoveltyReference, sun_flags, sun_rate
    from generators.data import load_split

    train = load_split(dataset, "train", limit=novelty_limit)
    reference = NoveltyReference(train.structures, ids=[r.material_id for r in train.records])
    rates: dict[str, dict[str, Any]] = {}
    for model in models:
        idx = [i for i, r in enumerate(rows) if r["model"] == model]
        if not idx:
            continue
        usable = [i for i in idx if relaxed[i] is not None]
        flags = sun_flags(
            [relaxed[i] for i in usable],
            [rows[i].get("e_above_hull_eV") for i in usable],
            reference,
            ids=[rows[i]["structure_id"] for i in usable],
        )
        for i, f in zip(usable, flags, strict=True):
            rows[i].update(
                stable=f["stable"],
                stable_strict=f["stable_strict"],
                unique=f["unique"],
                novel=f["novel"],
                novel_match=f["novel_match"],
                duplicate_of=f["duplicate_of"],
                sun=f["sun"],
                sun_strict=f["sun_strict"],
                sun_error=f["error"],
            )
        for i in set(idx) - set(usable):
            rows[i].update(stable=False, unique=False, novel=False, sun=False, sun_strict=False)
            rows[i]["sun_error"] = "no relaxed structure"
        thresholds = flags[0]["thresholds"] if flags else sun_rate([])["thresholds"]
        keys = ("stable", "stable_strict", "unique", "novel", "sun", "sun_strict")
        all_flags = [
            {k: rows[i].get(k) for k in keys}
            | {"error": rows[i].get("sun_error"), "thresholds": thresholds}
            for i in idx
        ]
        rates[f"{model} (force field)"] = sun_rate(all_flags)
        dft_idx = [i for i in idx if rows[i].get("dft_e_above_hull_eV") is not None]
        if dft_idx:
            dft_flags = []
            for i in dft_idx:
                e = rows[i]["dft_e_above_hull_eV"]
                stable = e < STABILITY_THRESHOLD_EV
                both = bool(rows[i].get("unique") and rows[i].get("novel"))
                rows[i]["dft_stable"] = stable
                rows[i]["dft_sun"] = stable and both
                dft_flags.append(
                    {
                        "stable": stable,
                        "stable_strict": e <= 1e-6,
                        "unique": rows[i].get("unique"),
                        "novel": rows[i].get("novel"),
                        "sun": stable and both,
                        "sun_strict": e <= 1e-6 and both,
                        "error": None,
                        "thresholds": thresholds,
                    }
                )
            rates[f"{model} (DFT subset)"] = sun_rate(dft_flags)
    return rates


def _plots(rows: list[dict[str, Any]], models: list[str], report_dir: Any) -> dict[str, str]:
    """ΔE histograms and ΔE-versus-RMSD scatters (force field; DFT when there are values)."""
    from analysis.stability_plots import plot_delta_e_histograms, plot_delta_e_vs_rmsd

    report_dir.mkdir(parents=True, exist_ok=True)
    by_model = {m: [r for r in rows if r["model"] == m] for m in models}
    plots: dict[str, str] = {}
    for label, de, rmsd in (
        ("force field", "delta_e_mev_per_atom", "rmsd"),
        ("DFT", "dft_delta_e_mev_per_atom", "dft_rmsd"),
    ):
        per_model = {m: values_of(rs, de) for m, rs in by_model.items()}
        if label == "DFT" and not any(per_model.values()):
            continue
        tag = "ff" if label == "force field" else "dft"
        plots[f"ΔE histogram ({label})"] = str(
            plot_delta_e_histograms(
                per_model,
                report_dir / f"delta_e_{tag}_histogram.png",
                xlabel=f"ΔE = E(generated) − E(relaxed), {label}, meV/atom",
                title=f"ΔE per model ({label})",
            )
        )
        plots[f"ΔE vs RMSD ({label})"] = str(
            plot_delta_e_vs_rmsd(
                {m: pairs_of(rs, de, rmsd) for m, rs in by_model.items()},
                report_dir / f"delta_e_vs_rmsd_{tag}.png",
                title=f"ΔE versus RMSD ({label})",
            )
        )
    return plots
