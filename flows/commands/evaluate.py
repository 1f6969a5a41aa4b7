"""``dftloop evaluate``: the paper metrics of a sample directory, or of a dataset split itself.

::

    dftloop evaluate SAMPLE_DIR --dataset perov_5 [--gt-split test] [--limit N] [--out metrics.json]
    dftloop evaluate SAMPLE_DIR --dataset perov_5 --gt-file test.csv   # raw-CIF ground truth
    dftloop evaluate --dataset perov_5 --split test --limit 200      # the split against itself

Besides ``metrics.json`` the command writes one CSV row per target (CSP / reconstruction:
matched, RMS and validity per protocol) or per sample (generation: validity flags).
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
    gt_file: Annotated[
        Path | None,
        typer.Option(
            help="Ground truth from a CSV with a 'cif' column (as --gt_file of CDVAE/DiffCSP; "
            "ids from its material_id column) instead of --gt-split. Without SAMPLE_DIR: "
            "evaluate this file against itself."
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Without SAMPLE_DIR: evaluate this split against itself.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Only the first N samples/targets (or split rows).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="metrics.json path.")] = None,
    rows: Annotated[
        Path | None,
        typer.Option(
            help="Per-target (CSP) or per-sample (generation) CSV; default beside the metrics "
            "file, <name>_per_target.csv or <name>_per_sample.csv."
        ),
    ] = None,
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
    jobs: Annotated[
        int | None,
        typer.Option(help="Worker processes (default: $DFTLOOP_JOBS, else all cores).", min=1),
    ] = None,
    fp_cache: Annotated[
        Path | None,
        typer.Option(
            help="Fingerprint cache (SQLite); default $DFTLOOP_FP_CACHE or the user cache."
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory override.")] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or progress messages.")
    ] = False,
) -> None:
    """Compute match rate/RMSE, validity, COV and Wasserstein metrics and write metrics.json."""
    from rich.console import Console
    from rich.table import Table

    from analysis.evaluate import evaluate_against_itself
    from analysis.ground_truth import GroundTruth, read_gt_file
    from analysis.validity import OXIDATION_STATE_SETS
    from flows.evaluation import evaluate_split, evaluate_with_split

    if cov_criterion not in ("code", "joint"):
        raise typer.BadParameter(
            f"--cov-criterion must be 'code' or 'joint', not {cov_criterion!r}"
        )
    if oxidation_states not in OXIDATION_STATE_SETS:
        raise typer.BadParameter(
            f"--oxidation-states must be one of {sorted(OXIDATION_STATE_SETS)}, "
            f"not {oxidation_states!r}"
        )
    if gt_file is not None and not gt_file.is_file():
        raise typer.BadParameter(f"--gt-file {gt_file} does not exist")
    console = Console(stderr=True)
    log = None if quiet else console.print
    progress = not quiet
    options = {
        "oxidation_states_set": oxidation_states,
        "fingerprint_cache": fp_cache,  # None: analysis.fingerprints.default_cache_path()
        "n_jobs": jobs,
        "progress": progress,
        "log": log,
    }

    def read_gt(limit: int | None) -> GroundTruth:
        assert gt_file is not None
        try:
            return read_gt_file(gt_file, limit=limit)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    if sample_dir is None:
        if split is None and gt_file is None:
            raise typer.BadParameter(
                "give SAMPLE_DIR, or --split (or --gt-file) to evaluate a split itself"
            )
        label = split if gt_file is None else gt_file.stem
        out = out or Path(f"metrics_{dataset}_{label}.json")
        self_options = {
            **options,
            "with_coverage": coverage,
            "coverage_criterion": cov_criterion,
            "out": out,
        }
        if gt_file is not None:
            results = evaluate_against_itself(read_gt(limit), dataset, **self_options)
        else:
            assert split is not None
            results = evaluate_split(dataset, split, limit=limit, data_dir=data_dir, **self_options)
    else:
        if not (sample_dir / "index.json").is_file():
            raise typer.BadParameter(f"{sample_dir}: no index.json (not a sample directory)")
        out = out or sample_dir / "metrics.json"
        evaluation = evaluate_with_split(
            sample_dir,
            dataset,
            gt_split=gt_split,
            data_dir=data_dir,
            gt=read_gt if gt_file is not None else None,
            limit=limit,
            protocols=protocol or None,
            n_samples=n_samples,
            coverage_criterion=cov_criterion,
            seed=seed,
            with_coverage=coverage,
            out=out,
            **options,
        )
        results = evaluation.metrics
        kind = "per_sample" if evaluation.mode == "generate" else "per_target"
        rows = rows or out.with_name(f"{out.stem}_{kind}.csv")
        evaluation.write_rows_csv(rows)
        if log is not None:
            log(f"wrote {rows} ({len(evaluation.rows)} rows)")
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
