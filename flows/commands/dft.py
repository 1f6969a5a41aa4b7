"""``dftloop dft``: DFT settings of a dataset.

::

    dftloop dft converge --dataset carbon_24                # k-spacing and cutoff, pw.x
    dftloop dft converge --dataset carbon_24 --n-random 2 --max-random-atoms 8 --n-procs 2
    dftloop dft show --dataset carbon_24                    # the protocol a relaxer would use
    dftloop dft phases --dataset carbon_24 --pressures 0,10  # diamond/graphite/lonsdaleite H

``converge`` runs pw.x SCFs on the dataset's reference structures (carbon: diamond, graphite,
lonsdaleite) plus a few random training structures, tightening the k-point spacing and then the
cutoff until every energy difference changes by less than ``--tol-mev`` meV/atom
(:func:`relax.convergence.converge_dft`). Every computed point is kept in
``<out>.partial.json`` and reused when the same study is run again (an interrupted study
resumes). The result goes to ``$DFTLOOP_HOME/cache/converged/<dataset>.json``, which the
dataset's protocol then uses by
default; ``--write-default`` also writes the copy shipped in the package.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated, Any

import typer

dft_app = typer.Typer(help="DFT settings: convergence study, the protocol in use.")

CARBON_DATASETS = ("carbon_24",)
"""Datasets whose reference structures include the carbon allotropes."""


def reference_items(
    dataset: str,
    n_random: int,
    max_random_atoms: int,
    seed: int,
    data_dir: Path | None = None,
) -> list[tuple[str, Any]]:
    """The structures of a convergence study: prototypes, then random training structures.

    Parameters
    ----------
    dataset
        Dataset name.
    n_random
        Random training structures added (drawn with ``seed`` among those with at most
        ``max_random_atoms`` sites).
    max_random_atoms, seed, data_dir
        See above; ``data_dir`` overrides the data directory.

    Returns
    -------
    list
        ``(id, Structure)``; the first is the reference of the energy differences.
    """
    from relax.prototypes import CARBON_REFERENCES

    items: list[tuple[str, Any]] = []
    if dataset in CARBON_DATASETS:
        items += [(name, build()) for name, build in CARBON_REFERENCES.items()]
    if n_random > 0:
        from generators.data import load_split

        records = load_split(dataset, "train", data_dir=data_dir, progress=False).records
        small = [r for r in records if len(r.structure) <= max_random_atoms]
        if not small:
            raise ValueError(f"{dataset}: no training structure with <= {max_random_atoms} sites")
        picked = random.Random(seed).sample(small, min(n_random, len(small)))
        items += [(f"train:{r.material_id}", r.structure) for r in picked]
    return items


@dft_app.command("converge")
def converge(
    dataset: Annotated[str, typer.Option(help="Dataset whose protocol is converged.")] = (
        "carbon_24"
    ),
    n_random: Annotated[int, typer.Option(help="Random training structures added.")] = 2,
    max_random_atoms: Annotated[
        int, typer.Option(help="Largest random training structure, sites.")
    ] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random draw.")] = 0,
    tol_mev: Annotated[
        float, typer.Option(help="Converged when every difference changes less, meV/atom.")
    ] = 1.0,
    kspacings: Annotated[
        str, typer.Option(help="k-point spacings tried, Å⁻¹ (2π included), coarse to fine.")
    ] = "0.5,0.4,0.3,0.25,0.2,0.15",
    cutoff_steps: Annotated[
        str, typer.Option(help="Multiples of the SSSP ecutwfc tried (ecutrho alike).")
    ] = "1.0,1.2,1.4",
    protocol: Annotated[
        list[str] | None,
        typer.Option(help="Protocol field held fixed, key=value (repeatable)."),
    ] = None,
    n_procs: Annotated[int, typer.Option(help="MPI ranks for pw.x.")] = 1,
    timeout: Annotated[float, typer.Option(help="pw.x time limit per SCF, seconds.")] = 3600.0,
    out: Annotated[
        Path | None,
        typer.Option(help="Result JSON (default $DFTLOOP_HOME/cache/converged/<dataset>.json)."),
    ] = None,
    write_default: Annotated[
        bool, typer.Option(help="Also write the default shipped in the package.")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory override.")] = None,
) -> None:
    """Converge the pw.x k-point spacing and cutoff of a dataset's protocol."""
    from rich.console import Console

    from relax.convergence import converge_dft
    from relax.protocol import (
        PACKAGED_CONVERGED_DIR,
        converged_dir,
        dataset_protocol,
        parse_assignments,
    )

    console = Console(stderr=True)
    try:
        overrides = parse_assignments(protocol or [])
        base = dataset_protocol(dataset).with_overrides(**overrides)
        ks = [float(x) for x in kspacings.split(",") if x.strip()]
        steps = [float(x) for x in cutoff_steps.split(",") if x.strip()]
        items = reference_items(dataset, n_random, max_random_atoms, seed, data_dir)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
    console.print(
        f"{dataset}: converging on {', '.join(f'{sid} ({len(s)} sites)' for sid, s in items)}; "
        f"pressure {base.pressure_gpa:g} GPa, dispersion {base.dispersion}"
    )
    # the convergence study starts from the SSSP cutoffs, not from an earlier result
    fixed = base.with_overrides().model_copy(update={"ecutwfc": None, "ecutrho": None})
    target = out or converged_dir() / f"{dataset}.json"
    checkpoint = target.with_name(target.stem + ".partial.json")
    try:
        result = converge_dft(
            items,
            dataset=dataset,
            protocol=fixed,
            kspacings=ks,
            cutoff_steps=steps,
            tol_mev=tol_mev,
            relaxer_kwargs={"n_procs": n_procs, "timeout_s": timeout},
            log=console.print,
            checkpoint=checkpoint,
        )
    except RuntimeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
    path = result.write(target)
    checkpoint.unlink(missing_ok=True)
    console.print(result.markdown())
    console.print(f"converged: {json.dumps(result.converged)}; written to {path}")
    if write_default:
        packaged = result.write(PACKAGED_CONVERGED_DIR / f"{dataset}.json")
        console.print(f"package default written to {packaged}")


