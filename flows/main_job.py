"""The main job: a shipped generator predicts held-out crystals, through ``generate-and-relax``.

``bash deploy/run-main.sh`` (or ``python -m flows.main_job`` in the venv) takes the shipped
DiffCSP perov_5 checkpoint (``dftloop models show diffcsp-perov5-csp``; no training),
CSP-samples the compositions of the first ``DFTLOOP_MAIN_N`` perov_5 *test* crystals (which
the model never saw), relaxes every sample with CHGNet and prints:

* the papers' CSP metrics against the true structures (match rate and RMSE, DiffCSP protocol);
* ΔE and RMSD of each sample to its relaxed structure (ΔH, enthalpy per atom, at p ≠ 0);
* the dataset's own row: the true structures of the same targets relaxed by the same relaxer
  with the same settings and protocol (:func:`flows.floor.dataset_floor` with the targets'
  material ids, rows by :func:`analysis.stability.dataset_floor_rows`), the floor the model's
  ΔE is read against.

Everything runs through the Prefect flows the deployments use (ephemeral Prefect API, embedded
MontyStore under ``$DFTLOOP_HOME``), so a rerun reuses the samples and the stored relaxations.

Options are environment variables (defaults in :data:`DEFAULTS`):

``DFTLOOP_HOME``                project directory (``./dftloop-runs``)
``DFTLOOP_MAIN_MODEL``          generator of the checkpoint or of the training (``diffcsp``)
``DFTLOOP_MAIN_DATASET``        dataset (``perov_5``)
``DFTLOOP_MAIN_CHECKPOINT``     checkpoint file or registered name (``diffcsp-perov5-csp``)
``DFTLOOP_MAIN_N``              CSP targets: the first N structures of the split (32)
``DFTLOOP_MAIN_SPLIT``          split of the CSP targets (``test``; ``train`` when training)
``DFTLOOP_MAIN_STEPS``          sampling steps (1000)
``DFTLOOP_MAIN_FMAX``           CHGNet force criterion in eV/Å (0.05)
``DFTLOOP_MAIN_MAX_STEPS``      CHGNet maximum ionic steps (500)
``DFTLOOP_MAIN_PROTOCOL``       relaxation protocol fields over the dataset's, ``key=value``
                                separated by spaces (e.g. ``pressure_gpa=0 dispersion=none``;
                                empty: the dataset's protocol, :mod:`relax.protocol`)
``DFTLOOP_MAIN_FLOOR``          ``1``: also relax the targets' true structures (the floor); ``0``
``DFTLOOP_MAIN_DFT``            ``none`` or ``espresso`` (two lowest-energy structures with pw.x)
``DFTLOOP_MAIN_TRAIN``          ``1``: train instead of using the checkpoint (a memorisation check:
                                ``cpu-small`` on the first ``_TRAIN_CRYSTALS`` training crystals)
``DFTLOOP_MAIN_CONFIG``         training configuration (``cpu-small``)
``DFTLOOP_MAIN_TRAIN_CRYSTALS`` training crystals, first rows of the train split (16)
``DFTLOOP_MAIN_TRAIN_EPOCHS``   training epochs, one Adam step each (8000)
``DFTLOOP_MAIN_TRAIN_MINUTES``  training wall-time cap in minutes (12)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, str] = {
    "DFTLOOP_MAIN_MODEL": "diffcsp",
    "DFTLOOP_MAIN_DATASET": "perov_5",
    "DFTLOOP_MAIN_CONFIG": "cpu-small",
    "DFTLOOP_MAIN_CHECKPOINT": "diffcsp-perov5-csp",
    "DFTLOOP_MAIN_TRAIN": "0",
    "DFTLOOP_MAIN_FLOOR": "1",
    "DFTLOOP_MAIN_TRAIN_CRYSTALS": "16",
    "DFTLOOP_MAIN_TRAIN_EPOCHS": "8000",
    "DFTLOOP_MAIN_TRAIN_MINUTES": "12",
    "DFTLOOP_MAIN_N": "32",
    "DFTLOOP_MAIN_SPLIT": "test",
    "DFTLOOP_MAIN_STEPS": "1000",
    "DFTLOOP_MAIN_FMAX": "0.05",
    "DFTLOOP_MAIN_MAX_STEPS": "500",
    "DFTLOOP_MAIN_DFT": "none",
    "DFTLOOP_MAIN_PROTOCOL": "",
}
"""Default of every option (environment variable -> value)."""

REPORT_METRICS = (
    "match_rate",
    "rmse",
    "validity",
    "struct_validity",
    "comp_validity",
    "mean_delta_e_mev_per_atom",
    "median_delta_e_mev_per_atom",
    "match_rate_to_relaxed",
    "mean_rmsd_to_relaxed",
    "mean_abs_delta_volume_frac",
)
"""Metric name suffixes printed in the report (all metrics are in the tables and the store)."""


def flag(name: str, env: dict[str, str] | None = None) -> bool:
    """Return the 0/1 option ``name`` as a bool.

    Raises
    ------
    ValueError
        Naming the variable, for anything but ``0``, ``1`` or unset/empty (the default).
    """
    env = dict(os.environ if env is None else env)
    value = env.get(name) or DEFAULTS[name]
    if value not in ("0", "1"):
        raise ValueError(f"{name}={value!r}: expected 0 or 1")
    return value == "1"


def main_job_parameters(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Return the ``generate-and-relax`` parameters of the main job from the environment.

    Parameters
    ----------
    env
        The environment (default ``os.environ``); unset or empty options take
        :data:`DEFAULTS`.

    Returns
    -------
    dict
        Keyword arguments of :func:`flows.pipeline.generate_and_relax`.

    Raises
    ------
    ValueError
        An option that should be a number is not, ``DFTLOOP_MAIN_DFT`` is unknown or
        ``DFTLOOP_MAIN_PROTOCOL`` names an unknown field or value (the message names the
        variable).
    """
    env = dict(os.environ if env is None else env)

    def get(name: str) -> str:
        return env.get(name) or DEFAULTS[name]

    def number(name: str, kind: type) -> Any:
        try:
            value = kind(get(name))
        except ValueError:
            raise ValueError(f"{name}={get(name)!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise ValueError(f"{name}={get(name)!r} must be positive")
        return value

    dft = get("DFTLOOP_MAIN_DFT")
    if dft not in ("none", "espresso"):
        raise ValueError(f"DFTLOOP_MAIN_DFT={dft!r}: expected 'none' or 'espresso'")
    protocol = main_protocol(get("DFTLOOP_MAIN_PROTOCOL"), get("DFTLOOP_MAIN_DATASET"))
    epochs = number("DFTLOOP_MAIN_TRAIN_EPOCHS", int)
    training = flag("DFTLOOP_MAIN_TRAIN", env)
    flag("DFTLOOP_MAIN_FLOOR", env)  # checked here, used by main()
    checkpoint = None if training else get("DFTLOOP_MAIN_CHECKPOINT")
    split = env.get("DFTLOOP_MAIN_SPLIT") or ("train" if training else get("DFTLOOP_MAIN_SPLIT"))
    params: dict[str, Any] = {
        "model": get("DFTLOOP_MAIN_MODEL"),
        "dataset": get("DFTLOOP_MAIN_DATASET"),
        "n": number("DFTLOOP_MAIN_N", int),
        "checkpoint": checkpoint,
        "sample_steps": number("DFTLOOP_MAIN_STEPS", int),
        "sample_split": split,
        "relaxer": "chgnet",
        "relaxer_settings": {
            "fmax": number("DFTLOOP_MAIN_FMAX", float),
            "max_steps": number("DFTLOOP_MAIN_MAX_STEPS", int),
        },
        "protocol": protocol,
        "dft": dft,
        "home": env.get("DFTLOOP_HOME") or None,
        "evaluate_metrics": True,
        "eval_coverage": False,
    }
    crystals = number("DFTLOOP_MAIN_TRAIN_CRYSTALS", int)  # checked even when not training
    minutes = number("DFTLOOP_MAIN_TRAIN_MINUTES", float)
    if checkpoint is None:
        params.update(
            train_config=get("DFTLOOP_MAIN_CONFIG"),
            train_limit=crystals,
            train_max_minutes=minutes,
            # full-batch steps without a learning-rate schedule (as the memorisation tests);
            # validation only at the end, so the checkpoint used is the last one
            train_overrides={
                "train": {
                    "batch_size": crystals,
                    "max_epochs": epochs,
                    "val_every": epochs,
                    "checkpoint_every": epochs,
                    "scheduler": {"name": "none"},
                }
            },
        )
    return params


def main_protocol(text: str, dataset: str) -> dict[str, Any] | None:
    """Return the ``protocol`` parameter of the main job from ``DFTLOOP_MAIN_PROTOCOL``.

    Parameters
    ----------
    text
        ``key=value`` fields separated by spaces (empty: ``None``, the dataset's protocol).
    dataset
        The run's dataset, whose protocol the fields override.

    Raises
    ------
    ValueError
        An unknown field or value, naming the variable.
    """
    from flows.protocol_settings import check_protocol, protocol_spec
    from relax.protocol import parse_assignments

    if not text.strip():
        return None
    try:
        fields = parse_assignments(text.split())
        check_protocol(protocol_spec(dataset, fields))
    except ValueError as exc:
        raise ValueError(f"DFTLOOP_MAIN_PROTOCOL={text!r}: {exc}") from None
    return fields


def csp_targets(sample_dir: str) -> list[str] | None:
    """Return the material ids the samples of ``sample_dir`` were sampled for, in order.

    ``None`` when a sample has no target (generation).
    """
    from dftloop_io.samples import load_samples

    targets: list[str] = []
    for record in load_samples(sample_dir):
        if record.target_id is None:
            return None
        if record.target_id not in targets:
            targets.append(record.target_id)
    return targets


FLOOR_COLUMNS = (
    ("n relaxed", "n_compared"),
    ("mean Δ{e}", "mean_delta_e_mev_per_atom"),
    ("median Δ{e}", "median_delta_e_mev_per_atom"),
    ("match to relaxed", "match_rate_to_relaxed"),
    ("mean RMSD", "mean_rmsd_to_relaxed"),
    ("mean |ΔV|/V", "mean_abs_delta_volume_frac"),
)
"""Columns of the model-versus-dataset table: (heading, metric name); ``{e}`` is ``E``, or
``H`` (enthalpy ``E + pV`` per atom) where the relaxations ran at ``p ≠ 0``."""


def report_energy_quantity(
    rows: Sequence[Mapping[str, Any]], floor: Mapping[str, Any] | None = None
) -> str:
    """``"H"`` when the model's or the floor's relaxations ran at ``p ≠ 0``, else ``"E"``.

    Parameters
    ----------
    rows
        The model's per-structure rows (``flows.tasks.analyze_task``).
    floor
        What :func:`flows.floor.dataset_floor` returned, or ``None``.
    """
    from analysis.stability_experiment import energy_quantity

    return energy_quantity([*rows, *((floor or {}).get("rows") or [])])


def _metric_values(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Metric name → value, plus ``n_compared`` from the ΔE metric's counts."""
    values: dict[str, Any] = {}
    for metric in metrics:
        values[metric["name"]] = metric.get("value")
        if metric["name"] == "mean_delta_e_mev_per_atom":
            values["n_compared"] = (metric.get("counts") or {}).get("n_compared")
    return values


def floor_table(
    model: str,
    metrics: list[dict[str, Any]],
    floor: dict[str, Any] | None,
    model_rows: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    """Return the lines of the model row and the dataset row (ΔE, or ΔH at p ≠ 0, in meV/atom).

    Parameters
    ----------
    model
        The model's name (first column).
    metrics
        The model's metrics (:func:`flows.pipeline.analyze`).
    floor
        What :func:`flows.floor.dataset_floor` returned, or ``None`` when it did not run.
    model_rows
        The model's per-structure rows; with the floor's rows they name the energy columns
        (:func:`report_energy_quantity`).
    """
    energy = report_energy_quantity(model_rows, floor)
    rows = [(model, _metric_values(metrics))]
    if floor is not None:
        rows.append(("dataset (true structures)", _metric_values(floor["metrics"])))
    head = f"  {'':26s}" + "".join(f"{h.format(e=energy):>18s}" for h, _ in FLOOR_COLUMNS)
    lines = [head]
    for name, values in rows:
        cells = []
        for _, key in FLOOR_COLUMNS:
            value = values.get(key)
            cells.append(f"{value:18.3f}" if isinstance(value, float) else f"{value!s:>18s}")
        lines.append(f"  {name:26s}" + "".join(cells))
    if floor is None:
        lines.append("  (the dataset row was not computed: DFTLOOP_MAIN_FLOOR=0)")
    return lines


def format_report(
    result: dict[str, Any],
    params: dict[str, Any],
    seconds: float,
    floor: dict[str, Any] | None = None,
) -> str:
    """Return the plain-text report of a main-job run.

    Parameters
    ----------
    result
        The return value of :func:`flows.pipeline.generate_and_relax`.
    params
        Its parameters.
    seconds
        Wall time of the flows.
    floor
        The dataset's own row (:func:`flows.floor.dataset_floor`), if it ran.

    Returns
    -------
    str
        Model and checkpoint (with the epochs trained), samples, relaxation stages, the metrics,
        the model-versus-dataset table, the per-structure table and where the tables, PNG and
        store are. Energy differences are ΔE, or ΔH (enthalpy ``E + pV`` per atom) where the
        relaxations ran at ``p ≠ 0``.
    """
    from flows.artifacts import energy_labels

    energy = report_energy_quantity(result.get("rows", []), floor)
    lines = [
        "",
        "=" * 78,
        f"dftloop main job: {params['model']} on {params['dataset']}, "
        f"{params['n']} CSP samples of the {params['sample_split']} split, "
        f"{params['sample_steps']} steps; CHGNet {params['relaxer_settings']}",
        "=" * 78,
        f"wall time of the flows {seconds / 60:.1f} min",
        f"checkpoint             {params.get('checkpoint') or result.get('checkpoint')}",
    ]
    training = training_summary(result.get("checkpoint"))
    if training:
        lines.append(f"training               {training}")
    lines.append(f"samples                {result['sample_dir']}")
    for stage in result["stages"]:
        shown = {k: v for k, v in stage.items() if k.startswith("n_") or k == "relaxer"}
        lines.append(f"relaxation stage       {shown}")
    lines += [
        "",
        f"metrics (the papers' CSP metrics against the targets, and Δ{energy}/RMSD to relaxed):",
    ]
    for metric in result["metrics"]:
        name = metric["name"]
        if name.rsplit(".", 1)[-1] in REPORT_METRICS:
            value = metric.get("value")
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"  {name:40s} {shown}")
    lines += [
        "",
        "relaxation of the samples against the dataset's own structures (same relaxer and "
        f"settings; Δ{energy} in meV/atom):",
        *floor_table(params["model"], result["metrics"], floor, result.get("rows", [])),
    ]
    lines += [
        "",
        f"per structure (Δ{energy} = {energy}(sample) − {energy}(relaxed), meV/atom; "
        "RMSD to relaxed):",
    ]
    for row in result.get("rows", []):
        delta, rmsd = row.get("delta_e_mev_per_atom"), row.get("rmsd")
        lines.append(
            f"  {row.get('structure_id', '?'):10s} {row.get('formula', '')!s:12s} "
            f"{row.get('status', '')!s:14s} "
            f"Δ{energy} {'-' if delta is None else f'{delta:9.1f}'}  "
            f"RMSD {'-' if rmsd is None else f'{rmsd:.3f}'}"
            + (f"  {row['error'][:60]}" if row.get("error") else "")
        )
    artifacts = result.get("artifacts", {})
    histogram = energy_labels(result.get("rows", []))["heading"]  # the PNG's own quantity
    store = result.get("store", {})
    lines += [
        "",
        "where things are:",
        f"  metrics table          {artifacts.get('metrics_csv')}",
        f"  per-structure table    {artifacts.get('per_structure_csv')}",
        f"  {histogram + ' (PNG)':23s}{artifacts.get('histogram_png')}",
        f"  result store           {store.get('docs', {})}",
        f"  documents              {store.get('counts', {})}",
        "  list/export them with  .venv/bin/dftloop results list | export FILE.csv|FILE.extxyz",
    ]
    return "\n".join(lines)


def training_summary(checkpoint: str | None) -> str | None:
    """Return ``"<epochs> epochs, last train loss <x>"`` from the checkpoint's run directory."""
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    log = Path(checkpoint).parent / "metrics.jsonl"
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not records:
        return None
    last = records[-1]
    seconds = sum(float(r.get("seconds") or 0.0) for r in records)
    loss = (last.get("train") or {}).get("loss")
    shown = f"{loss:.4f}" if isinstance(loss, float) else str(loss)
    return f"{last['epoch']} epochs in {seconds / 60:.1f} min, last train loss {shown}"


def main() -> int:
    """Run the main job, print the report and write it to ``<home>/reports/main-job-*.json``."""
    from flows.pipeline import generate_and_relax
    from flows.store import dftloop_home

    try:
        params = main_job_parameters()
    except ValueError as exc:
        print(f"main job: {exc}", file=sys.stderr)
        return 2
    tic = time.perf_counter()
    result = generate_and_relax(**params)
    floor = None
    if flag("DFTLOOP_MAIN_FLOOR"):
        from flows.floor import dataset_floor

        floor = dataset_floor(
            params["dataset"],
            params["sample_split"],
            params["n"],
            params["relaxer"],
            params["relaxer_settings"],
            home=params["home"],
            ids=csp_targets(result["sample_dir"]),  # None: the first n rows of the split
            protocol=params["protocol"],
        )
    seconds = time.perf_counter() - tic
    print(format_report(result, params, seconds, floor))
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = dftloop_home(params["home"]) / "reports" / f"main-job-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"parameters": params, "seconds": seconds, **result, "dataset_floor": floor}
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"  this report (JSON)     {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
