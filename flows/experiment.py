"""The ``stability-experiment`` flow: DP-CDVAE's ΔE experiment at the scale of this CPU.

Per model: train (or take a checkpoint) → sample ``n`` structures → relax all with the force
field → relax a subset with DFT (by default random, stratified by cell size; from the
force-field-relaxed structure, or directly from the generated one) → per-structure rows. The
dataset's own floor (random test-split structures, as many as generated per model) goes through
the same relaxers and settings as a row beside the models. Across models: summaries with
bootstrap and t intervals, model differences beside the paper's figure with the smallest
difference the sample could detect, energies above a reference hull computed with the same
methods, S.U.N., structure statistics (space groups, ΔV_rms, carbon bonding), plots, a report
directory and Prefect artifacts.

The flow is a list of steps: orchestration (trainings, samples, splits, relaxations, the store)
in :mod:`flows.experiment_steps`, the science in :mod:`analysis.stability_rows`,
:mod:`analysis.dft_subset`, :mod:`analysis.hull_references`, :mod:`analysis.stability_experiment`,
:mod:`analysis.stability_report` and :mod:`analysis.stability_plots`. Every relaxation goes
through :func:`flows.relax_stage.relax_samples`, so results land in the store as they finish and
a rerun with the same parameters skips every finished structure.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from analysis.dft_subset import DFT_SELECTIONS, select_for_dft
from analysis.stability_rows import DATASET_LABEL, DFT_PATHS
from flows.experiment_scope import describe_checkpoint, dft_subset_record, protocol_record
from flows.experiment_steps import (
    DEFAULT_DFT_SETTINGS,
    ModelRun,
    add_dft_fields,
    dataset_floor_run,
    dft_queue,
    dft_relaxer_spec,
    force_field_rows,
    relax_references,
    sample_model,
    split_records,
)
from flows.protocol_settings import protocol_spec, with_protocol
from flows.relax_stage import relax_samples
from flows.store import dftloop_home
from flows.tasks import describe_relaxer

ExperimentDft = Literal["none", "espresso", "vasp"]
DftPath = Literal["pre-relaxed", "direct"]

DEFAULT_MODELS: tuple[str, ...] = ("cdvae", "dpcdvae")

__all__ = [
    "DEFAULT_DFT_SETTINGS",
    "DEFAULT_MODELS",
    "ModelRun",
    "add_dft_fields",
    "dft_queue",
    "dft_relaxer_spec",
    "stability_experiment",
]


def _run_label(run_name: str | None) -> str:
    if run_name:
        return run_name
    name = flow_run.get_name()
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{name}" if name else stamp


# -- steps -------------------------------------------------------------------------------------


def _sample_models(
    models: list[str],
    params: dict[str, Any],
    timings: dict[str, dict[str, float]],
    model_errors: dict[str, str],
) -> dict[str, ModelRun]:
    """Step 1: checkpoints and samples of every model (and the test-split floor)."""
    runs: dict[str, ModelRun] = {}
    for model in models:
        try:
            runs[model] = sample_model(
                model,
                params["dataset"],
                params["checkpoints"],
                params["train"],
                params["n"],
                params["seed"],
                params["sample_steps"],
                params["run"],
                params["home"],
                timings[model],
            )
        except Exception as exc:  # one model failing leaves the others in the report
            get_run_logger().error("%s: %s: %s", model, type(exc).__name__, exc)
            model_errors[model] = f"{type(exc).__name__}: {exc}"
    if params["n_dataset"]:
        try:
            runs[DATASET_LABEL] = dataset_floor_run(
                params["dataset"], params["n_dataset"], params["seed"], params["run"]
            )
        except Exception as exc:
            get_run_logger().error("dataset floor: %s: %s", type(exc).__name__, exc)
            model_errors[DATASET_LABEL] = f"{type(exc).__name__}: {exc}"
    return runs


def _force_field(
    runs: dict[str, ModelRun],
    ff: tuple[str, dict[str, Any] | None],
    options: dict[str, Any],
    stages: dict[str, dict[str, Any]],
    timings: dict[str, dict[str, float]],
    model_errors: dict[str, str],
) -> None:
    """Step 2: the force field on every structure; the rows from the store."""
    for model, mr in list(runs.items()):
        try:
            start = time.perf_counter()
            stage = relax_samples(mr.items, ff[0], ff[1], mr.provenance, **options)
            timings.setdefault(model, {})["force_field_s"] = time.perf_counter() - start
            stages[f"{model}:{ff[0]}"] = stage.as_dict()
            mr.rows = force_field_rows(mr, stage.settings_hash, options.get("home"))
        except Exception as exc:
            get_run_logger().error("%s: %s: %s", model, type(exc).__name__, exc)
            model_errors[model] = f"{type(exc).__name__}: {exc}"
            del runs[model]


def _reference_hulls(
    dataset: str,
    reference_structures: list[str] | None,
    n_reference: int,
    ref_stages: list[tuple[str, dict[str, Any]]],
    home: str | None,
    cluster: str,
    cluster_kwargs: dict[str, Any] | None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Step 3: relax the hull references with each method; (force-field hull, DFT hull, info).

    A hull that cannot be built is ``None`` and ``info`` says why (the ΔE part stands alone).
    """
    from analysis.hull_references import reference_hull, resolve_reference_structures

    info: dict[str, Any] = {}
    try:
        references, info = resolve_reference_structures(
            dataset, split_records(dataset), reference_structures, n_reference
        )
        relaxed = relax_references(references, ref_stages, dataset, home, cluster, cluster_kwargs)
        ff_hull, info["force_field"] = reference_hull(references, relaxed[ref_stages[0][0]]["docs"])
        dft_hull = None
        if len(ref_stages) > 1:
            dft_hull, info["dft"] = reference_hull(references, relaxed[ref_stages[1][0]]["docs"])
    except Exception as exc:
        get_run_logger().error("reference hull: %s: %s", type(exc).__name__, exc)
        info["error"] = f"{type(exc).__name__}: {exc}"
        return None, None, info
    return ff_hull, dft_hull, info


