"""The ``nightly-benchmark`` flow: every generator on one dataset at one scale → one table.

For each of the four generators it finds (or, with ``train_missing``, trains) a checkpoint and
runs up to three stages, each of which may fail on its own without taking the others down:

- **match**: CSP (DiffCSP, ContinuouSP: one candidate per test structure) or reconstruction
  (CDVAE, DP-CDVAE) of the first ``n`` test structures → match rate / RMSE with the generator's
  own paper protocol (:data:`analysis.benchmark_table.MATCH_PROTOCOL`);
- **generation**: ``n`` ab initio samples → validity, COV, Wasserstein distances (CDVAE family
  from the same checkpoint, DiffCSP from its ``<scale>-generate`` checkpoint, i.e. DiffCSP-C;
  ContinuouSP is CSP-only);
- **relax**: the generated samples (the CSP ones for a CSP-only model) relaxed with CHGNet →
  ΔE and RMSD to the relaxed structures, and S.U.N. once ``analysis.sun`` exists.

A model that cannot run (module missing, no checkpoint, a failure) stays in the table with the
reason in its ``status`` / ``notes``: nothing is silently dropped. The table (ours beside the
papers' numbers, :mod:`analysis.benchmark_table`) is published as a table artifact and a
markdown artifact, written as JSON under ``<home>/reports/nightly/`` and, with ``write_docs``,
into ``docs/benchmarks.md`` between ``<!-- nightly:<dataset>:<scale>:start/end -->`` markers.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from analysis.benchmark_table import (
    MATCH_PROTOCOL,
    MATCH_TASK,
    render_markdown,
    with_paper,
    write_docs_block,
)
from flows.pipeline import (
    analyze,
    default_checkpoint_dir,
    sample_structures,
    train_generator,
)
from flows.store import dftloop_home

GENERATORS: tuple[str, ...] = ("diffcsp", "cdvae", "dpcdvae", "continuousp")

GENERATION_CONFIG_SUFFIX: dict[str, str] = {"diffcsp": "-generate"}
"""Generators whose ab initio generation needs another configuration (DiffCSP-C): the
generation checkpoint is that of ``<scale><suffix>``. The CDVAE family generates from its one
checkpoint; a model absent from this dict and without ``generate`` support is CSP-only."""

GENERATION_METRIC_KEYS: tuple[str, ...] = (
    "construction_validity",
    "struct_validity",
    "comp_validity",
    "validity",
    "cov_recall",
    "cov_precision",
    "wdist_density",
    "wdist_num_elems",
)
STABILITY_METRIC_KEYS: tuple[str, ...] = (
    "mean_delta_e_mev_per_atom",
    "median_delta_e_mev_per_atom",
    "match_rate_to_relaxed",
    "mean_rmsd_to_relaxed",
    "mean_abs_delta_volume_frac",
)
DEFAULT_DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _find_checkpoint(home: str | None, model: str, dataset: str, scale: str) -> str | None:
    """A checkpoint trained under ``home`` at ``scale``, else a shipped one, else ``None``.

    A shipped checkpoint (``dftloop models list``) is a registered name; for a ``*-generate``
    scale it must be a generation checkpoint, otherwise any task of the model will do.
    """
    from generators.model_zoo import find_card

    run_dir = default_checkpoint_dir(home, model, dataset, scale)
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return str(run_dir / name)
    task = "generate" if scale.endswith("-generate") else None
    if task is None and model == "diffcsp":
        task = "csp"  # DiffCSP's CSP and generation checkpoints are separate models
    card = find_card(model, dataset, task)
    return card.name if card is not None else None


def _model_available(model: str) -> str | None:
    """Return ``None`` if the model's module imports, else the reason."""
    try:
        from generators.registry import model_class

        model_class(model)
    except Exception as exc:
        return f"not available: {type(exc).__name__}: {exc}"
    return None


def _supports(model: str, task_name: str) -> bool:
    from generators.registry import model_class

    return task_name in model_class(model).supports


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@task
def evaluate_task(
    sample_dir: str,
    dataset: str,
    protocols: list[str] | None,
    limit: int | None,
    with_coverage: bool,
) -> dict[str, float | None]:
    """Paper metrics of one sample directory (``analysis.evaluate.evaluate_samples``).

    Returns
    -------
    dict
        ``{metric key: value}`` (CSP keys are ``<protocol>.match_rate`` / ``.rmse``).
    """
    from flows.evaluation import evaluate_samples

    found = evaluate_samples(
        sample_dir,
        dataset,
        limit=limit,
        protocols=protocols,
        with_coverage=with_coverage,
        n_jobs=1,
        progress=False,
    )
    return {key: result.value for key, result in found.items()}


