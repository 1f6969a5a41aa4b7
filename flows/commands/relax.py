"""``dftloop relax``: relax structures from a file or a sample directory, write results JSON.

::

    dftloop relax samples/ --relaxer chgnet --out relaxed.json
    dftloop relax diamond.cif --relaxer espresso --kspacing 0.3 --n-procs 2 --out dft.json
    dftloop relax samples/ --relaxer chgnet+espresso --limit 5 --out two-stage.json
    dftloop relax graphite.cif --relaxer espresso --dataset carbon_24 --out g.json
    dftloop relax g.cif --relaxer chgnet --pressure-gpa 10 --dispersion d3bj --protocol fmax=0.01

The relaxation protocol (pressure, dispersion, DFT k-spacing and cutoffs, thresholds; see
``relax.protocol``) starts from the ``--dataset`` defaults (carbon_24: 10 GPa with D3(BJ) and
its converged DFT settings; others: 0 GPa, no dispersion); ``--pressure-gpa``,
``--dispersion`` and ``--protocol key=value`` override single fields.

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
    dataset: Annotated[
        str | None,
        typer.Option(help="Protocol defaults of this dataset (carbon_24: 10 GPa, D3(BJ))."),
    ] = None,
    pressure_gpa: Annotated[
        float | None, typer.Option(help="Target pressure, GPa (overrides the protocol's).")
    ] = None,
    dispersion: Annotated[
        str | None, typer.Option(help="none | d3bj (overrides the protocol's).")
    ] = None,
    protocol: Annotated[
        list[str] | None,
        typer.Option(help="Protocol field key=value (repeatable), e.g. kspacing=0.2."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Relax structures with one of the relaxers and write the results as JSON."""
    from rich.console import Console
    from rich.table import Table

    from relax import get_relaxer
    from relax.io import read_structures, save_results, unreadable_results
    from relax.protocol import parse_assignments, resolve_protocol
    from relax.registry import TWO_STAGE

    console = Console(stderr=True)
    try:
        fields = {"dataset": dataset, **parse_assignments(protocol or [])}
        fields.update({"pressure_gpa": pressure_gpa, "dispersion": dispersion})
        chosen = resolve_protocol({k: v for k, v in fields.items() if v is not None})
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
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
            engine = get_relaxer(name, **stage_opts, **{"protocol": chosen, **extra})
        elif name == "chgnet":
            engine = get_relaxer(name, **ff, progress=progress, **{"protocol": chosen, **extra})
        elif name == "espresso":
            engine = get_relaxer(name, **dft, progress=progress, **{"protocol": chosen, **extra})
        else:
            engine = get_relaxer(name, **{"protocol": chosen, **extra})
    except (ValueError, ImportError, FileNotFoundError, TypeError) as exc:
        console.print(f"[red]error:[/red] cannot build relaxer {relaxer!r}: {exc}")
        raise typer.Exit(code=1) from None

    unreadable = unreadable_results(entries, engine)
    items = [(sid, s) for sid, s, _ in entries if s is not None]
    console.print(
        f"relaxing {len(items)} structure(s) from {input_path} with [bold]{engine.name}[/bold] "
        f"at {engine.protocol.pressure_gpa:g} GPa, dispersion {engine.protocol.dispersion}"
        + (f" ({len(unreadable)} unreadable)" if unreadable else "")
    )
    relaxed = {r.structure_id: r for r in engine.relax(items)} if items else {}
    results = [unreadable.get(sid) or relaxed[sid] for sid, _, _ in entries]
    save_results(results, out, relaxer=engine.name)

    table = Table(title=f"{engine.name}: {out}")
    cols = ["id", "status", "E0 eV/atom", "E eV/atom"]
    if engine.protocol.pressure_gpa != 0:
        cols += ["H eV/atom"]
    for col in (*cols, "V Å³/atom", "steps", "time s", "error"):
        table.add_column(col)
    for r in results:
        enthalpy = [_fmt(r.final_enthalpy_per_atom_eV)] if len(cols) > 4 else []
        table.add_row(
            r.structure_id,
            r.status,
            _fmt(r.initial_energy_per_atom_eV),
            _fmt(r.final_energy_per_atom_eV),
            *enthalpy,
            _fmt(r.final_volume_per_atom_A3, 3),
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


def _fmt(value: float | None, digits: int = 5) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def register(app: typer.Typer) -> None:
    """Add the ``relax`` command to the ``dftloop`` application.

    Parameters
    ----------
    app
        The typer application of :mod:`flows.cli`.
    """
    app.command("relax")(relax)