def _choose_dft_subsets(
    runs: dict[str, ModelRun], k: int, selection: str, seed: int, max_sites: int | None
) -> dict[str, dict[str, int]]:
    """Step 4: the structures of each model (and of the floor) that get DFT.

    Returns ``{model: {"n_candidates", "n_eligible", "n_chosen"}}``
    (:func:`flows.experiment_scope.dft_subset_record`).
    """
    from analysis.stability_experiment import dft_candidates

    subsets = {}
    for model, mr in runs.items():
        candidates = dft_candidates(mr.rows)
        mr.chosen = select_for_dft(candidates, k, selection, seed, max_sites=max_sites)
        subsets[model] = dft_subset_record(candidates, mr.chosen, max_sites)
        get_run_logger().info("%s: DFT for %s", model, ", ".join(mr.chosen))
    return subsets


def _checkpoint_records(
    runs: dict[str, ModelRun], models: list[str], params: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The checkpoint of every sampled model, with its training budget (Limitations)."""
    given = params["checkpoints"] or {}
    out = {}
    for model in models:
        if model not in runs:
            continue
        try:
            out[model] = describe_checkpoint(
                model,
                runs[model].checkpoint,
                params["dataset"],
                bool(given.get(model)),
                params["train"],
            )
        except Exception as exc:  # an unreadable registry leaves the report standing
            get_run_logger().warning("%s: checkpoint not described: %s", model, exc)
            out[model] = {"source": "none", "note": f"not described: {exc}"}
    return out


@task(cache_policy=NO_CACHE, task_run_name="hull-and-sun")
def hull_and_sun_task(
    rows: list[dict[str, Any]],
    models: list[str],
    hulls: tuple[Any, Any],
    dataset: str,
    sun: bool,
    novelty_limit: int | None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Step 6: energies above the hulls, then S.U.N. against the training split.

    Returns the rows with the hull and S.U.N. fields, and the S.U.N. rates.
    """
    from analysis.stability_experiment import attach_hull, sun_by_model
    from analysis.sun import NoveltyReference
    from generators.data import load_split

    attach_hull(rows, *hulls)
    if not sun or not rows:
        return rows, {}
    try:
        train = load_split(dataset, "train", limit=novelty_limit, progress=False)
        ids = [r.material_id for r in train.records]
        return rows, sun_by_model(rows, models, NoveltyReference(train.structures, ids=ids))
    except Exception as exc:
        get_run_logger().error("S.U.N.: %s: %s", type(exc).__name__, exc)
        return rows, {"error": {"n": 0, "error": f"{type(exc).__name__}: {exc}"}}


@task(cache_policy=NO_CACHE, task_run_name="summarise")
def summarise_task(
    rows: list[dict[str, Any]],
    models: list[str],
    seed: int,
    sun_rates: dict[str, Any],
    dft_max_sites: int | None = None,
    dft_selection: str = "stratified",
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], list[str]]:
    """Step 7: summaries, comparisons, structure statistics, tables and power statements."""
    from analysis.stability_experiment import summarise_rows
    from analysis.stability_report import report_tables

    parts = summarise_rows(rows, models, seed, dft_max_sites, dft_selection)
    tables, power = report_tables(parts, sun_rates)
    return parts, tables, power


