"""Steps of the ``stability-experiment`` flow that touch checkpoints, samples, splits and the store.

Each step reads or writes through the orchestration layer (trainings, sample directories, the
dataset splits, :func:`flows.relax_stage.relax_samples`, :class:`flows.store.ResultStore`) and
hands structures and relaxation documents to :mod:`analysis` for the science. The flow in
:mod:`flows.experiment` calls them in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger
from pymatgen.core import Structure

from analysis.stability_rows import DATASET_LABEL, dft_fields, structure_row, unbuilt_row
from flows.hashing import structure_hash
from flows.pipeline import sample_structures, train_generator
from flows.relax_stage import (
    QueueGroup,
    flow_run_provenance,
    relax_samples,
    run_relax_queue,
    with_flow_run,
)
from flows.store import Provenance, ResultStore
from flows.tasks import load_sample_items

DEFAULT_DFT_SETTINGS: dict[str, dict[str, Any]] = {
    "espresso": {
        "conv_thr_per_atom": 1e-8,
        "timeout_s": 2400.0,
    },
    "vasp": {},
}
"""pw.x settings merged under ``dft_settings``: SCF threshold 1e-8 Ry per atom instead of 1e-9;
2400 s per pw.x calculation (``timeout_s`` is a machine setting, not in the settings hash).
k-spacing, cutoffs, pressure and dispersion come from the relaxation protocol (the dataset's
converged settings where they exist, :mod:`relax.protocol`) unless ``dft_settings`` names them."""


def dft_relaxer_spec(
    relaxer: str,
    relaxer_settings: dict[str, Any] | None,
    dft: str,
    dft_settings: dict[str, Any] | None,
    path: str = "pre-relaxed",
) -> tuple[str, dict[str, Any]]:
    """Name and settings of the DFT relaxer of the experiment.

    Parameters
    ----------
    relaxer, relaxer_settings
        The force field and its settings (the same as the force-field stage).
    dft, dft_settings
        ``"espresso"`` or ``"vasp"`` and its settings, merged over
        :data:`DEFAULT_DFT_SETTINGS`.
    path
        ``"pre-relaxed"``: the two-stage relaxer (force-field pre-relax, DFT single point of the
        input, DFT relaxation); ``"direct"``: the DFT relaxer alone, from the generated
        structure (its first SCF is the initial energy).

    Returns
    -------
    tuple
        ``("chgnet+espresso", {"chgnet": {...}, "espresso": {...}, "initial_single_point":
        True})`` or ``("espresso", {...})`` for ``relax.get_relaxer``.
    """
    final = {**DEFAULT_DFT_SETTINGS.get(dft, {}), **(dft_settings or {})}
    if path == "direct":
        return dft, final
    return f"{relaxer}+{dft}", {
        relaxer: dict(relaxer_settings or {}),
        dft: final,
        "initial_single_point": True,
    }


@dataclass
class ModelRun:
    """One model's (or the test split's) structures and rows inside the experiment."""

    model: str
    sample_dir: str
    items: list[tuple[str, Structure]]
    provenance: Provenance
    hashes: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    dft_not_started: dict[str, str] = field(default_factory=dict)
    unbuilt: list[dict[str, str]] = field(default_factory=list)
    checkpoint: str | None = None

    @property
    def structures(self) -> dict[str, Structure]:
        """``{structure id: structure as generated}``."""
        return dict(self.items)


def checkpoint_for(
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


def sample_model(
    model: str,
    dataset: str,
    checkpoints: dict[str, str] | None,
    train: dict[str, Any],
    n: int,
    seed: int,
    sample_steps: int | None,
    run: str,
    home: str | None,
    timings: dict[str, float],
) -> ModelRun:
    """Checkpoint (given or trained) and samples of one model.

    ``train`` holds ``config``, ``max_minutes`` and ``overrides`` of a training.
    """
    start = time.perf_counter()
    checkpoint = checkpoint_for(
        model,
        checkpoints,
        dataset,
        train["config"],
        train["max_minutes"],
        train["overrides"],
        home,
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
    return ModelRun(model, sample_dir, items, prov, hashes, unbuilt=errors, checkpoint=checkpoint)


def dataset_floor_run(dataset: str, n: int, seed: int, run: str) -> ModelRun:
    """The dataset's floor: ``n`` random test-split structures (seeded), as a model run.

    Parameters
    ----------
    dataset
        Dataset name (``DFTLOOP_DATA_DIR`` and the data layer's search path apply).
    n
        Structures drawn (all in random order when the split is smaller).
    seed
        Seed of :func:`analysis.dft_subset.random_subset`.
    run
        The experiment's run label (provenance).

    Returns
    -------
    ModelRun
        Model :data:`analysis.stability_rows.DATASET_LABEL`, ids ``test:<material id>``
        (:func:`flows.floor.floor_structures`).
    """
    from flows.floor import floor_provenance, floor_structures

    items = floor_structures(dataset, n, split="test", selection="random", seed=seed)
    config = {"split": "test", "n": n, "seed": seed, "experiment": run}
    hashes = {sid: structure_hash(s) for sid, s in items}
    return ModelRun(DATASET_LABEL, "", items, floor_provenance(dataset, config), hashes)


def split_records(dataset: str) -> Any:
    """The ``records(split)`` function of a dataset, for the hull references.

    See :func:`analysis.hull_references.resolve_reference_structures`.
    """
    from generators.data import load_split

    def records(split: str) -> Any:
        return load_split(dataset, split, progress=False).records

    return records


def force_field_rows(mr: ModelRun, settings_hash: str, home: str | None) -> list[dict[str, Any]]:
    """Rows of one model from the force-field relaxations in the store (analysis rows)."""
    with ResultStore(home=home) as store:
        docs = store.get_relaxations(list(mr.hashes.values()), settings_hash)
    rows = [unbuilt_row(e["id"], e["reason"], model=mr.model) for e in mr.unbuilt]
    for sid, structure in mr.items:
        h = mr.hashes[sid]
        rows.append(
            structure_row(
                sid,
                structure,
                docs.get(h),
                model=mr.model,
                structure_hash=h,
                settings_hash=settings_hash,
            )
        )
    return rows


def add_dft_fields(
    mr: ModelRun, settings_hash: str, home: str | None, path: str = "pre-relaxed"
) -> None:
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
        if sid not in chosen:
            continue
        row["dft_selected"] = True
        row["dft_path"] = path
        row["dft_settings_hash"] = settings_hash
        h = mr.hashes[sid]
        if h in docs:  # stored by an earlier run: reported, whatever this run's budget
            mr.dft_not_started.pop(sid, None)
            row.update(dft_fields(structures[sid], docs[h], path))
        elif sid in mr.dft_not_started:
            row.update(dft_status="not_started", dft_error=mr.dft_not_started[sid])
        else:
            row.update(dft_status="not_relaxed", dft_error=f"{sid}: no DFT result in the store")


def dft_queue(
    runs: dict[str, ModelRun],
    spec: tuple[str, dict[str, Any]],
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
    """DFT-relax each model's chosen structures through one queue of ``dft_workers``.

    The structures the store does not have yet take turns over the models (first of each
    model, then the second, ...), so a run stopped early has DFT results for every model;
    ``dft_workers`` relaxations run at once and the next one starts as soon as any finishes
    (:func:`flows.relax_stage.run_relax_queue`). Each result is in the store as soon as it
    finishes and carries its own model's provenance; a rerun skips it. With ``max_minutes``, no
    relaxation starts after that much wall time; its structure goes to
    ``mr.dft_not_started``. ``timings[model]["dft_s"]`` is the sum of the model's relaxations'
    wall times.
    """
    groups = [
        QueueGroup(
            model,
            [(sid, mr.structures[sid], mr.hashes[sid]) for sid in mr.chosen],
            mr.provenance,
        )
        for model, mr in runs.items()
    ]
    try:
        outcome = run_relax_queue(
            groups,
            spec[0],
            spec[1],
            home=home,
            chunk_size=1,
            cluster=cluster,
            cluster_kwargs=cluster_kwargs,
            retry_failed=retry_failed,
            in_flight=max(1, dft_workers),
            max_seconds=None if max_minutes is None else 60.0 * max_minutes,
        )
    except Exception as exc:  # reported; the rows say "not relaxed"
        get_run_logger().error("DFT: %s: %s", type(exc).__name__, exc)
        for model in runs:
            model_errors[f"{model} DFT"] = f"{type(exc).__name__}: {exc}"
        return
    for model, mr in runs.items():
        summary = outcome.summaries[model]
        stages[f"{model}:{spec[0]}"] = summary.as_dict()
        if outcome.not_started[model]:  # only a budget leaves structures out
            reason = f"not started: the DFT budget of {max_minutes:g} min was used up"
            mr.dft_not_started.update(dict.fromkeys(outcome.not_started[model], reason))
        if summary.n_submitted:
            t = timings.setdefault(model, {})
            t["dft_s"] = t.get("dft_s", 0.0) + outcome.seconds[model]


def relax_references(
    references: list[tuple[str, Structure]],
    stages: list[tuple[str, dict[str, Any]]],
    dataset: str,
    home: str | None,
    cluster: str,
    cluster_kwargs: dict[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """Relax the hull references with each ``(relaxer, settings)``; return their documents.

    Returns
    -------
    dict
        ``{relaxer name: {"settings_hash", "stage", "docs": {ref id: relaxation doc}}}``.
    """
    prov = with_flow_run(
        Provenance(model="reference", dataset=dataset, config={"role": "hull reference"})
    )
    hashes = {rid: structure_hash(s) for rid, s in references}
    out: dict[str, dict[str, Any]] = {}
    for index, (name, settings) in enumerate(stages):
        stage = relax_samples(
            references,
            name,
            settings,
            prov,
            home=home,
            chunk_size=4 if index == 0 else 1,  # the force field batches; DFT one by one
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


def dataset_floor_row(
    dataset: str,
    n: int,
    relaxer: str,
    relaxer_settings: dict[str, Any] | None,
    home: str | None,
    *,
    cluster_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A stability table row of the dataset's own floor (e.g. beside the nightly models).

    ``n`` random test-split structures (seeded) relaxed with the models' relaxer and settings,
    summarised with the same metrics as a model's relax stage
    (:func:`analysis.stability.summarize_stability`).

    Parameters
    ----------
    dataset
        Dataset name.
    n
        Test-split structures (as many as a model's samples, usually).
    relaxer, relaxer_settings
        The models' relaxation stage (same settings, so the same settings hash).
    home
        Project directory.
    cluster_kwargs
        The relaxations' local Dask cluster overrides.
    seed
        Seed of the draw.

    Returns
    -------
    dict
        ``model`` (:data:`analysis.stability_rows.DATASET_LABEL`), ``status``, ``n_samples``,
        ``n_relaxed``, ``settings_hash``, the metric values by name, ``notes`` and ``rows``
        (public per-structure rows).
    """
    from flows.floor import floor_provenance, floor_structures, relax_floor

    items = floor_structures(dataset, n, split="test", selection="random", seed=seed)
    config = {"split": "test", "n": n, "seed": seed}
    floor = relax_floor(
        items,
        relaxer,
        relaxer_settings,
        floor_provenance(dataset, config),
        home=home,
        cluster_kwargs=cluster_kwargs,
    )
    rows = floor["rows"]
    return {
        "model": DATASET_LABEL,
        "status": "ok" if floor["n_relaxed"] else "failed: no test-split structure relaxed",
        "n_samples": floor["n_samples"],
        "n_relaxed": floor["n_relaxed"],
        "settings_hash": floor["settings_hash"],
        **{m["name"]: m["value"] for m in floor["metrics"]},
        "notes": {
            "relax": f"{len(rows)} random {dataset} test-split structures (seed {seed}), the "
            "models' relaxer and settings: the floor of ΔE and RMSD"
        },
        "rows": rows,
    }
