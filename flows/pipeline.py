"""Prefect flows of the pipeline (thin: orchestration only, the work is in the library).

Flows: ``fetch-dataset``, ``train-generator``, ``sample-structures``, ``relax-structures``,
``analyze`` and ``generate-and-relax`` (``nightly-benchmark`` is in :mod:`flows.nightly`).
Every flow takes JSON-friendly parameters so that it can be deployed (``deploy/prefect.yaml``)
and run with ``prefect deployment run <flow>/<deployment> -p key=value``.

The flows that relax take the relaxation protocol (pressure, dispersion, DFT k-spacing and
cutoffs, thresholds: :mod:`relax.protocol`) from the dataset by default, through
:mod:`flows.protocol_settings`; their ``protocol`` parameter overrides any field, e.g.
``-p 'protocol={"pressure_gpa": 0}'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.hashing import dict_hash
from flows.protocol_settings import ProtocolParameter, stage_settings
from flows.relax_stage import (
    StageOptions,
    flow_run_provenance,
    relax_samples,
    run_relax_stage,
)
from flows.store import Provenance, ResultStore, dftloop_home
from flows.tasks import (
    analyze_task,
    describe_relaxer,
    load_sample_items,
    relaxed_inputs,
    sample_structures_task,
    store_samples_task,
    train_generator_task,
)
from flows.timing import library_time

Dft = Literal["none", "espresso", "vasp"]


def default_checkpoint_dir(
    home: str | None,
    model: str,
    dataset: str,
    config_name: str,
    limit: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Return train-generator's run directory.

    ``<home>/checkpoints/<model>/<dataset>/<config>`` for the named configuration as it is (the
    directory ``nightly-benchmark`` looks in); with ``limit`` or ``overrides`` the directory is
    ``<config>-<hash>`` (hash of both), so that a checkpoint trained with other settings is
    never reused in place of another.
    """
    name = config_name
    if limit is not None or overrides:
        name += "-" + dict_hash({"limit": limit, "overrides": overrides or {}})[:12]
    return dftloop_home(home) / "checkpoints" / model / dataset / name


