"""``dftloop relax``: relax structures from a file or a sample directory, write results JSON.

::

    dftloop relax samples/ --relaxer chgnet --out relaxed.json
    dftloop relax diamond.cif --relaxer espresso --kspacing 0.3 --n-procs 2 --out dft.json
    dftloop relax samples/ --relaxer chgnet+espresso --limit 5 --out two-stage.json

Unreadable inputs and structures rejected by the relaxer are reported per item (in the table
and the JSON); the others are relaxed. The exit code is 0 when every item succeeded, 2 when
some failed, 1 when nothing could be done at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def _parse_sets(values: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse, else as strings."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def relax(
    input_path: Annotated[
        Path, typer.Argument(help="CIF / extxyz / POSCAR file, sample directory or folder.")
    ],
    relaxer: Annotated[
        str, typer.Option(help="chgnet | espresso | vasp | chgnet+espresso | chgnet+vasp")
    ] = "chgnet",
    out: Annotated[Path, typer.Option(help="Results JSON to write.")] = Path("relaxed.json"),
    limit: Annotated[int | None, typer.Option(help="Only the first N structures.")] = None,
    fmax: Annotated[float | None, typer.Option(help="CHGNet force threshold, eV/Å.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="CHGNet FIRE step limit.")] = None,
    kspacing: Annotated[
        float | None, typer.Option(help="pw.x k-point spacing, 1/Å (2π included).")
    ] = None,
    n_procs: Annotated[int | None, typer.Option(help="MPI ranks for pw.x.")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="pw.x time limit per structure, seconds.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Extra relaxer setting key=value (repeatable; JSON values)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Relax structures with one of the relaxers and write the results as JSON."""
    from rich.console import Console
    from rich.table import Table

    from relax import get_relaxer
    from relax.io import read_structures, save_results, unreadable_results
    from relax.registry import TWO_STAGE

    console = Console(stderr=True)
    try:
        entries = read_structures(input_path, limit=limit)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
    if not entries:
        console.print(f"[red]error:[/red] no structure found in {input_path}")
        raise typer.Exit(code=1)

    ff = {k: v for k, v in {"fmax": fmax, "max_steps": max_steps}.items() if v is not None}
    dft = {
        k: v
        for k, v in {"kspacing": kspacing, "n_procs": n_procs, "timeout_s": timeout}.items()
        if v is not None
    }
    extra = _parse_sets(set_)
    name = relaxer.strip().lower()
    try:
        if name in TWO_STAGE:
            pre_name, final_name = TWO_STAGE[name]
            final_opts = {**dft, "progress": progress} if final_name == "espresso" else {}
            stage_opts = {
                pre_name: {**ff, "progress": progress, **extra.pop(pre_name, {})},
                final_name: {**final_opts, **extra.pop(final_name, {})},
            }
            engine = get_relaxer(name, **stage_opts, **extra)
        elif name == "chgnet":
            engine = get_relaxer(name, **ff, progress=progress, **extra)
        elif name == "espresso":
            engine = get_relaxer(name, **dft, progress=progress, **extra)
        else:
            engine = get_relaxer(name, **extra)
    except (ValueError, ImportError, FileNotFoundError, TypeError) as exc:
        console.print(f"[red]error:[/red] cannot build relaxer {relaxer!r}: {exc}")
        raise typer.Exit(code=1) from None

    unreadable = unreadable_results(entries, engine)
    items = [(sid, s) for sid, s, _ in entries if s is not None]
    console.print(
        f"relaxing {len(items)} structure(s) from {input_path} with [bold]{engine.name}[/bold]"
        + (f" ({len(unreadable)} unreadable)" if unreadable else "")
    )
    relaxed = {r.structure_id: r for r in engine.relax(items)} if items else {}
    results = [unreadable.get(sid) or relaxed[sid] for sid, _, _ in entries]
    save_results(results, out, relaxer=engine.name)

    table = Table(title=f"{engine.name}: {out}")
    for col in ("id", "status", "E0 eV/atom", "E eV/atom", "steps", "time s", "error"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.structure_id,
            r.status,
            _fmt(r.initial_energy_per_atom_eV),
            _fmt(r.final_energy_per_atom_eV),
            str(r.n_ionic_steps),
            f"{r.wall_time_s:.1f}",
            (r.error or "")[:80],
        )
    console.print(table)
    failed = sum(r.error is not None for r in results)
    console.print(f"{len(results) - failed} ok, {failed} failed; results written to {out}")
    if failed == len(results):
        raise typer.Exit(code=1)
    if failed:
        raise typer.Exit(code=2)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.5f}"


def register(app: typer.Typer) -> None:
    """Add the ``relax`` command to the ``dftloop`` application.

    Parameters
    ----------
    app
        The typer application of :mod:`flows.cli`.
    """
    app.command("relax")(relax)
