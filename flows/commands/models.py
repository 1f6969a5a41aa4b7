"""``dftloop models``: the trained checkpoints that ship with dftloop (and user-registered ones).

::

    dftloop models list                       # name, model, dataset, task, size, headline metric
    dftloop models show diffcsp-perov5-csp    # the whole card: training record, test metrics
    dftloop models path diffcsp-perov5-csp    # the verified local file (downloads a URL card)
    dftloop models export RUN/last.pt OUT.pt  # the small shippable form of a trainer checkpoint
    dftloop models table                      # Markdown table of every card's test metrics

A registered name works wherever a checkpoint path does (``dftloop sample --checkpoint NAME``,
the flows' ``checkpoint`` parameter, ``DFTLOOP_MAIN_CHECKPOINT``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from analysis.training_budget import cpu_hours_text

app = typer.Typer(name="models", help="Shipped and registered checkpoints.", no_args_is_help=True)


def register(parent: typer.Typer) -> None:
    """Add the ``models`` command group to the ``dftloop`` application."""
    parent.add_typer(app, name="models")


def _headline(metrics: list[dict]) -> str:
    """The first metric row as ``name value (paper x)``."""
    if not metrics:
        return "not evaluated"
    row = metrics[0]
    value = row.get("value")
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    paper = row.get("paper")
    return f"{row['name']} {shown}" + (f" (paper {paper})" if paper is not None else "")


@app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the cards as JSON.")] = False,
) -> None:
    """List the registered checkpoints."""
    from generators.model_zoo import list_models

    cards = list_models()
    if as_json:
        print(json.dumps([c.to_dict() for c in cards], indent=1))
        return
    table = Table(title="dftloop models")
    for column in ("name", "model", "dataset", "task", "size", "where", "test metric"):
        table.add_column(column)
    for card in cards:
        table.add_row(
            card.name,
            card.model,
            card.dataset,
            card.task,
            f"{card.size_bytes / 1e6:.1f} MB",
            "shipped" if card.file else "url",
            _headline(card.metrics),
        )
    Console(width=160).print(table)
    if not cards:
        print("no models registered")


def metrics_table(cards: list) -> str:
    """Return a Markdown table: one row per card and metric, the paper's number beside ours.

    Each row names its measuring command (``c1``, ``c2``, ...: the card's recorded
    ``command``); the commands follow the table, each once, and the training command of every
    checkpoint after them.

    Parameters
    ----------
    cards
        :class:`generators.model_zoo.ModelCard` objects.
    """
    lines = [
        "| checkpoint | task | metric | n | dftloop | paper | paper source | training "
        "(epochs, CPU h) | sampling (CPU min) | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    commands: dict[str, str] = {}
    for card in cards:
        training = card.training
        budget = f"{training.get('epochs')} epochs, " + (
            cpu_hours_text(training) or "CPU time not recorded"
        )
        rows = card.metrics or [{"name": "not evaluated yet"}]
        for row in rows:
            paper = row.get("paper")
            # a VAE's card (task: reconstruction) also carries its generation rows
            task = "generation" if row.get("protocol") == "generation" else card.task
            command = row.get("command")
            ref = commands.setdefault(command, f"c{len(commands) + 1}") if command else ""
            sampling = str(row.get("sampling_cpu_minutes", ""))
            if row.get("sampling_note"):  # e.g. how a resumed sampling's time was measured
                sampling += f" ({row['sampling_note']})"
            lines.append(
                f"| {card.name} | {task} | {row['name']} | {row.get('n', '')} | "
                f"{row.get('value', '')} | "
                f"{paper if paper is not None else 'no published number'} | "
                f"{row.get('paper_source') or ''} | {budget} | "
                f"{sampling} | {ref} |"
            )
    if commands:
        lines += ["", "Commands of the rows (run from the repository root):", ""]
        lines += [f"- `{ref}`: `{command}`" for command, ref in commands.items()]
    trained = [(card.name, card.training.get("command")) for card in cards]
    if any(command for _, command in trained):
        lines += ["", "Training commands:", ""]
        lines += [f"- {name}: `{command}`" for name, command in trained if command]
        lines += [
            "",
            "An interrupted training continues with the same command and "
            "`--resume RUN_DIR/last.pt` (the card's `resume_command`).",
        ]
    return "\n".join(lines)


@app.command("table")
def table_command() -> None:
    """Print the registered checkpoints' test metrics beside the papers' as Markdown."""
    from generators.model_zoo import list_models

    print(metrics_table(list_models()))


@app.command("show")
def show_command(name: Annotated[str, typer.Argument(help="Registered model name.")]) -> None:
    """Print one card: what it is, how it was trained, its test-split metrics."""
    from generators.model_zoo import get_card

    try:
        card = get_card(name)
    except KeyError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(code=1) from None
    print(json.dumps(card.to_dict(), indent=1))


@app.command("path")
def path_command(name: Annotated[str, typer.Argument(help="Registered model name.")]) -> None:
    """Print the local file of a registered checkpoint after verifying its sha256."""
    from generators.model_zoo import resolve_checkpoint

    try:
        print(resolve_checkpoint(name))
    except (FileNotFoundError, ValueError, OSError) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None


@app.command("export")
def export_command(
    source: Annotated[Path, typer.Argument(help="Trainer checkpoint (best.pt / last.pt).")],
    target: Annotated[Path, typer.Argument(help="Output file.")],
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
) -> None:
    """Write the small form of a checkpoint (weights for sampling only) and its sha256."""
    from generators.model_zoo import export_checkpoint

    try:
        info = export_checkpoint(source, target, dtype)
    except (FileNotFoundError, ValueError) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
    print(json.dumps({"file": str(target), **info}, indent=1))