def _checkpoint(
    model: str,
    dataset: str,
    scale: str,
    *,
    given: str | None,
    home: str | None,
    train_missing: bool,
    train_max_minutes: float | None,
) -> str:
    """Return the checkpoint of ``model`` at ``scale`` (given, found or trained) or raise."""
    checkpoint = given or _find_checkpoint(home, model, dataset, scale)
    if checkpoint is None and train_missing:
        checkpoint = train_generator(
            model, dataset, scale, home=home, max_minutes=train_max_minutes
        )
    if checkpoint is None:
        raise LookupError(
            f"no checkpoint in {default_checkpoint_dir(home, model, dataset, scale)} "
            "(run train-generator or pass train_missing=true)"
        )
    return checkpoint


FAILED = "failed"
NOT_RUN = "not run"
"""Starts of a stage note: the stage raised (``failed: ...``), or it was asked for but could
not start (``not run: ...``, e.g. no checkpoint). A stage the parameters switch off is noted
``off (...)`` and does not make the row partial."""


def row_status(notes: dict[str, str]) -> str:
    """The status of a nightly row from its stage notes.

    Parameters
    ----------
    notes
        ``{stage: note}`` of the row.

    Returns
    -------
    str
        ``"ok"`` when every stage that was asked for ran, else ``"partial: <stages> failed;
        <stages> not run"`` (either part alone when the other is empty).
    """
    failed = [stage for stage, note in notes.items() if note.startswith(FAILED)]
    not_run = [stage for stage, note in notes.items() if note.startswith(NOT_RUN)]
    parts = []
    if failed:
        parts.append(f"{', '.join(failed)} failed")
    if not_run:
        parts.append(f"{', '.join(not_run)} not run")
    return "partial: " + "; ".join(parts) if parts else "ok"


def relaxed_set_note(model: str, relax_set: str, generation_note: str | None) -> str | None:
    """Say which samples the ΔE / RMSD of a row come from when they are not generated crystals.

    Parameters
    ----------
    model
        Generator name.
    relax_set
        ``"generated"``, ``"csp"`` or ``"reconstruct"``: the sample set that was relaxed.
    generation_note
        The row's generation note (why there are no generated crystals), if any.

    Returns
    -------
    str or None
        ``None`` for generated crystals, else e.g. ``"ΔE and RMSD are of the CSP samples
        (structures predicted for the test compositions), not of generated crystals
        (generation: continuousp is a CSP-only model ...)"``.
    """
    if relax_set == "generated":
        return None
    what = {
        "csp": "the CSP samples (structures predicted for the test compositions)",
        "reconstruct": "the reconstructed test structures",
    }.get(relax_set, f"the {relax_set} samples")
    why = f"generation: {generation_note}" if generation_note else "no generated crystals"
    return f"ΔE and RMSD are of {what}, not of generated crystals ({why})"