def default_sample_dir(
    home: str | None,
    model: str,
    dataset: str,
    n: int,
    seed: int,
    checkpoint: str | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Return a deterministic sample directory, so that a rerun reuses finished samples.

    The checkpoint (a file or a registered model name) enters through its sha256, so the same
    weights give the same directory whichever way they were named.
    """
    from generators.model_zoo import file_sha256, resolve_checkpoint

    ckpt = file_sha256(resolve_checkpoint(checkpoint)) if checkpoint else None
    spec = {"model": model, "dataset": dataset, "n": n, "seed": seed, "ckpt": ckpt}
    if extra and any(v is not None for v in extra.values()):
        spec["extra"] = extra
    key = dict_hash(spec)
    return dftloop_home(home) / "samples" / f"{model}-{dataset}-{key[:12]}"


@flow(name="fetch-dataset")
def fetch_dataset(
    dataset: str = "perov_5",
    splits: list[str] | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Load (downloading if needed) the splits of a dataset and report rows and errors.

    Parameters
    ----------
    dataset
        Dataset name (``generators.data.DATASETS``).
    splits
        Splits to load (default train, val, test).
    data_dir
        Data directory override.
    limit
        Load only the first rows (a quick check).

    Returns
    -------
    dict
        ``{split: {"records": n, "errors": n, "first_errors": [...]}}`` (a split that cannot be
        loaded has ``"unavailable"`` with the reason; the others go on).
    """
    from prefect.artifacts import create_table_artifact

    from generators.data import load_split  # type: ignore[attr-defined]

    logger = get_run_logger()
    report: dict[str, Any] = {}
    for split in splits or ["train", "val", "test"]:
        try:
            ds = load_split(dataset, split, data_dir=data_dir, limit=limit)
        except Exception as exc:  # one missing split is reported, the others go on
            logger.warning("%s/%s unavailable: %s", dataset, split, exc)
            report[split] = {"unavailable": f"{type(exc).__name__}: {exc}"}
            continue
        report[split] = {
            "records": len(ds.records),
            "errors": len(ds.errors),
            "first_errors": [f"{e.material_id}: {e.reason}" for e in ds.errors[:5]],
        }
    rows = [{"split": s, **{k: str(v) for k, v in r.items()}} for s, r in report.items()]
    create_table_artifact(rows, key=f"dataset-{dataset}".replace("_", "-"))
    return report


@flow(name="train-generator")
def train_generator(
    model: str = "diffcsp",
    dataset: str = "perov_5",
    config_name: str = "cpu-small",
    out_dir: str | None = None,
    home: str | None = None,
    max_minutes: float | None = None,
    limit: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Train a generator (``generators.trainer.train``) and return the checkpoint path.

    The default run directory is ``<home>/checkpoints/<model>/<dataset>/<config>``; a finished
    ``best.pt`` there is reused. ``overrides`` are merged over the configuration (e.g.
    ``{"train": {"max_epochs": 2}}``); ``limit`` uses only the first crystals of each split
    (either gives the run directory a ``-<hash>`` suffix: :func:`default_checkpoint_dir`).
    """
    out = out_dir or str(
        default_checkpoint_dir(home, model, dataset, config_name, limit, overrides)
    )
    return train_generator_task(model, dataset, config_name, out, max_minutes, limit, overrides)


@flow(name="sample-structures")
def sample_structures(
    model: str = "dataset",
    dataset: str = "perov_5",
    n: int = 8,
    checkpoint: str | None = None,
    seed: int = 0,
    out_dir: str | None = None,
    home: str | None = None,
    mode: str | None = None,
    steps: int | None = None,
    split: str = "test",
) -> str:
    """Sample structures, store them as ``sample`` documents and return the sample directory.

    ``model="dataset"`` is the smoke-test pseudo-model (rattled dataset structures,
    :mod:`flows.smoke_model`), not a generator. ``mode`` (``generate``/``csp``) defaults to the
    checkpoint's; ``steps`` to the model's number of sampling steps; ``split`` is the split whose
    first ``n`` structures are the CSP targets (``"train"`` for a memorisation check).
    """
    extra = {"mode": mode, "steps": steps, "split": None if split == "test" else split}
    out = out_dir or str(default_sample_dir(home, model, dataset, n, seed, checkpoint, extra))
    sample_dir = sample_structures_task(
        model,
        n,
        out,
        dataset=dataset,
        checkpoint=checkpoint,
        seed=seed,
        mode=mode,
        steps=steps,
        split=split,
    )
    prov = flow_run_provenance(sample_dir, {"n": n, "seed": seed})
    stored = store_samples_task(sample_dir, prov.__dict__, home)
    get_run_logger().info("%d samples in %s, stored in the result store", stored, sample_dir)
    return sample_dir


@flow(name="relax-structures")
def relax_structures(
    sample_dir: str,
    relaxer: str = "chgnet",
    relaxer_settings: dict[str, Any] | None = None,
    chunk_size: int = 4,
    cluster: str = "local",
    cluster_kwargs: dict[str, Any] | None = None,
    home: str | None = None,
    retry_failed: bool = False,
    protocol: ProtocolParameter = None,
) -> dict[str, Any]:
    """Relax every structure of a sample directory that the store has not relaxed yet.

    The relaxation protocol is the samples' dataset's unless ``protocol`` (or a ``protocol`` in
    ``relaxer_settings``) overrides it (:func:`flows.protocol_settings.protocol_spec`).

    Returns
    -------
    dict
        The :class:`~flows.relax_stage.StageSummary` as a dict.
    """
    items, _ = load_sample_items(sample_dir)
    prov = flow_run_provenance(sample_dir, {})
    [relaxer_settings] = stage_settings(prov.dataset, protocol, relaxer_settings)
    summary = relax_samples(
        items,
        relaxer,
        relaxer_settings,
        prov,
        home=home,
        chunk_size=chunk_size,
        cluster=cluster,
        cluster_kwargs=cluster_kwargs,
        retry_failed=retry_failed,
    )
    return summary.as_dict()


@flow(name="analyze")
def analyze(
    sample_dir: str,
    relaxer: str = "chgnet",
    relaxer_settings: dict[str, Any] | None = None,
    dft: Dft = "none",
    dft_settings: dict[str, Any] | None = None,
    home: str | None = None,
    evaluate_metrics: bool = False,
    eval_limit: int | None = None,
    eval_coverage: bool = True,
    publish: bool = True,
    protocol: ProtocolParameter = None,
) -> dict[str, Any]:
    """Compare samples with their relaxed ground states; publish tables and a histogram.

    Parameters
    ----------
    sample_dir
        The sample directory.
    relaxer, relaxer_settings
        The force-field stage whose relaxations are compared against.
    dft, dft_settings
        The DFT stage, if one ran.
    home
        Project directory.
    evaluate_metrics
        Also compute the paper metrics (``analysis.evaluate.evaluate_samples``; the metric
        names are its keys, e.g. ``validity``, ``cov_recall``, ``<protocol>.match_rate``).
    eval_limit
        Evaluate only the first samples/targets (and ground-truth rows for generation). The
        ground truth of CSP samples is the split they were sampled from (``index.json``).
    eval_coverage
        Compute COV (CrystalNN fingerprints of the ground truth: the slow part).
    publish
        Publish the artifacts on this flow run and write the report files
        (:func:`publish_analysis`); ``generate-and-relax`` passes ``False`` and publishes them
        on its own run, the one the user started.
    protocol
        Relaxation protocol of both stages (default: the samples' dataset's; see
        :func:`generate_and_relax`): it is part of the settings hash the relaxations are
        looked up by.

    Returns
    -------
    dict
        ``metrics`` (list of MetricResult dicts), ``rows`` (per structure), ``store``,
        ``provenance`` and ``artifacts`` (``{}`` when not published).
    """
    from analysis.stability import summarize_stability
    from dftloop_io.samples import read_index

    prov = flow_run_provenance(sample_dir, {})
    relaxer_settings, dft_settings = stage_settings(
        prov.dataset, protocol, relaxer_settings, dft_settings
    )
    info = describe_relaxer(relaxer, relaxer_settings)
    prov.relaxer, prov.relaxer_settings = relaxer, info["settings"]
    dft_hash = None
    if dft != "none":
        dft_hash = describe_relaxer(dft, dft_settings)["settings_hash"]
    rows = analyze_task(sample_dir, info["settings_hash"], home, prov.__dict__, dft_hash)
    with library_time("stability"):
        metrics = [m.to_dict() for m in summarize_stability(rows)]
    if evaluate_metrics:
        try:
            from flows.evaluation import evaluate_samples

            gt_split = read_index(sample_dir).get("split") or "test"
            with library_time("metrics"):
                found = evaluate_samples(
                    sample_dir,
                    str(prov.dataset),
                    gt_split=gt_split,
                    limit=eval_limit,
                    with_coverage=eval_coverage,
                    n_jobs=1,
                    progress=False,
                )
            metrics += [{**m.to_dict(), "name": key} for key, m in found.items()]
        except Exception as exc:  # the stability part stands on its own
            get_run_logger().warning("generation metrics unavailable: %s", exc)
    with ResultStore(home=home) as store:
        store_info = store.describe()
    result = {"metrics": metrics, "rows": rows, "store": store_info, "artifacts": {}}
    result["provenance"] = prov.as_dict()
    if publish:
        result["artifacts"] = publish_analysis(result, relaxer, home)
    return result


def publish_analysis(result: dict[str, Any], relaxer: str, home: str | None) -> dict[str, str]:
    """Publish an analysis on the current flow run: four artifacts and the report files.

    Parameters
    ----------
    result
        What :func:`analyze` returned (``metrics``, ``rows``, ``store``, ``provenance``).
    relaxer
        The force-field relaxer (part of the artifact keys).
    home
        Project directory; the files go to ``<home>/reports/<id of the current flow run>/``.

    Returns
    -------
    dict
        Artifact keys ``<model>-<dataset>-<relaxer>-{metrics,per-structure,delta-e-histogram,
        store}`` (lowercase, ``_`` as ``-``) and the paths of the PNG and the two CSV files
        (:func:`flows.artifacts.publish_run_artifacts`).
    """
    from prefect.runtime import flow_run

    from flows.artifacts import artifact_key, publish_run_artifacts

    prov = result["provenance"]
    prefix = artifact_key(str(prov["model"]), str(prov["dataset"]), relaxer)
    run_id = flow_run.get_id()
    report_dir = dftloop_home(home) / "reports" / (str(run_id) if run_id else "local")
    return publish_run_artifacts(
        prefix, result["metrics"], result["rows"], result["store"], report_dir
    )


@flow(name="generate-and-relax")
def generate_and_relax(
    model: str = "dataset",
    dataset: str = "perov_5",
    n: int = 8,
    checkpoint: str | None = None,
    train_config: str | None = None,
    train_overrides: dict[str, Any] | None = None,
    train_limit: int | None = None,
    train_max_minutes: float | None = None,
    seed: int = 0,
    sample_mode: str | None = None,
    sample_steps: int | None = None,
    sample_split: str = "test",
    relaxer: str = "chgnet",
    relaxer_settings: dict[str, Any] | None = None,
    protocol: ProtocolParameter = None,
    dft: Dft = "none",
    dft_settings: dict[str, Any] | None = None,
    dft_max_structures: int = 2,
    chunk_size: int = 4,
    cluster: str = "local",
    cluster_kwargs: dict[str, Any] | None = None,
    home: str | None = None,
    retry_failed: bool = False,
    evaluate_metrics: bool = False,
    eval_limit: int | None = None,
    eval_coverage: bool = True,
) -> dict[str, Any]:
    """Sample → relax (force field, then optional DFT) → analyse each against its ground state.

    Parameters
    ----------
    model
        Generator name, or ``"dataset"`` (smoke-test pseudo-model, not a generator).
    dataset
        Dataset name.
    n
        Number of samples.
    checkpoint
        Checkpoint of the generator.
    train_config
        Without a checkpoint: train first with this config (e.g. ``"cpu-small"``).
    train_overrides, train_limit
        Configuration overrides and crystals per split of that training.
    train_max_minutes
        Wall-time budget of that training (overrides the configuration's).
    seed
        Sampling seed.
    sample_mode, sample_steps
        Sampling mode (``generate``/``csp``, default the checkpoint's) and number of steps.
    sample_split
        Split whose first ``n`` structures are the CSP targets (``"train"``: memorisation check).
    relaxer, relaxer_settings
        First (force-field) stage, default CHGNet.
    protocol
        Relaxation protocol of both stages (:mod:`relax.protocol`): ``None`` for the
        dataset's (carbon_24: 10 GPa, DFT-D3(BJ), the converged k-spacing and cutoffs; the other
        datasets: 0 GPa, no dispersion), a dataset name, or a dict of fields overriding the
        dataset's defaults (e.g. ``{"pressure_gpa": 0, "kspacing": 0.3}``). A ``protocol`` in
        ``relaxer_settings``/``dft_settings``, or a relaxer keyword of the same name (``fmax``,
        ``kspacing``, ...), wins for that stage. The resolved protocol is part of each stage's
        settings hash.
    dft, dft_settings
        ``"none"``, ``"espresso"`` or ``"vasp"`` and its settings.
    dft_max_structures
        DFT-relax at most this many force-field-relaxed structures (lowest energy first).
    chunk_size
        Structures per relaxation task.
    cluster, cluster_kwargs
        Dask cluster of the relaxation fan-out (``"local"`` or ``"slurm"``).
    home
        Project directory (default ``$DFTLOOP_HOME`` or ``./dftloop-runs``).
    retry_failed
        Relax again structures whose stored relaxation failed.
    evaluate_metrics, eval_limit, eval_coverage
        Also compute the papers' metrics (match rate/RMSE for CSP; validity, COV, Wasserstein
        for generation): see :func:`analyze`.

    Returns
    -------
    dict
        ``checkpoint``, ``sample_dir``, ``stages`` (one summary per relaxation stage),
        ``metrics``, ``rows`` (per structure), ``artifacts``, ``store``, ``provenance``.
    """
    logger = get_run_logger()
    relaxer_settings, dft_settings = stage_settings(
        dataset, protocol, relaxer_settings, dft_settings
    )
    if model not in ("dataset",) and checkpoint is None:
        if train_config is None:
            raise ValueError(f"model {model!r}: give a checkpoint, or train_config to train first")
        checkpoint = train_generator(
            model,
            dataset,
            train_config,
            home=home,
            max_minutes=train_max_minutes,
            limit=train_limit,
            overrides=train_overrides,
        )
    sample_dir = sample_structures(
        model,
        dataset,
        n,
        checkpoint,
        seed,
        home=home,
        mode=sample_mode,
        steps=sample_steps,
        split=sample_split,
    )
    items, errors = load_sample_items(sample_dir)
    if errors:
        logger.warning("%d samples have no structure: %s", len(errors), errors[:3])
    prov = flow_run_provenance(sample_dir, {"n": n, "seed": seed})
    options = StageOptions(
        home=home,
        chunk_size=chunk_size,
        cluster=cluster,
        cluster_kwargs=cluster_kwargs,
        retry_failed=retry_failed,
    )
    stages = [relax_samples(items, relaxer, relaxer_settings, prov, **options)]
    if dft != "none":
        first = stages[0].settings_hash
        dft_items = relaxed_inputs(items, first, home, max_structures=dft_max_structures)
        options["chunk_size"] = 1
        stages.append(run_relax_stage(dft_items, dft, dft_settings, prov, **options))
    result = analyze(
        sample_dir,
        relaxer,
        relaxer_settings,
        dft,
        dft_settings,
        home=home,
        evaluate_metrics=evaluate_metrics,
        eval_limit=eval_limit,
        eval_coverage=eval_coverage,
        publish=False,
    )
    # the artifacts belong to the run the user started, not to its analyze subflow
    artifacts = publish_analysis(result, relaxer, home)
    return {
        "checkpoint": checkpoint,
        "sample_dir": sample_dir,
        "stages": [s.as_dict() for s in stages],
        "metrics": result["metrics"],
        "rows": result["rows"],
        "artifacts": artifacts,
        "store": result["store"],
        "provenance": Provenance(**prov.__dict__).as_dict(),
    }