@task(cache_policy=NO_CACHE, task_run_name="report")
def report_task(
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    tables: dict[str, list[dict[str, Any]]],
    report_dir: str,
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Step 8: plots, ``rows.json``, ``summary.json``, ``report.md`` and the artifacts.

    Returns ``(files, artifact keys, plots)``.
    """
    from pathlib import Path

    from analysis.stability_plots import experiment_plots
    from analysis.stability_report import write_report
    from flows.experiment_report import publish_experiment_artifacts

    plots = experiment_plots(
        rows,
        summary["models_in_report"],
        report_dir,
        reference=DATASET_LABEL,
        quantity=summary.get("energy_quantity"),
    )
    summary = {**summary, "plots": plots}
    files = write_report(Path(report_dir), rows, summary, tables)
    artifacts = publish_experiment_artifacts(
        f"experiment-{summary['dataset']}", tables, rows, plots, Path(report_dir)
    )
    return files, artifacts, plots


# -- the flow ----------------------------------------------------------------------------------


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
    protocol: dict[str, Any] | str | None = None,
    dft: ExperimentDft = "espresso",
    dft_settings: dict[str, Any] | None = None,
    dft_per_model: int = 10,
    dft_selection: Literal["stratified", "random", "smallest", "lowest_energy"] = "stratified",
    dft_path: DftPath = "pre-relaxed",
    dft_max_sites: int | None = None,
    dataset_floor: bool = True,
    n_dataset: int | None = None,
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
        smoke-test pseudo-model (rattled dataset structures; tests only). ``[]``: the dataset
        floor alone (its force-field and DFT rows and the hull references); a later run with
        the models and the same settings reuses every stored relaxation of it.
    dataset
        Dataset of training, novelty, hull references and the floor.
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
        Sampling seed (and the seed of the DFT selection, of the floor's draw and of the
        bootstraps).
    sample_steps
        Sampling steps (default: the model's).
    relaxer, relaxer_settings
        The force field that relaxes every structure (default CHGNet, its defaults).
    protocol
        Relaxation protocol of every relaxer (:mod:`relax.protocol`): ``None`` for the
        dataset's (carbon_24: 10 GPa, D3(BJ), converged k-spacing and cutoffs where measured),
        a dataset name, or a dict of fields overriding the dataset's defaults (e.g.
        ``{"pressure_gpa": 0}``). At ``p ≠ 0`` every energy comparison uses the enthalpy
        ``H = E + pV`` per atom and the columns say ΔH.
    dft
        ``"espresso"`` (pw.x), ``"vasp"`` or ``"none"``.
    dft_settings
        Settings of the DFT relaxer, merged over
        :data:`flows.experiment_steps.DEFAULT_DFT_SETTINGS`.
    dft_per_model
        Structures per model (and of the floor) sent to DFT.
    dft_selection
        ``"stratified"`` (random, stratified by cell size), ``"random"``, ``"smallest"`` or
        ``"lowest_energy"`` (:mod:`analysis.dft_subset`); only structures whose force-field
        relaxation succeeded are candidates.
    dft_path
        ``"pre-relaxed"``: DFT relaxes the force-field-relaxed structure (two-stage relaxer,
        ΔE against a DFT single point of the generated structure); ``"direct"``: DFT relaxes the
        generated structure itself. Every row records its ``dft_path``.
    dft_max_sites
        Leave cells with more atoms out of the DFT selection (``None``: no cap).
    dataset_floor
        Relax random test-split structures with the same relaxers and settings and report them
        as the row ``"test split"`` (:data:`analysis.stability_rows.DATASET_LABEL`).
    n_dataset
        Structures of the floor (default ``n``).
    reference_structures
        Hull references: material ids of the dataset or structure files; default
        :data:`analysis.hull_references.DEFAULT_REFERENCE_IDS`, else the ``n_reference``
        lowest-energy distinct structures. Relaxed with the force field and, when ``dft``
        runs, with the same DFT relaxer.
    n_reference
        See ``reference_structures``.
    sun
        Compute S.U.N. flags (novelty against the training split).
    novelty_limit
        Use only the first training structures for novelty (tests; ``None``: all).
    chunk_size
        Structures per force-field relaxation task.
    workers, dft_workers
        Dask worker processes of the force-field and of the DFT stage (``cluster="local"``).
    dft_max_minutes
        Wall-time budget of the DFT phase: no relaxation starts once it is used up; the chosen
        structures not started are rows with ``dft_status`` ``"not_started"``. A rerun with a
        larger budget continues where this one stopped.
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
        tables), ``tables`` (summary, structure, comparison, sun rows) and ``rows`` (public
        fields).
    """
    from analysis.stability_rows import public_row

    logger = get_run_logger()
    models = list(DEFAULT_MODELS if models is None else models)
    if not models and not dataset_floor:
        raise ValueError("no models and no dataset floor: nothing to run")
    if dft_selection not in DFT_SELECTIONS:
        raise ValueError(f"dft_selection must be one of {DFT_SELECTIONS}, not {dft_selection!r}")
    if dft_path not in DFT_PATHS:
        raise ValueError(f"dft_path must be one of {tuple(DFT_PATHS)}, not {dft_path!r}")
    run = _run_label(run_name)
    report_dir = dftloop_home(home) / "reports" / "experiment" / run
    ff_kwargs = {**(cluster_kwargs or {}), "n_workers": workers}
    dft_kwargs = {**(cluster_kwargs or {}), "n_workers": dft_workers}
    if cluster != "local":
        ff_kwargs = dft_kwargs = dict(cluster_kwargs or {})
    spec = protocol_spec(dataset, protocol)
    relaxer_settings = with_protocol(relaxer_settings, spec)
    dft_settings = with_protocol(dft_settings, spec)
    ff_info = describe_relaxer(relaxer, relaxer_settings)
    dft_spec = dft_relaxer_spec(relaxer, relaxer_settings, dft, dft_settings, dft_path)
    dft_info = describe_relaxer(*dft_spec) if dft != "none" else None
    n_floor = (n if n_dataset is None else n_dataset) if dataset_floor else 0
    meta: dict[str, Any] = {
        "run": run,
        "dataset": dataset,
        "models": models,
        "n": n,
        "seed": seed,
        "relaxer": relaxer,
        "dft": dft,
        "dft_per_model": dft_per_model,
        "dft_selection": dft_selection,
        "dft_path": dft_path,
        "dft_max_sites": dft_max_sites,
        "dft_max_minutes": dft_max_minutes,
        "settings": {
            "relaxer": ff_info,
            "dft_relaxer": dft_info,
            "checkpoints": checkpoints,
            "train_config": train_config,
            "train_max_minutes": train_max_minutes,
            "train_overrides": train_overrides,
            "sample_steps": sample_steps,
            "novelty_limit": novelty_limit,
            "protocol": spec,
        },
    }
    report_models = models + ([DATASET_LABEL] if n_floor else [])
    timings: dict[str, dict[str, float]] = {m: {} for m in report_models}
    stages: dict[str, dict[str, Any]] = {}
    model_errors: dict[str, str] = {}

    # 1. checkpoints and samples of every model; the floor's test-split structures
    params = {
        "dataset": dataset,
        "checkpoints": checkpoints,
        "train": {
            "config": train_config,
            "max_minutes": train_max_minutes,
            "overrides": train_overrides,
        },
        "n": n,
        "seed": seed,
        "sample_steps": sample_steps,
        "run": run,
        "home": home,
        "n_dataset": n_floor,
    }
    runs = _sample_models(models, params, timings, model_errors)
    checkpoint_info = _checkpoint_records(runs, models, params)
    # 2. the force field on every structure
    ff_options = {
        "home": home,
        "chunk_size": chunk_size,
        "cluster": cluster,
        "cluster_kwargs": ff_kwargs,
        "retry_failed": retry_failed,
    }
    _force_field(runs, (relaxer, relaxer_settings), ff_options, stages, timings, model_errors)
    # 3. reference hulls with the same methods (cheap, and every row needs them)
    start = time.perf_counter()
    ref_stages = [(relaxer, relaxer_settings or {})] + ([dft_spec] if dft_info else [])
    ff_hull, dft_hull, reference_info = _reference_hulls(
        dataset, reference_structures, n_reference, ref_stages, home, cluster, dft_kwargs
    )
    timings["reference"] = {"reference_s": time.perf_counter() - start}
    # 4-5. the DFT subsets: one queue, taking turns over the models and the floor
    dft_subsets: dict[str, dict[str, int]] = {}
    if dft_info is not None and dft_per_model > 0:
        dft_subsets = _choose_dft_subsets(runs, dft_per_model, dft_selection, seed, dft_max_sites)
        dft_queue(
            runs,
            dft_spec,
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
            add_dft_fields(mr, dft_info["settings_hash"], home, dft_path)
    rows = [row for mr in runs.values() for row in mr.rows]
    # 6. energies above the hulls and S.U.N.
    start = time.perf_counter()
    rows, sun_rates = hull_and_sun_task(
        rows, report_models, (ff_hull, dft_hull), dataset, sun, novelty_limit
    )
    timings["sun"] = {"sun_s": time.perf_counter() - start}
    # 7. summaries, comparisons, structure statistics, tables
    parts, tables, power = summarise_task(
        rows, report_models, seed, sun_rates, dft_max_sites, dft_selection
    )
    summary = {
        **meta,
        "models_in_report": [m for m in report_models if m in runs],
        "dft_not_started": {m: sorted(mr.dft_not_started) for m, mr in runs.items()},
        "checkpoints": checkpoint_info,
        "dft_subsets": dft_subsets,
        "protocol": protocol_record(spec, ff_info, dft_info),
        "dataset_floor": (
            {"label": DATASET_LABEL, "n": len(runs[DATASET_LABEL].items), "split": "test"}
            if DATASET_LABEL in runs
            else {}
        ),
        **parts,
        "power": power,
        "sun": sun_rates,
        "reference": reference_info,
        "stages": stages,
        "timings_s": timings,
        "model_errors": model_errors,
    }
    # 8. plots, files and artifacts
    files, artifacts, summary["plots"] = report_task(rows, summary, tables, str(report_dir))
    logger.info("report: %s", files["report"])
    return {
        "report_dir": str(report_dir),
        "files": files,
        "artifacts": artifacts,
        "summary": summary,
        "tables": tables,
        "rows": [public_row(r) for r in rows],
    }
