"""``dftloop evaluate``: the paper metrics of a sample directory, or of a dataset split itself.

::

    dftloop evaluate SAMPLE_DIR --dataset perov_5 [--gt-split test] [--limit N] [--out metrics.json]
    dftloop evaluate --dataset perov_5 --split test --limit 200      # the split against itself
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def evaluate(
    sample_dir: Annotated[
        Path | None,
        typer.Argument(help="Sample directory (index.json + chunks). Omit to evaluate --split."),
    ] = None,
    dataset: Annotated[str, typer.Option(help="Dataset: perov_5, carbon_24, mp_20, mpts_52.")] = (
        "perov_5"
    ),
    gt_split: Annotated[str, typer.Option(help="Ground-truth split for SAMPLE_DIR.")] = "test",
    split: Annotated[
        str | None, typer.Option(help="Without SAMPLE_DIR: evaluate this split against itself.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Only the first N samples/targets (or split rows).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="metrics.json path.")] = None,
    protocol: Annotated[
        list[str] | None,
        typer.Option(help="CSP match protocol(s): diffcsp, cdvae, diffcsp_multi, continuousp."),
    ] = None,
    coverage: Annotated[bool, typer.Option(help="Compute COV (CrystalNN: slow).")] = True,
    cov_criterion: Annotated[
        str, typer.Option(help="COV criterion: 'code' (CDVAE code) or 'joint' (paper wording).")
    ] = "code",
    oxidation_states: Annotated[
        str, typer.Option(help="SMACT oxidation-state set: smact14 (smact 2.2.1) or icsd24.")
    ] = "smact14",
    n_samples: Annotated[int, typer.Option(help="Valid samples for Wasserstein distances.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the valid-sample draw.")] = 0,
    jobs: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    fp_cache: Annotated[
        Path | None,
        typer.Option(
            help="Fingerprint cache (SQLite); default $DFTLOOP_FP_CACHE or the user cache."
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory override.")] = None,
) -> None:
    """Compute match rate/RMSE, validity, COV and Wasserstein metrics and write metrics.json."""
    from rich.console import Console
    from rich.table import Table

    from analysis.evaluate import evaluate_samples, evaluate_split
    from analysis.validity import OXIDATION_STATE_SETS

    if cov_criterion not in ("code", "joint"):
        raise typer.BadParameter(
            f"--cov-criterion must be 'code' or 'joint', not {cov_criterion!r}"
        )
    if oxidation_states not in OXIDATION_STATE_SETS:
        raise typer.BadParameter(
            f"--oxidation-states must be one of {sorted(OXIDATION_STATE_SETS)}, "
            f"not {oxidation_states!r}"
        )
    console = Console(stderr=True)
    cache = fp_cache  # None: analysis.fingerprints.default_cache_path()
    if sample_dir is None:
        if split is None:
            raise typer.BadParameter("give SAMPLE_DIR, or --split to evaluate a split itself")
        out = out or Path(f"metrics_{dataset}_{split}.json")
        results = evaluate_split(
            dataset,
            split,
            limit=limit,
            data_dir=data_dir,
            with_coverage=coverage,
            coverage_criterion=cov_criterion,  # type: ignore[arg-type]
            oxidation_states_set=oxidation_states,
            fingerprint_cache=cache,
            n_jobs=jobs,
            out=out,
            log=console.print,
        )
    else:
        if not (sample_dir / "index.json").is_file():
            raise typer.BadParameter(f"{sample_dir}: no index.json (not a sample directory)")
        out = out or sample_dir / "metrics.json"
        results = evaluate_samples(
            sample_dir,
            dataset,
            gt_split=gt_split,
            data_dir=data_dir,
            limit=limit,
            protocols=protocol or None,
            n_samples=n_samples,
            coverage_criterion=cov_criterion,  # type: ignore[arg-type]
            oxidation_states_set=oxidation_states,
            seed=seed,
            with_coverage=coverage,
            fingerprint_cache=cache,
            n_jobs=jobs,
            out=out,
            log=console.print,
        )
    table = Table(title=f"{dataset}: metrics ({out})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("counts (first 3; all in the JSON)")
    table.add_column("errors", justify="right")
    for key, result in results.items():
        value = "n/a" if result.value is None else f"{result.value:.4g}"
        counts = ", ".join(f"{k}={v}" for k, v in list(result.counts.items())[:3])
        table.add_row(key, value, counts, str(len(result.errors)))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to the ``dftloop`` application.

    Parameters
    ----------
    app
        The typer application of :mod:`flows.cli`.
    """
    app.command("evaluate")(evaluate)
