"""The ``nightly-benchmark`` flow: every generator on one dataset at one scale → one table.

For each of the four generators it finds (or, with ``train_missing``, trains) a checkpoint,
samples, computes the generation metrics and, optionally, relaxes the samples with CHGNet and
summarises ΔE / RMSD to the relaxed structures. A model that cannot run (module missing, no
checkpoint, a failure) stays in the table with the reason in its ``status`` column: nothing is
silently dropped.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import (
    analyze,
    default_checkpoint_dir,
    sample_structures,
    train_generator,
)
from flows.store import dftloop_home

GENERATORS: tuple[str, ...] = ("diffcsp", "cdvae", "dpcdvae", "continuousp")

TABLE_METRICS: tuple[str, ...] = (
    "match_rate",
    "rmse",
    "struct_validity",
    "comp_validity",
    "validity",
    "cov_recall",
    "cov_precision",
    "wdist_density",
    "wdist_num_elems",
    "mean_delta_e_mev_per_atom",
    "match_rate_to_relaxed",
    "mean_rmsd_to_relaxed",
)
"""Metric names shown as table columns when present (others are kept in the JSON report)."""


def _find_checkpoint(home: str | None, model: str, dataset: str, scale: str) -> str | None:
    run_dir = default_checkpoint_dir(home, model, dataset, scale)
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return str(run_dir / name)
    return None


def _model_available(model: str) -> str | None:
    """Return ``None`` if the model's module imports, else the reason."""
    try:
        from generators.registry import model_class

        model_class(model)
    except Exception as exc:
        return f"not available: {type(exc).__name__}: {exc}"
    return None


@flow(name="nightly-benchmark")
def nightly_benchmark(
    dataset: str = "perov_5",
    scale: str = "cpu-small",
    n: int = 16,
    models: list[str] | None = None,
    checkpoints: dict[str, str] | None = None,
    train_missing: bool = False,
    train_max_minutes: float | None = None,
    relax: bool = True,
    relaxer: str = "chgnet",
    relaxer_settings: dict[str, Any] | None = None,
    home: str | None = None,
    sample_steps: int | None = None,
    eval_limit: int | None = None,
    eval_coverage: bool = True,
) -> list[dict[str, Any]]:
    """Benchmark the generators side by side and publish one comparison table.

    Parameters
    ----------
    dataset
        Dataset name.
    scale
        Configuration name (``"cpu-small"``, ``"paper"``): the checkpoint is looked up in
        ``<home>/checkpoints/<model>/<dataset>/<scale>/``.
    n
        Samples per model.
    models
        Subset of :data:`GENERATORS`.
    checkpoints
        ``{model: checkpoint path}`` overriding the lookup.
    train_missing
        Train a model that has no checkpoint (``train-generator``).
    train_max_minutes
        Wall-time budget per training.
    relax
        Relax the samples (``relax-structures`` stage) and report ΔE/RMSD to the relaxed ones.
    relaxer, relaxer_settings
        The relaxer of that stage.
    home
        Project directory.
    sample_steps
        Sampling steps (default: each model's).
    eval_limit, eval_coverage
        Passed to ``analysis.evaluate.evaluate_samples`` (``limit``, ``with_coverage``).

    Returns
    -------
    list of dict
        One row per model: ``model``, ``status``, ``checkpoint``, ``n_samples``, the metrics
        and ``seconds``.
    """
    from prefect.artifacts import create_table_artifact

    from flows.hashing import structure_hash
    from flows.relax_stage import run_relax_stage, samples_provenance
    from flows.tasks import load_sample_items

    logger = get_run_logger()
    rows: list[dict[str, Any]] = []
    for model in models or list(GENERATORS):
        start = time.perf_counter()
        row: dict[str, Any] = {"model": model, "dataset": dataset, "scale": scale}
        rows.append(row)
        reason = _model_available(model)
        if reason:
            row["status"] = reason
            continue
        checkpoint = (checkpoints or {}).get(model) or _find_checkpoint(home, model, dataset, scale)
        try:
            if checkpoint is None and train_missing:
                checkpoint = train_generator(
                    model, dataset, scale, home=home, max_minutes=train_max_minutes
                )
            if checkpoint is None:
                row["status"] = (
                    f"no checkpoint in {default_checkpoint_dir(home, model, dataset, scale)} "
                    "(run train-generator or pass train_missing=true)"
                )
                continue
            row["checkpoint"] = checkpoint
            sample_dir = sample_structures(
                model, dataset, n, checkpoint, home=home, steps=sample_steps
            )
            items, errors = load_sample_items(sample_dir)
            row["n_samples"], row["n_unbuilt"] = len(items) + len(errors), len(errors)
            if relax:
                prov = samples_provenance(sample_dir, {"n": n, "scale": scale})
                stage = run_relax_stage(
                    [(sid, s, structure_hash(s)) for sid, s in items],
                    relaxer,
                    relaxer_settings,
                    prov,
                    home=home,
                )
                row["n_relaxed"] = stage.n_ok + stage.n_skipped
            result = analyze(
                sample_dir,
                relaxer,
                relaxer_settings,
                home=home,
                evaluate_metrics=True,
                eval_limit=eval_limit,
                eval_coverage=eval_coverage,
            )
            for metric in result["metrics"]:
                row[metric["name"]] = metric.get("value")
                if metric["name"].endswith(".match_rate") and "match_rate" not in row:
                    row["match_rate"] = metric.get("value")
                if metric["name"].endswith(".rmse") and "rmse" not in row:
                    row["rmse"] = metric.get("value")
            row["status"] = "ok"
        except Exception as exc:  # one model's failure is a row, the others go on
            logger.error("%s failed: %s", model, exc)
            row["status"] = f"failed: {type(exc).__name__}: {exc}"
        finally:
            row["seconds"] = round(time.perf_counter() - start, 1)
    columns = ["model", "status", "n_samples", *TABLE_METRICS, "seconds"]
    table = [
        {c: (round(v, 4) if isinstance(v := r.get(c), float) else v) for c in columns} for r in rows
    ]
    create_table_artifact(
        table,
        key=f"nightly-{dataset}-{scale}".replace("_", "-").lower(),
        description=f"Nightly benchmark: {dataset}, {scale}, n={n} per model",
    )
    report_dir = dftloop_home(home) / "reports" / "nightly"
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (report_dir / f"{dataset}-{scale}-{stamp}.json").write_text(json.dumps(rows, indent=1))
    return rows
