"""The main job: a real generator through the ``generate-and-relax`` flow, on embedded defaults.

``bash deploy/run-main.sh`` (or ``python -m flows.main_job`` in the venv) trains DiffCSP
``cpu-small`` on the first 16 perov_5 *training* crystals, CSP-samples the same 16 compositions
(1000 steps), relaxes every sample with CHGNet, analyses the samples against their relaxed
structures and computes the papers' CSP metrics (match rate and RMSE against the 16 targets),
all through the Prefect flow ``generate-and-relax`` (ephemeral Prefect API, embedded MontyStore
under ``$DFTLOOP_HOME``). Sampling the training compositions makes it a *memorisation* check:
it shows the generator, the relaxation and the metrics working end to end (45 min measured on
the shared 2-core box under load 13-15, see README; sized for ~15-25 min on an idle one), not
the model's generalisation (``DFTLOOP_MAIN_SPLIT=test`` for held-out targets; a 16-crystal
model will not match those).

Options are environment variables (defaults in :data:`DEFAULTS`):

``DFTLOOP_HOME``                project directory (``./dftloop-runs``)
``DFTLOOP_MAIN_MODEL``          generator (``diffcsp``; ``cdvae``, ``dpcdvae``, ``continuousp``)
``DFTLOOP_MAIN_DATASET``        dataset (``perov_5``)
``DFTLOOP_MAIN_CONFIG``         training configuration (``cpu-small``)
``DFTLOOP_MAIN_CHECKPOINT``     use this checkpoint instead of training
``DFTLOOP_MAIN_TRAIN_CRYSTALS`` training crystals, first rows of the train split (16)
``DFTLOOP_MAIN_TRAIN_EPOCHS``   training epochs, one Adam step each (8000)
``DFTLOOP_MAIN_TRAIN_MINUTES``  training wall-time cap in minutes (12)
``DFTLOOP_MAIN_N``              samples (16)
``DFTLOOP_MAIN_SPLIT``          split of the CSP targets (``train``)
``DFTLOOP_MAIN_STEPS``          sampling steps (1000)
``DFTLOOP_MAIN_FMAX``           CHGNet force criterion in eV/Å (0.05)
``DFTLOOP_MAIN_MAX_STEPS``      CHGNet maximum ionic steps (500)
``DFTLOOP_MAIN_DFT``            ``none`` or ``espresso`` (two lowest-energy structures with pw.x)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, str] = {
    "DFTLOOP_MAIN_MODEL": "diffcsp",
    "DFTLOOP_MAIN_DATASET": "perov_5",
    "DFTLOOP_MAIN_CONFIG": "cpu-small",
    "DFTLOOP_MAIN_CHECKPOINT": "",
    "DFTLOOP_MAIN_TRAIN_CRYSTALS": "16",
    "DFTLOOP_MAIN_TRAIN_EPOCHS": "8000",
    "DFTLOOP_MAIN_TRAIN_MINUTES": "12",
    "DFTLOOP_MAIN_N": "16",
    "DFTLOOP_MAIN_SPLIT": "train",
    "DFTLOOP_MAIN_STEPS": "1000",
    "DFTLOOP_MAIN_FMAX": "0.05",
    "DFTLOOP_MAIN_MAX_STEPS": "500",
    "DFTLOOP_MAIN_DFT": "none",
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
        An option that should be a number is not, or ``DFTLOOP_MAIN_DFT`` is unknown (the
        message names the variable).
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
    epochs = number("DFTLOOP_MAIN_TRAIN_EPOCHS", int)
    checkpoint = get("DFTLOOP_MAIN_CHECKPOINT") or None
    params: dict[str, Any] = {
        "model": get("DFTLOOP_MAIN_MODEL"),
        "dataset": get("DFTLOOP_MAIN_DATASET"),
        "n": number("DFTLOOP_MAIN_N", int),
        "checkpoint": checkpoint,
        "sample_steps": number("DFTLOOP_MAIN_STEPS", int),
        "sample_split": get("DFTLOOP_MAIN_SPLIT"),
        "relaxer": "chgnet",
        "relaxer_settings": {
            "fmax": number("DFTLOOP_MAIN_FMAX", float),
            "max_steps": number("DFTLOOP_MAIN_MAX_STEPS", int),
        },
        "dft": dft,
        "home": env.get("DFTLOOP_HOME") or None,
        "evaluate_metrics": True,
        "eval_coverage": False,
    }
    if checkpoint is None:
        crystals = number("DFTLOOP_MAIN_TRAIN_CRYSTALS", int)
        params.update(
            train_config=get("DFTLOOP_MAIN_CONFIG"),
            train_limit=crystals,
            train_max_minutes=number("DFTLOOP_MAIN_TRAIN_MINUTES", float),
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


def format_report(result: dict[str, Any], params: dict[str, Any], seconds: float) -> str:
    """Return the plain-text report of a main-job run.

    Parameters
    ----------
    result
        The return value of :func:`flows.pipeline.generate_and_relax`.
    params
        Its parameters.
    seconds
        Wall time of the flow.

    Returns
    -------
    str
        Model and checkpoint (with the epochs trained), samples, relaxation stages, the metrics,
        the per-structure table and where the tables, PNG and store are.
    """
    lines = [
        "",
        "=" * 78,
        f"dftloop main job: {params['model']} on {params['dataset']}, "
        f"{params['n']} CSP samples of the {params['sample_split']} split, "
        f"{params['sample_steps']} steps; CHGNet {params['relaxer_settings']}",
        "=" * 78,
        f"wall time of the flow  {seconds / 60:.1f} min",
        f"checkpoint             {result.get('checkpoint')}",
    ]
    training = training_summary(result.get("checkpoint"))
    if training:
        lines.append(f"training               {training}")
    lines.append(f"samples                {result['sample_dir']}")
    for stage in result["stages"]:
        shown = {k: v for k, v in stage.items() if k.startswith("n_") or k == "relaxer"}
        lines.append(f"relaxation stage       {shown}")
    lines += ["", "metrics (the papers' CSP metrics against the targets, and ΔE/RMSD to relaxed):"]
    for metric in result["metrics"]:
        name = metric["name"]
        if name.rsplit(".", 1)[-1] in REPORT_METRICS:
            value = metric.get("value")
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"  {name:40s} {shown}")
    lines += ["", "per structure (ΔE = E(sample) − E(relaxed), meV/atom; RMSD to relaxed):"]
    for row in result.get("rows", []):
        delta, rmsd = row.get("delta_e_mev_per_atom"), row.get("rmsd")
        lines.append(
            f"  {row.get('structure_id', '?'):10s} {row.get('formula', '')!s:12s} "
            f"{row.get('status', '')!s:14s} "
            f"ΔE {'-' if delta is None else f'{delta:9.1f}'}  "
            f"RMSD {'-' if rmsd is None else f'{rmsd:.3f}'}"
            + (f"  {row['error'][:60]}" if row.get("error") else "")
        )
    artifacts = result.get("artifacts", {})
    store = result.get("store", {})
    lines += [
        "",
        "where things are:",
        f"  metrics table          {artifacts.get('metrics_csv')}",
        f"  per-structure table    {artifacts.get('per_structure_csv')}",
        f"  ΔE histogram (PNG)     {artifacts.get('histogram_png')}",
        f"  result store           {store.get('docs', {})}",
        f"  documents              {store.get('counts', {})}",
        "  list/export them with  .venv/bin/dftloop results list | export FILE.csv|FILE.extxyz",
    ]
    return "\n".join(lines)


def training_summary(checkpoint: str | None) -> str | None:
    """Return ``"<epochs> epochs, last train loss <x>"`` from the checkpoint's run directory."""
    if not checkpoint:
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
    seconds = time.perf_counter() - tic
    print(format_report(result, params, seconds))
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = dftloop_home(params["home"]) / "reports" / f"main-job-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"parameters": params, "seconds": seconds, **result}
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"  this report (JSON)     {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
