"""``dftloop train``: train a generator on a benchmark dataset.

::

    dftloop train --model diffcsp --dataset perov_5 --config cpu-small [--out DIR]
                  [--resume DIR/last.pt] [--max-minutes M] [--limit N] [--device cpu]
                  [--set train.max_train_crystals=null ...]

The library (:func:`generators.trainer.train`) is imported inside the command so that
``dftloop --help`` stays fast. Multi-GPU/multi-process: ``torchrun --nproc-per-node K
-m flows.cli train ...`` (only rank 0 writes).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer


def train(
    model: Annotated[str, typer.Option(help="Model: diffcsp, cdvae, dpcdvae, continuousp.")],
    dataset: Annotated[str, typer.Option(help="Dataset: perov_5, carbon_24, mp_20, mpts_52.")],
    config: Annotated[
        str, typer.Option(help="Configuration in generators/configs/<model>.yaml.")
    ] = "cpu-small",
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/<model>-<dataset>-<config>).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue from this checkpoint (its config is used).")
    ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Wall-time budget.")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override the epoch count.")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N crystals of each split.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: CUDA if available).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory override.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a configuration value, e.g. --set train.max_train_crystals=null "
            "(the value is read as YAML; repeatable).",
        ),
    ] = None,
) -> None:
    """Train a generator; writes best.pt, last.pt, metrics.jsonl and config.json."""
    from rich.console import Console

    from generators.trainer import TrainingDivergedError
    from generators.trainer import train as run_training

    console = Console(stderr=True)
    try:
        overrides = parse_overrides(set_ or [])
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None
    if max_epochs:
        overrides.setdefault("train", {})["max_epochs"] = max_epochs
    try:
        result = run_training(
            model,
            dataset,
            config,
            out,
            resume=resume,
            max_minutes=max_minutes,
            limit=limit,
            device=device,
            overrides=overrides or None,
            data_dir=data_dir,
            progress=progress,
        )
    except (ValueError, FileNotFoundError, TrainingDivergedError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
    console.print(
        f"{model}/{dataset}: {result.epochs} epochs ({result.stop_reason}), "
        f"best val {result.best_val:.4g}; checkpoints in {result.out_dir}"
    )


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """Turn ``section.key=value`` strings into a nested override dictionary.

    Parameters
    ----------
    assignments
        Strings such as ``"train.max_train_crystals=null"``; values are parsed as YAML.

    Returns
    -------
    dict
        Nested dictionary, e.g. ``{"train": {"max_train_crystals": None}}``.

    Raises
    ------
    ValueError
        If an assignment has no ``=`` or an empty key.
    """
    import yaml

    overrides: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set {item!r}: expected section.key=value")
        node = overrides
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        node[parts[-1]] = value
    return overrides


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the ``dftloop`` application.

    Parameters
    ----------
    app
        The typer application of :mod:`flows.cli`.
    """
    app.command("train")(train)