@dft_app.command("phases")
def phases(
    dataset: Annotated[str, typer.Option(help="Dataset whose protocol is used.")] = "carbon_24",
    relaxer: Annotated[str, typer.Option(help="chgnet | espresso | chgnet+espresso | ...")] = (
        "espresso"
    ),
    pressures: Annotated[str, typer.Option(help="Pressures, GPa, comma-separated.")] = "0,10",
    protocol: Annotated[
        list[str] | None, typer.Option(help="Protocol override, key=value (repeatable).")
    ] = None,
    n_procs: Annotated[int, typer.Option(help="MPI ranks for pw.x.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Write every RelaxResult as JSON.")] = None,
) -> None:
    """Relax diamond, graphite and lonsdaleite at each pressure; print enthalpies vs diamond.

    The table gives, per pressure, each phase's energy, enthalpy ``H = E + pV`` and volume per
    atom, ``H − H(diamond)`` in meV/atom, and graphite's interlayer distance (``c / 2``).
    """
    from rich.console import Console
    from rich.table import Table

    from relax import get_relaxer
    from relax.io import save_results
    from relax.protocol import dataset_protocol, parse_assignments
    from relax.prototypes import CARBON_REFERENCES, interlayer_distance

    console = Console(width=140)
    try:
        base = dataset_protocol(dataset).with_overrides(**parse_assignments(protocol or []))
        values = [float(x) for x in pressures.split(",") if x.strip()]
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
    items = [(name, build()) for name, build in CARBON_REFERENCES.items()]
    table = Table(title=f"{relaxer}, {dataset} protocol, dispersion {base.dispersion}")
    for col in (
        "p GPa",
        "phase",
        "status",
        "E eV/atom",
        "H eV/atom",
        "V Å³/atom",
        "H − H(diamond) meV/atom",
    ):
        table.add_column(col)
    table.add_column("layer Å")
    everything = []
    for p in values:
        chosen = base.with_overrides(pressure_gpa=p)
        stage = {"n_procs": n_procs} if "espresso" in relaxer else {}
        if "+" in relaxer:
            engine = get_relaxer(relaxer, protocol=chosen, espresso=stage)
        else:
            engine = get_relaxer(relaxer, protocol=chosen, **stage)
        results = engine.relax(items)
        everything += results
        ref = results[0].final_enthalpy_per_atom_eV
        for (name, _), r in zip(items, results, strict=True):
            h = r.final_enthalpy_per_atom_eV
            diff = "-" if h is None or ref is None else f"{(h - ref) * 1000:.1f}"
            layer = (
                f"{interlayer_distance(r.structure()):.3f}"
                if name == "graphite" and r.final_structure
                else ""
            )
            table.add_row(
                f"{p:g}",
                name,
                r.status,
                "-" if r.final_energy_per_atom_eV is None else f"{r.final_energy_per_atom_eV:.5f}",
                "-" if h is None else f"{h:.5f}",
                "-" if r.final_volume_per_atom_A3 is None else f"{r.final_volume_per_atom_A3:.3f}",
                diff,
                layer,
            )
    console.print(table)
    if out is not None:
        save_results(everything, out, relaxer=relaxer)
        console.print(f"results written to {out}")


@dft_app.command("show")
def show(
    dataset: Annotated[str, typer.Option(help="Dataset.")] = "carbon_24",
    protocol: Annotated[
        list[str] | None, typer.Option(help="Override, key=value (repeatable).")
    ] = None,
) -> None:
    """Print the relaxation protocol of a dataset (with overrides) as JSON."""
    from relax.protocol import dataset_protocol, parse_assignments

    try:
        chosen = dataset_protocol(dataset).with_overrides(**parse_assignments(protocol or []))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(json.dumps(chosen.model_dump(), indent=1))


def register(app: typer.Typer) -> None:
    """Add the ``dft`` command group to the ``dftloop`` application.

    Parameters
    ----------
    app
        The typer application of :mod:`flows.cli`.
    """
    app.add_typer(dft_app, name="dft")
