r"""``dftloop experiment``: run the ``stability-experiment`` flow (DP-CDVAE's ΔE experiment).

::

    dftloop experiment --checkpoint cdvae=runs/cdvae/best.pt --checkpoint dpcdvae=runs/dp/best.pt \\
        --n 100 --dft espresso --dft-per-model 10 --home runs/science
    dftloop experiment --train-max-minutes 120 --n 100          # train both models first
    dftloop experiment ... --dft-path direct --dft-max-sites 12   # DFT from the generated cells
    dftloop experiment --floor-only --n 100 --dft-per-model 20     # the test-split row alone

The flow runs in this process (an ephemeral Prefect API unless ``PREFECT_API_URL`` is set);
a rerun with the same options skips every finished relaxation (the store) and sample.
JSON options (``--relaxer-settings``, ``--dft-settings``, ``--train-overrides``,
``--cluster-kwargs``) take a JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def _json_option(name: str, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{name}: not JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{name}: expected a JSON object, got {text!r}")
    return value


def _checkpoints(pairs: list[str]) -> dict[str, str] | None:
    """``MODEL=PATH_OR_NAME`` pairs: a checkpoint file or a registered model name, checked now."""
    from generators.model_zoo import ChecksumError, resolve_checkpoint

    out = {}
    for pair in pairs:
        model, sep, path = pair.partition("=")
        if not sep or not model or not path:
            raise typer.BadParameter(f"--checkpoint: expected MODEL=PATH, got {pair!r}")
        try:
            resolve_checkpoint(path)
        except (FileNotFoundError, ChecksumError) as exc:
            raise typer.BadParameter(f"--checkpoint {model}: {exc}") from None
        out[model.strip()] = path
    return out or None


def experiment(
    model: Annotated[
        list[str] | None,
        typer.Option(help="Generator to compare (repeat; default: cdvae and dpcdvae)."),
    ] = None,
    floor_only: Annotated[
        bool,
        typer.Option(
            help="Run only the dataset floor (test-split rows, hull references); no models. "
            "A later run with the models and the same options reuses its stored relaxations."
        ),
    ] = False,
    dataset: Annotated[str, typer.Option(help="Dataset (training, novelty, hull).")] = "carbon_24",
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(
            help="MODEL=PATH or MODEL=NAME (a registered model, `dftloop models list`): use "
            "this checkpoint, do not train (repeat)."
        ),
    ] = None,
    train_config: Annotated[
        str, typer.Option(help="Training configuration of models without a checkpoint.")
    ] = "cpu-small",
    train_max_minutes: Annotated[
        float | None,
        typer.Option(help="CPU budget per training, minutes (required without a checkpoint)."),
    ] = None,
    train_overrides: Annotated[
        str | None, typer.Option(help='Training config overrides, JSON ({"train": {...}}).')
    ] = None,
    n: Annotated[int, typer.Option(help="Structures generated per model.")] = 100,
    seed: Annotated[int, typer.Option(help="Sampling / selection / bootstrap seed.")] = 0,
    sample_steps: Annotated[
        int | None,
        typer.Option(help="Sampling steps (default: the model's; CDVAE: steps // 50 per level)."),
    ] = None,
    relaxer: Annotated[str, typer.Option(help="Force field relaxing every structure.")] = "chgnet",
    relaxer_settings: Annotated[
        str | None, typer.Option(help='Force-field settings, JSON (e.g. {"fmax": 0.05}).')
    ] = None,
    pressure_gpa: Annotated[
        float | None,
        typer.Option(help="Target pressure, GPa (default: the dataset's; carbon_24: 10)."),
    ] = None,
    dispersion: Annotated[
        str | None, typer.Option(help="none | d3bj (default: the dataset's; carbon_24: d3bj).")
    ] = None,
    protocol: Annotated[
        list[str] | None,
        typer.Option(help="Relaxation protocol field KEY=VALUE (repeat; see dftloop relax)."),
    ] = None,
    dft: Annotated[str, typer.Option(help="DFT stage: espresso, vasp or none.")] = "espresso",
    dft_settings: Annotated[
        str | None,
        typer.Option(
            help="DFT settings, JSON, merged over the defaults "
            '({"conv_thr_per_atom": 1e-8, "timeout_s": 2400}; k-spacing and cutoffs from the '
            'protocol unless given, e.g. {"kspacing": 0.5}).'
        ),
    ] = None,
    dft_per_model: Annotated[
        int, typer.Option(help="Structures per model relaxed with force field + DFT.")
    ] = 10,
    dft_selection: Annotated[
        str,
        typer.Option(
            help="Which structures get DFT: stratified (random, stratified by cell size; "
            "seeded), random (seeded), smallest (fewest atoms first), lowest_energy "
            "(force-field energy)."
        ),
    ] = "stratified",
    dft_path: Annotated[
        str,
        typer.Option(
            help="pre-relaxed: DFT relaxes the force-field-relaxed structure; direct: DFT relaxes "
            "the generated structure (no force-field pre-relax)."
        ),
    ] = "pre-relaxed",
    dft_max_sites: Annotated[
        int | None, typer.Option(help="Leave cells with more atoms out of the DFT selection.")
    ] = None,
    dataset_floor: Annotated[
        bool,
        typer.Option(
            help="Relax random test-split structures the same way (the 'test split' row)."
        ),
    ] = True,
    n_dataset: Annotated[
        int | None, typer.Option(help="Test-split structures of the floor (default: --n).")
    ] = None,
    reference: Annotated[
        list[str] | None,
        typer.Option(
            help="Hull reference: a material id of the dataset or a structure file (repeat; "
            "default for carbon_24: diamond and graphite of the training split)."
        ),
    ] = None,
    n_reference: Annotated[
        int, typer.Option(help="Lowest-energy references of datasets without a default.")
    ] = 4,
    sun: Annotated[bool, typer.Option(help="Compute S.U.N. (novelty vs the training split).")] = (
        True
    ),
    novelty_limit: Annotated[
        int | None, typer.Option(help="Only the first N training structures for novelty.")
    ] = None,
    chunk_size: Annotated[int, typer.Option(help="Structures per force-field task.")] = 4,
    workers: Annotated[int, typer.Option(help="Dask worker processes, force-field stage.")] = 1,
    dft_workers: Annotated[
        int, typer.Option(help="Dask worker processes, DFT stage (one serial pw.x each).")
    ] = 1,
    dft_max_minutes: Annotated[
        float | None,
        typer.Option(help="Wall-time budget of the DFT phase; later structures are not started."),
    ] = None,
    cluster: Annotated[str, typer.Option(help="Dask cluster: local or slurm.")] = "local",
    cluster_kwargs: Annotated[
        str | None, typer.Option(help="Dask cluster overrides, JSON.")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option(help="Relax again structures whose stored relaxation failed.")
    ] = False,
    run_name: Annotated[
        str | None,
        typer.Option(help="Report directory name (default: UTC time + flow run name)."),
    ] = None,
    home: Annotated[
        Path | None, typer.Option(help="Project directory (default $DFTLOOP_HOME).")
    ] = None,
) -> None:
    """Generated versus relaxed structures per model and the test split: ΔE, RMSD, E_hull, S.U.N.

    Writes <home>/reports/experiment/<run>/ (rows.json, summary.json, report.md, PNGs) and
    publishes Prefect artifacts (experiment-<dataset>-summary, -structure, -comparison, -sun,
    -per-structure, -plots).
    """
    from rich.console import Console

    console = Console(stderr=True)
    if dft not in ("espresso", "vasp", "none"):
        raise typer.BadParameter(f"--dft must be espresso, vasp or none, not {dft!r}")
    if dft_selection not in ("stratified", "random", "smallest", "lowest_energy"):
        raise typer.BadParameter(f"--dft-selection: unknown {dft_selection!r}")
    if dft_path not in ("pre-relaxed", "direct"):
        raise typer.BadParameter(f"--dft-path must be pre-relaxed or direct, not {dft_path!r}")
    if floor_only and (model or not dataset_floor):
        raise typer.BadParameter("--floor-only runs no model: drop --model / --no-dataset-floor")
    from relax.protocol import parse_assignments, resolve_protocol

    try:
        fields = {
            **parse_assignments(protocol or []),
            "pressure_gpa": pressure_gpa,
            "dispersion": dispersion,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        resolve_protocol({"dataset": dataset, **fields})  # checked before anything runs
    except ValueError as exc:
        raise typer.BadParameter(f"--protocol: {exc}") from None
    params = dict(
        models=[] if floor_only else (model or None),
        dataset=dataset,
        train_config=train_config,
        train_max_minutes=train_max_minutes,
        train_overrides=_json_option("--train-overrides", train_overrides),
        checkpoints=_checkpoints(checkpoint or []),
        n=n,
        seed=seed,
        sample_steps=sample_steps,
        relaxer=relaxer,
        relaxer_settings=_json_option("--relaxer-settings", relaxer_settings),
        protocol=fields or None,
        dft=dft,
        dft_settings=_json_option("--dft-settings", dft_settings),
        dft_per_model=dft_per_model,
        dft_selection=dft_selection,
        dft_path=dft_path,
        dft_max_sites=dft_max_sites,
        dataset_floor=dataset_floor,
        n_dataset=n_dataset,
        reference_structures=reference or None,
        n_reference=n_reference,
        sun=sun,
        novelty_limit=novelty_limit,
        chunk_size=chunk_size,
        workers=workers,
        dft_workers=dft_workers,
        dft_max_minutes=dft_max_minutes,
        cluster=cluster,
        cluster_kwargs=_json_option("--cluster-kwargs", cluster_kwargs),
        retry_failed=retry_failed,
        run_name=run_name,
        home=str(home) if home else None,
    )
    from flows.experiment import stability_experiment

    out = stability_experiment(**params)
    summary = out["summary"]
    for label, path in out["files"].items():
        typer.echo(f"{label}: {path}")
    for model_name, error in summary.get("model_errors", {}).items():
        console.print(f"[red]{model_name} did not finish:[/red] {error}")
    for row in out["tables"]["comparison"]:
        typer.echo(json.dumps(row, ensure_ascii=False))
    errors, models = summary.get("model_errors") or {}, summary["models"] or ["test split"]
    if all(m in errors for m in models):  # every model (or, alone, the floor) failed
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add the ``experiment`` command to the ``dftloop`` application.

    Parameters
    ----------
    app
        The typer application of :mod:`flows.cli`.
    """
    app.command("experiment")(experiment)
