"""``dftloop optimize``: CDVAE's property optimisation in latent space.

::

    dftloop optimize --checkpoint runs/prop/best.pt --predictor runs/predictor/perov_5-heat_ref.pkl

Starts from the latents of the first ``--n`` (100) crystals of a split, descends the model's
property head with Adam (``--steps`` 5000, ``--lr`` 1e-3), decodes ``--saves`` snapshots, scores
the valid crystals (0.5 Å structure check and SMACT composition check) with the predictor and
prints SR5 / SR10 / SR15 against the dataset's percentiles
(:func:`generators.property_optimization.optimize_property`). The predictor is a file of
:mod:`analysis.property_predictor` (``.pkl``: descriptors and gradient-boosted trees, trained
apart from the generator), another checkpoint with a property head (the crystal's posterior mean
through its head), or ``self`` — the optimised model's own head, which is *not* an independent
score. The ``optimize-property`` flow (:mod:`flows.property_optimization`) adds a CHGNet
relaxation before scoring and stores the results. ``--checkpoint`` takes a checkpoint file or
a registered model name (``dftloop models list``). A JSON summary is written to ``--out``
(default: :func:`default_summary_path`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer


def _head_predictor(model):  # type: ignore[no-untyped-def]
    """Structures → the property head's value at each one's posterior mean."""
    import torch

    from generators.crystal import structures_to_batch

    def predict(structures):  # type: ignore[no-untyped-def]
        values: list[float] = []
        for start in range(0, len(structures), 256):
            batch = structures_to_batch(structures[start : start + 256]).to(model.device)
            with torch.no_grad():
                mu, _ = model.encode(batch)
                values += model.predict_property(mu).cpu().tolist()
        return values

    return predict


def default_summary_path(checkpoint: str) -> Path:
    """Where ``dftloop optimize`` writes its summary when ``--out`` is not given.

    Parameters
    ----------
    checkpoint
        The ``--checkpoint`` argument: a checkpoint file or a registered model name.

    Returns
    -------
    Path
        ``optimization.json`` beside a checkpoint file; for a registered name (which is no
        file), ``$DFTLOOP_HOME/optimize/<name>/optimization.json``, as ``dftloop sample`` keeps
        a registered model's samples under ``$DFTLOOP_HOME/samples/<name>/``.
    """
    if Path(checkpoint).is_file():
        return Path(checkpoint).parent / "optimization.json"
    from flows.store import dftloop_home

    return dftloop_home(None) / "optimize" / checkpoint / "optimization.json"


def _is_valid(structure) -> bool:  # type: ignore[no-untyped-def]
    from analysis.validity import composition_of, smact_valid, structure_is_valid

    symbols, counts = composition_of(structure.atomic_numbers)
    return structure_is_valid(structure) and smact_valid(symbols, counts)


def optimize(
    checkpoint: Annotated[
        str,
        typer.Option(
            help="CDVAE/DP-CDVAE checkpoint with a property head: a trainer checkpoint file or a "
            "registered model name (`dftloop models list`)."
        ),
    ],
    predictor: Annotated[
        str,
        typer.Option(
            help="An independent predictor file (.pkl, benchmarks/property_predictor.py), a "
            "checkpoint of another model with a property head, or 'self' (the optimised "
            "model's own head; not an independent score)."
        ),
    ],
    dataset: Annotated[str, typer.Option(help="Dataset of the starting crystals.")] = "perov_5",
    split: Annotated[str, typer.Option(help="Split of the starting crystals.")] = "test",
    n: Annotated[int, typer.Option(help="Starting crystals (the first N of the split).")] = 100,
    steps: Annotated[int, typer.Option(help="Adam steps on z.")] = 5000,
    lr: Annotated[float, typer.Option(help="Adam learning rate on z.")] = 1e-3,
    saves: Annotated[int, typer.Option(help="Snapshots decoded per start (about).")] = 10,
    direction: Annotated[str, typer.Option(help="min (the papers) or max.")] = "min",
    percentiles: Annotated[
        str | None,
        typer.Option(help="Three comma-separated thresholds (default: the paper's, by dataset)."),
    ] = None,
    chain_steps: Annotated[
        int | None, typer.Option(help="Sampler steps per decode (default: the model's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the posterior draws and the sampler.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Summary JSON (default: optimization.json beside a checkpoint file; "
            "$DFTLOOP_HOME/optimize/<name>/optimization.json for a registered model)."
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory override.")] = None,
) -> None:
    """Optimise a property in latent space and report SR5 / SR10 / SR15."""
    import torch
    from rich.console import Console

    from generators.crystal import data_list_to_batch
    from generators.data import load_split
    from generators.property_optimization import (
        DIRECTIONS,
        PAPER_PERCENTILES,
        optimize_property,
        records_to_property_data,
    )
    from generators.trainer import load_checkpoint

    console = Console(stderr=True)

    def fail(message: str) -> None:
        console.print(f"[red]error:[/red] {message}")
        raise typer.Exit(code=1)

    if direction not in DIRECTIONS:
        fail(f"--direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    if percentiles is not None:
        try:
            thresholds = tuple(float(x) for x in percentiles.split(","))
        except ValueError:
            thresholds = ()
        if len(thresholds) != 3:
            fail(f"--percentiles needs three comma-separated numbers, got {percentiles!r}")
    elif direction == "min" and dataset in PAPER_PERCENTILES:
        thresholds = PAPER_PERCENTILES[dataset]
    else:
        fail(f"no paper percentiles for {dataset!r} ({direction}); give --percentiles")
    try:
        model, _ = load_checkpoint(checkpoint)
        if not getattr(model, "predicts_property", False):
            fail(f"{checkpoint}: the model has no property head (model.predict_property)")
        if predictor.endswith(".pkl"):
            from analysis.property_predictor import load_predictor

            score = load_predictor(predictor)
            if score.property_name != model.config["property"]:
                fail(f"{predictor} predicts {score.property_name}, not {model.config['property']}")
        else:
            scorer = model if predictor == "self" else load_checkpoint(predictor)[0]
            if not getattr(scorer, "predicts_property", False):
                fail(f"{predictor}: the predictor has no property head (model.predict_property)")
            scorer.eval()
            score = _head_predictor(scorer)
        records = load_split(dataset, split, data_dir=data_dir, limit=n, progress=False).records
        data, errors = records_to_property_data(records, str(model.config["property"]))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if not data:
        fail(f"{dataset}/{split}: no usable starting crystals ({len(errors)} failed)")
    model.eval()
    if chain_steps is not None:
        model.configure_sampling(steps=chain_steps)
    started = time.perf_counter()
    try:
        result = optimize_property(
            model,
            data_list_to_batch(data),
            score,
            thresholds,
            steps=steps,
            lr=lr,
            saves=saves,
            direction=direction,
            is_valid=_is_valid,
            generator=torch.Generator().manual_seed(seed),
        )
    except ValueError as exc:  # e.g. --saves below 2
        fail(str(exc))
    summary = {
        "checkpoint": str(checkpoint),
        "predictor": predictor,
        "independent_predictor": predictor != "self",
        "dataset": dataset,
        "split": split,
        "starts": len(data),
        "steps": steps,
        "lr": lr,
        "snapshot_steps": result.steps,
        "chain_steps": chain_steps,
        "direction": direction,
        "percentiles": list(thresholds),
        "valid_fraction": float(result.valid.mean()),
        "best": [None if not abs(b) < float("inf") else float(b) for b in result.best],
        **result.rates,
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = out or default_summary_path(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    for key in ("SR5", "SR10", "SR15"):
        typer.echo(f"{key}: {summary[key]:.3f}")
    console.print(f"{len(data)} starts, {len(result.steps)} snapshots each; summary in {path}")


def register(app: typer.Typer) -> None:
    """Add the ``optimize`` command to the ``dftloop`` application.

    Parameters
    ----------
    app
        The typer application of :mod:`flows.cli`.
    """
    app.command("optimize")(optimize)