def _steps(sample_steps: int | dict[str, int] | None, model: str) -> int | None:
    if isinstance(sample_steps, dict):
        return sample_steps.get(model)
    return sample_steps


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
    cluster_kwargs: dict[str, Any] | None = None,
    home: str | None = None,
    sample_steps: int | dict[str, int] | None = None,
    protocol: dict[str, Any] | str | None = None,
    eval_limit: int | None = None,
    eval_coverage: bool = True,
    generate: bool = True,
    sun_reference: int = 0,
    write_docs: bool = False,
    docs_path: str | None = None,
    docs_note: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark the generators side by side and publish one comparison table.

    Parameters
    ----------
    dataset
        Dataset name.
    scale
        Configuration name (``"cpu-small"``, ``"paper"``): the checkpoint is looked up in
        ``<home>/checkpoints/<model>/<dataset>/<scale>/`` (DiffCSP's generation checkpoint in
        ``<scale>-generate``).
    n
        Samples per model and stage (test targets for CSP/reconstruction, generated crystals).
    models
        Subset of :data:`GENERATORS`.
    checkpoints
        ``{model: checkpoint path}`` overriding the lookup; ``"diffcsp-generate"`` for DiffCSP's
        generation checkpoint.
    train_missing
        Train a model that has no checkpoint (``train-generator``).
    train_max_minutes
        Wall-time budget per training.
    relax
        Relax the samples (``relax-structures`` stage) and report ΔE/RMSD to the relaxed ones.
    relaxer, relaxer_settings
        The relaxer of that stage.
    protocol
        Its relaxation protocol (:mod:`relax.protocol`): ``None`` for the dataset's (carbon_24:
        10 GPa with DFT-D3(BJ)), a dataset name, or a dict of fields overriding the dataset's.
    cluster_kwargs
        For the relaxations' local Dask cluster (e.g. ``{"processes": false}``: threads of the
        flow process, CHGNet loaded once).
    home
        Project directory.
    sample_steps
        Sampling steps, one number for all or ``{model: steps}`` (default: each model's).
    eval_limit, eval_coverage
        Passed to ``analysis.evaluate.evaluate_samples`` (``limit``: also the number of
        ground-truth test rows for COV and the Wasserstein distances; ``with_coverage``).
    generate
        Run the generation stage.
    sun_reference
        The first ``sun_reference`` training structures, relaxed with the same relaxer, are the
        hull reference of S.U.N. (``analysis.hull``; every element needs an elemental entry);
        novelty is against the whole training split. 0: S.U.N. is not computed and the note
        says so.
    write_docs
        Write the markdown table into ``docs_path`` between the (dataset, scale) markers.
    docs_path
        Markdown file (default ``docs/benchmarks.md`` of this checkout).
    docs_note
        Lines written under the table's heading (command, machine load...).

    Returns
    -------
    list of dict
        One row per model: ``model``, ``status``, ``notes`` (stage → reason), ``checkpoint``,
        ``n_samples``, the metrics, ``seconds``.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from flows.protocol_settings import stage_settings

    logger = get_run_logger()
    [relaxer_settings] = stage_settings(dataset, protocol, relaxer_settings)
    rows: list[dict[str, Any]] = []
    novelty_cache: dict[str, Any] = {}
    for model in models or list(GENERATORS):
        start = time.perf_counter()
        row: dict[str, Any] = {
            "model": model,
            "dataset": dataset,
            "scale": scale,
            "relaxer": relaxer if relax else None,
            "notes": {},
        }
        rows.append(row)
        try:
            reason = _model_available(model)
            if reason:
                row["status"] = reason
                continue
            _benchmark_model(
                row,
                n=n,
                checkpoints=checkpoints or {},
                train_missing=train_missing,
                train_max_minutes=train_max_minutes,
                relax=relax,
                relaxer=relaxer,
                relaxer_settings=relaxer_settings,
                cluster_kwargs=cluster_kwargs,
                home=home,
                steps=_steps(sample_steps, model),
                eval_limit=eval_limit,
                eval_coverage=eval_coverage,
                generate=generate,
                sun_reference=sun_reference,
                novelty_cache=novelty_cache,
            )
            row["status"] = row_status(row["notes"])
        except LookupError as exc:
            row["status"] = str(exc).strip("'\"")
        except Exception as exc:  # one model's failure is a row, the others go on
            logger.error("%s failed: %s", model, exc)
            row["status"] = f"failed: {_error(exc)}"
        finally:
            row["seconds"] = round(time.perf_counter() - start, 1)
    if relax and any(r.get("n_relaxed") for r in rows):  # the dataset's floor beside the models
        rows.append(_floor_row(dataset, scale, n, relaxer, relaxer_settings, cluster_kwargs, home))
    key = f"nightly-{dataset}-{scale}".replace("_", "-").lower()
    create_table_artifact(
        with_paper(rows, dataset),
        key=key,
        description=f"Nightly benchmark: {dataset}, {scale}, n={n} per model and stage "
        "(ours beside the papers' numbers, rates in %)",
    )
    markdown = render_markdown(rows, dataset, scale, preamble=docs_note or ())
    create_markdown_artifact(markdown, key=f"{key}-markdown", description="Nightly table")
    report_dir = dftloop_home(home) / "reports" / "nightly"
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (report_dir / f"{dataset}-{scale}-{stamp}.json").write_text(json.dumps(rows, indent=1))
    (report_dir / f"{dataset}-{scale}-{stamp}.md").write_text(markdown)
    if write_docs:
        path = write_docs_block(docs_path or DEFAULT_DOCS, dataset, scale, markdown)
        logger.info("nightly table written to %s", path)
    return rows


def _floor_row(
    dataset: str,
    scale: str,
    n: int,
    relaxer: str,
    relaxer_settings: dict[str, Any] | None,
    cluster_kwargs: dict[str, Any] | None,
    home: str | None,
) -> dict[str, Any]:
    """The ``test split`` row: ``n`` random test structures, the models' relaxer and settings."""
    from analysis.stability_experiment import energy_quantity
    from flows.experiment_steps import dataset_floor_row

    start = time.perf_counter()
    row: dict[str, Any] = {"model": "test split", "dataset": dataset, "scale": scale}
    try:
        floor = dataset_floor_row(
            dataset, n, relaxer, relaxer_settings, home, cluster_kwargs=cluster_kwargs
        )
        row.update({k: v for k, v in floor.items() if k != "rows"}, relaxer=relaxer)
        row["energy_quantity"] = energy_quantity(floor.get("rows") or [])
    except Exception as exc:  # the models' rows stand without it
        get_run_logger().error("dataset floor failed: %s", exc)
        row.update(status=f"failed: {_error(exc)}", notes={})
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _benchmark_model(
    row: dict[str, Any],
    *,
    n: int,
    checkpoints: dict[str, str],
    train_missing: bool,
    train_max_minutes: float | None,
    relax: bool,
    relaxer: str,
    relaxer_settings: dict[str, Any] | None,
    cluster_kwargs: dict[str, Any] | None,
    home: str | None,
    steps: int | None,
    eval_limit: int | None,
    eval_coverage: bool,
    generate: bool,
    sun_reference: int,
    novelty_cache: dict[str, Any],
) -> None:
    """Fill ``row`` with one generator's stages; a failed stage is a note, the others go on.

    Raises ``LookupError`` when the model has no checkpoint (and may not train one).
    """
    model, dataset, scale = row["model"], row["dataset"], row["scale"]
    notes: dict[str, str] = row["notes"]
    logger = get_run_logger()
    ckpt_args = {
        "home": home,
        "train_missing": train_missing,
        "train_max_minutes": train_max_minutes,
    }
    checkpoint = _checkpoint(model, dataset, scale, given=checkpoints.get(model), **ckpt_args)
    row["checkpoint"] = checkpoint
    match_mode = "reconstruct" if MATCH_TASK[model] == "reconstruction" else "csp"
    row["match_task"] = MATCH_TASK[model]
    relax_dir: str | None = None
    relax_set = ""
    try:
        match_dir = sample_structures(
            model, dataset, n, checkpoint, home=home, mode=match_mode, steps=steps
        )
        relax_dir, relax_set = match_dir, match_mode
        found = evaluate_task(match_dir, dataset, [MATCH_PROTOCOL[model]], eval_limit, False)
        row["match_rate"] = found.get(f"{MATCH_PROTOCOL[model]}.match_rate")
        row["rmse"] = found.get(f"{MATCH_PROTOCOL[model]}.rmse")
        row["n_samples"] = n
    except Exception as exc:  # the other stages go on
        logger.error("%s %s stage failed: %s", model, match_mode, exc)
        notes[match_mode] = f"failed: {_error(exc)}"
    if not generate:
        notes["generation"] = "off (generate=false)"
    elif model in GENERATION_CONFIG_SUFFIX or _supports(model, "generate"):
        try:
            gen_scale = scale + GENERATION_CONFIG_SUFFIX.get(model, "")
            gen_checkpoint = checkpoint
            if gen_scale != scale:
                gen_checkpoint = _checkpoint(
                    model,
                    dataset,
                    gen_scale,
                    given=checkpoints.get(f"{model}-generate"),
                    **ckpt_args,
                )
                row["generation_checkpoint"] = gen_checkpoint
            gen_dir = sample_structures(
                model, dataset, n, gen_checkpoint, home=home, mode="generate", steps=steps
            )
            relax_dir, relax_set = gen_dir, "generated"
            found = evaluate_task(gen_dir, dataset, None, eval_limit, eval_coverage)
            row.update({k: found[k] for k in GENERATION_METRIC_KEYS if k in found})
            row["n_samples"] = n
        except LookupError as exc:  # asked for, but there is no checkpoint to run it with
            notes["generation"] = f"{NOT_RUN}: " + str(exc).strip("'\"")
        except Exception as exc:
            logger.error("%s generation stage failed: %s", model, exc)
            notes["generation"] = f"failed: {_error(exc)}"
    else:
        notes["generation"] = f"{model} is a CSP-only model (no ab initio generation)"
    if not relax:
        notes["relax"] = "off (relax=false)"
        notes["sun_rate"] = "needs the relaxation stage"
        return
    if relax_dir is None:
        notes["relax"] = f"{NOT_RUN}: no samples to relax"
        return
    row["relaxed_samples"] = relax_set
    try:
        _relax_and_analyze(row, relax_dir, (relaxer, relaxer_settings, cluster_kwargs), home, n)
    except Exception as exc:
        logger.error("%s relax stage failed: %s", model, exc)
        notes["relax"] = f"failed: {_error(exc)}"
        return
    source = relaxed_set_note(model, relax_set, notes.get("generation"))
    if source:
        notes["relax"] = "; ".join(t for t in (source, notes.get("relax")) if t)
    try:
        _sun_stage(
            row,
            relax_dir,
            (relaxer, relaxer_settings, cluster_kwargs),
            home,
            sun_reference,
            novelty_cache,
        )
    except Exception as exc:
        logger.error("%s S.U.N. failed: %s", model, exc)
        notes["sun_rate"] = f"failed: {_error(exc)}"


RelaxSpec = tuple[str, dict[str, Any] | None, dict[str, Any] | None]
"""``(relaxer, relaxer_settings, cluster_kwargs)``."""


def _relax_and_analyze(
    row: dict[str, Any], sample_dir: str, relax_spec: RelaxSpec, home: str | None, n: int
) -> None:
    """Relax one sample directory (skipping what the store has) and add ΔE / RMSD to ``row``."""
    relaxer, relaxer_settings, cluster_kwargs = relax_spec
    from flows.relax_stage import flow_run_provenance, relax_samples
    from flows.tasks import load_sample_items

    items, errors = load_sample_items(sample_dir)
    row["n_unbuilt"] = len(errors)
    prov = flow_run_provenance(sample_dir, {"n": n, "scale": row["scale"]})
    relax_samples(items, relaxer, relaxer_settings, prov, home=home, cluster_kwargs=cluster_kwargs)
    result = analyze(sample_dir, relaxer, relaxer_settings, home=home, evaluate_metrics=False)
    add_relax_outcome(row, result)


RELAXED_STATUSES: frozenset[str] = frozenset({"ok", "not_converged"})
"""Statuses of an analysis row whose sample was compared with its relaxed structure."""

NOT_RELAXED_LABELS: dict[str, str] = {
    "invalid_input": "rejected as invalid input",
    "failed": "failed",
    "unavailable": "not run (relaxer unavailable)",
    "interrupted": "interrupted (the DFT code was stopped; a rerun relaxes it again)",
    "not_relaxed": "not in the store (crashed chunk; a rerun tries again)",
    "no_structure": "could not be built from the sample",
    "analysis_failed": "relaxed, but the comparison with the sample failed",
}
"""How the relax note names each analysis status (``flows.tasks.analyze_task`` rows) that has
no ΔE / RMSD."""

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_REASON_CHARS = 160


def _compared(row: dict[str, Any]) -> bool:
    """Whether an analysis row's sample was compared with its relaxed structure."""
    return row.get("status") in RELAXED_STATUSES and not row.get("error")


def _reason(row: dict[str, Any]) -> str:
    """The row's error without the sample id and status prefixes the relaxers put in front."""
    text = str(row.get("error") or "no reason recorded")
    for prefix in (f"{row.get('structure_id')}: ", "invalid input: "):
        text = text.removeprefix(prefix)
    return text


def summarize_reasons(reasons: list[str]) -> str:
    """Group messages that differ only in their numbers; give each group's numbers as ranges.

    Parameters
    ----------
    reasons
        Error messages, e.g. ``"atoms overlap: closest distance 0.012 Å is below ..."``.

    Returns
    -------
    str
        ``"atoms overlap: closest distance 0.012–0.040 Å is below ..."`` for one kind of
        message, ``"5× <kind>; 3× <kind>"`` (most frequent first) for several; each kind cut
        at 160 characters.
    """
    kinds: dict[str, list[list[str]]] = {}
    for reason in reasons:
        kinds.setdefault(_NUMBER.sub("\0", reason), []).append(_NUMBER.findall(reason))
    parts = []
    for template, numbers in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        pieces = template.split("\0")
        text = pieces[0]
        for i, piece in enumerate(pieces[1:]):
            column = [found[i] for found in numbers]
            low, high = min(column, key=float), max(column, key=float)
            text += (low if float(low) == float(high) else f"{low}–{high}") + piece
        if len(text) > _REASON_CHARS:
            text = text[: _REASON_CHARS - 1] + "…"
        parts.append(text if len(kinds) == 1 else f"{len(numbers)}× {text}")
    return "; ".join(parts)


def relax_outcome_note(rows: list[dict[str, Any]]) -> str | None:
    """Say how many samples have no ΔE / RMSD and why, with the counts by failure reason.

    Parameters
    ----------
    rows
        Per-sample rows of the analysis (``flows.pipeline.analyze`` ``rows``: ``status``,
        ``error``, ``structure_id``).

    Returns
    -------
    str or None
        ``None`` if every sample was compared with its relaxed structure, else e.g.
        ``"0 of 8 relaxed; 8 rejected as invalid input (atoms overlap: closest distance
        0.010–0.040 Å is below the threshold 0.500 Å)"``, or ``"6 of 8 relaxed; 2 failed
        (...)"`` when the ΔE / RMSD figures cover only part of the samples.
    """
    missing = [r for r in rows if not _compared(r)]
    if not missing:
        return None
    by_status: dict[str, list[str]] = {}
    for r in missing:
        by_status.setdefault(str(r.get("status")), []).append(_reason(r))
    parts = [f"{len(rows) - len(missing)} of {len(rows)} relaxed"]
    for status, reasons in sorted(by_status.items(), key=lambda kv: -len(kv[1])):
        label = NOT_RELAXED_LABELS.get(status, f"status {status}")
        parts.append(f"{len(reasons)} {label} ({summarize_reasons(reasons)})")
    return "; ".join(parts)


def add_relax_outcome(row: dict[str, Any], analysis: dict[str, Any]) -> None:
    """Add the relax stage's figures to a nightly row from its analysis.

    Parameters
    ----------
    row
        The model's row; gets the :data:`STABILITY_METRIC_KEYS` there are, ``energy_quantity``
        (``"H"`` when the relaxations ran at ``p ≠ 0``: the ΔE figures are then ΔH, else
        ``"E"``), ``settings_hash`` (the relaxer settings the relaxations were looked up by,
        as the ``test split`` row's), ``n_relaxed`` (samples compared with a relaxed structure)
        and, when that is not every sample, ``notes["relax"]`` from :func:`relax_outcome_note`.
    analysis
        What ``flows.pipeline.analyze`` returned (``metrics``, ``rows``).
    """
    from analysis.stability_experiment import energy_quantity

    metrics = {m["name"]: m.get("value") for m in analysis["metrics"]}
    row.update({k: metrics[k] for k in STABILITY_METRIC_KEYS if k in metrics})
    rows = analysis["rows"]
    row["energy_quantity"] = energy_quantity(rows)
    hashes = {r["settings_hash"] for r in rows if r.get("settings_hash")}
    if len(hashes) == 1:
        [row["settings_hash"]] = hashes
    row["n_relaxed"] = sum(1 for r in rows if _compared(r))
    note = relax_outcome_note(rows)
    if note:
        row["notes"]["relax"] = note


def _sun_stage(
    row: dict[str, Any],
    sample_dir: str,
    relax_spec: RelaxSpec,
    home: str | None,
    sun_reference: int,
    novelty_cache: dict[str, Any],
) -> None:
    """S.U.N. rate of the relaxed samples (``analysis.sun``), or a note saying why not.

    The hull reference is the first ``sun_reference`` training structures relaxed with the same
    relaxer (``analysis.hull``: every element needs an elemental entry, so a dataset without
    elemental structures gives no hull and the note says which element is missing). Hull and
    samples are compared as the stability experiment compares them
    (:func:`analysis.hull_references.reference_hull`,
    :func:`analysis.stability_rows.hull_energies`): by energy per atom at zero pressure, by
    enthalpy ``H = E + pV`` per atom where the relaxations ran at ``p ≠ 0`` (carbon_24: 10 GPa),
    so ``E_hull`` is then ``H_hull``. Novelty is against the whole training split (one
    ``NoveltyReference`` per dataset and flow run, kept in ``novelty_cache``).

    ``row`` gets ``sun_rate``, ``sun`` (the counts), ``sun_definition``, ``sun_energy_quantity``
    (``"E"`` or ``"H"``) and ``sun_above_hull_eV`` (``{sample id: E_hull or H_hull}``, eV/atom,
    ``None`` where there is none).
    """
    relaxer, relaxer_settings, cluster_kwargs = relax_spec
    try:
        from analysis.hull_references import reference_hull
        from analysis.sun import NoveltyReference, sun_flags, sun_rate
    except ImportError as exc:
        row["notes"]["sun_rate"] = f"analysis.sun / analysis.hull not available ({exc})"
        return
    if sun_reference <= 0:
        row["notes"]["sun_rate"] = (
            f"not computed (sun_reference=0: no training structures relaxed with {relaxer} "
            "as the hull reference)"
        )
        return
    from pymatgen.core import Structure

    from analysis.enthalpy import pressure_gpa, quantity_symbol
    from analysis.stability_rows import hull_energies, usable, usable_energy
    from flows.hashing import structure_hash
    from flows.relax_stage import relax_samples
    from flows.store import Provenance, ResultStore
    from flows.tasks import describe_relaxer, load_sample_items
    from generators.data import load_split

    dataset = row["dataset"]
    refs = load_split(dataset, "train", limit=sun_reference, progress=False).records
    relax_samples(
        [(r.material_id, r.structure) for r in refs],
        relaxer,
        relaxer_settings,
        Provenance(model="dataset", dataset=dataset, config={"split": "train", "role": "hull"}),
        home=home,
        cluster_kwargs=cluster_kwargs,
    )
    settings_hash = describe_relaxer(relaxer, relaxer_settings)["settings_hash"]
    ref_hashes = {r.material_id: structure_hash(r.structure) for r in refs}
    items, _ = load_sample_items(sample_dir)
    with ResultStore(home=home) as store:
        found = store.get_relaxations(list(ref_hashes.values()), settings_hash)
        docs = store.get_relaxations([structure_hash(s) for _, s in items], settings_hash)
    ref_docs = {mid: found.get(h) for mid, h in ref_hashes.items()}
    hull, hull_info = reference_hull([(r.material_id, r.structure) for r in refs], ref_docs)
    n_ref = sum(1 for e in hull_info["entries"].values() if e["energy_per_atom_eV"] is not None)
    if hull is None:
        row["notes"]["sun_rate"] = (
            f"no reference hull from {n_ref} relaxed training structures: {hull_info['error']}"
        )
        return
    ids, relaxed, energies, used = [], [], [], []
    for sid, structure in items:
        doc = docs.get(structure_hash(structure))
        if not usable(doc):
            continue
        ids.append(sid)
        relaxed.append(Structure.from_dict(doc["final_structure"]))
        energies.append(usable_energy(doc, structure))
        used.append(doc)
    e_hull, reasons = hull_energies(relaxed, energies, hull)
    no_energy = sum(1 for reason in reasons if reason == "no relaxed energy")
    outside = sum(1 for reason in reasons if reason is not None) - no_energy
    p_gpa = max((pressure_gpa(d) for d in [*used, *ref_docs.values()] if d), key=abs, default=0.0)
    q = quantity_symbol(p_gpa)
    if dataset not in novelty_cache:
        train = load_split(dataset, "train", progress=False).records
        novelty_cache[dataset] = NoveltyReference(
            [r.structure for r in train], ids=[r.material_id for r in train]
        )
    reference = novelty_cache[dataset]
    summary = sun_rate(sun_flags(relaxed, e_hull, reference, ids=ids))
    row["sun_rate"] = summary["rate"]
    row["sun"] = {k: v for k, v in summary.items() if k != "thresholds"}
    row["sun_energy_quantity"] = q
    row["sun_above_hull_eV"] = dict(zip(ids, e_hull, strict=True))
    enthalpy = f" (enthalpy H = E + pV per atom at {p_gpa:g} GPa)" if q == "H" else ""
    row["sun_definition"] = (
        f"MatterGen S.U.N. over {summary['n']} relaxed samples: stable {q}_hull < "
        f"{summary['thresholds'].get('stability_threshold_eV')} eV/atom{enthalpy} against "
        f"{n_ref} {dataset} training structures relaxed with {relaxer} ({outside} outside its "
        f"chemical system, {no_energy} without a relaxed energy: not stable); unique in the "
        "batch; novel against "
        f"{reference.n_structures} training structures (StructureMatcher defaults)"
    )
    row["notes"]["sun_rate"] = row["sun_definition"]
