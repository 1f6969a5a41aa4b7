"""``dftloop data``: list, fetch and inspect the benchmark datasets; build MP-20-style data.

::

    dftloop data list
    dftloop data fetch perov_5 [--split train --split val]
    dftloop data show perov_5 --split test [--limit 200]
    dftloop data fetch-mp --out data/my_mp20 [--max-sites 20 --e-hull-max 0.08 ...]

The library (``generators.data``) is imported inside each command so that ``dftloop --help``
stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="data",
    help="Benchmark datasets (perov_5, carbon_24, mp_20, mpts_52) and Materials Project data.",
    no_args_is_help=True,
)

DataDirOption = Annotated[
    Path | None,
    typer.Option(help="Data directory (default: DFTLOOP_DATA_DIR, ../shared/data, user cache)."),
]


def register(parent: typer.Typer) -> None:
    """Add the ``data`` command group to the ``dftloop`` application."""
    parent.add_typer(app, name="data")


def _console() -> Console:
    return Console(width=160)


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code=1)


@app.command("list")
def list_datasets(data_dir: DataDirOption = None) -> None:
    """Show every dataset split: where its file is found, its expected rows and caveats."""
    from generators.data import DATASETS
    from generators.data.locations import data_roots, locate_split

    console = _console()
    table = Table(title="dftloop datasets", show_lines=False)
    for column in ("dataset", "split", "rows", "source", "found at", "notes"):
        table.add_column(column, overflow="fold")
    for name, info in DATASETS.items():
        for split, split_info in info.splits.items():
            located = locate_split(name, split, data_dir)
            rows = f"{split_info.expected_rows:,}" + ("" if split_info.rows_verified else " (?)")
            notes = []
            if located.path is None:
                where = "[yellow]missing[/yellow] (dftloop data fetch)"
            else:
                where = str(located.path)
                if located.source.subset_note:
                    notes.append(located.source.subset_note)
                if not located.source.has_properties:
                    notes.append("no property columns")
            table.add_row(name, split, rows, located.source.format, where, "; ".join(notes))
    console.print(table)
    console.print("searched: " + ", ".join(str(r) for r in data_roots(data_dir)))
    for name, info in DATASETS.items():
        cov = f"COV cutoffs {info.cov_struct_cutoff}/{info.cov_comp_cutoff}"
        flag = "" if info.cov_cutoffs_published else " (not published: borrowed, FLAGGED)"
        console.print(
            f"[bold]{name}[/bold]: property {info.property_name or 'none'}, "
            f"max_atoms {info.max_atoms}, {cov}{flag}"
        )


@app.command("fetch")
def fetch(
    dataset: Annotated[str, typer.Argument(help="perov_5, carbon_24, mp_20 or mpts_52.")],
    split: Annotated[
        list[str] | None, typer.Option("--split", "-s", help="Split(s); default all three.")
    ] = None,
    data_dir: DataDirOption = None,
    progress: Annotated[bool, typer.Option(help="Show download progress.")] = True,
) -> None:
    """Download missing files of a dataset (with files present, only verify their checksums)."""
    from generators.data import DATASETS
    from generators.data.download import DownloadError, fetch_split

    if dataset not in DATASETS:
        _fail(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    splits = split or list(DATASETS[dataset].splits)
    console = _console()
    table = Table(title=f"dftloop data fetch {dataset}")
    for column in ("split", "action", "file", "verification"):
        table.add_column(column, overflow="fold")
    failures = 0
    for name in splits:
        try:
            result = fetch_split(dataset, name, data_dir, progress=progress)
        except (DownloadError, KeyError, OSError) as exc:
            failures += 1
            table.add_row(name, "[red]failed[/red]", str(exc), "")
            continue
        table.add_row(name, result.action, str(result.path), result.source.verification)
    console.print(table)
    if failures:
        raise typer.Exit(code=1)


@app.command("show")
def show(
    dataset: Annotated[
        str,
        typer.Argument(help="perov_5, carbon_24, mp_20, mpts_52, or a CSV / .json.zip file."),
    ],
    split: Annotated[str, typer.Option("--split", "-s", help="train, val or test.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Only the first N rows.")] = None,
    data_dir: DataDirOption = None,
    like: Annotated[
        str, typer.Option(help="For a file: the dataset whose schema it follows.")
    ] = "mp_20",
    top: Annotated[int, typer.Option(help="Elements to list.")] = 15,
    errors: Annotated[int, typer.Option(help="Row errors to list.")] = 10,
) -> None:
    """Load a split (or a file) and summarise it: rows, errors, elements, atoms per cell."""
    from generators.data import DATASETS, DataNotFoundError, load_split
    from generators.data.loading import load_file
    from generators.data.summary import summarise

    try:
        if dataset not in DATASETS and Path(dataset).is_file():
            data = load_file(dataset, like=like, split=split, limit=limit)
            dataset = Path(dataset).name
        else:
            data = load_split(dataset, split, data_dir=data_dir, limit=limit)
    except (DataNotFoundError, KeyError, ValueError) as exc:
        _fail(str(exc).strip("'\""))
        return
    summary = summarise(data)
    console = _console()
    console.print(
        f"[bold]{dataset}/{split}[/bold] from {data.source_path} "
        f"({'cache' if data.from_cache else 'parsed'})"
    )
    for note in data.notes:
        console.print(f"  note: {note}")
    console.print(
        f"rows {summary.rows:,}  structures {summary.records:,}  errors {summary.errors:,}"
    )

    sizes = Table(title="atoms per cell")
    sizes.add_column("N", justify="right")
    sizes.add_column("structures", justify="right")
    for n, count in summary.num_atoms.items():
        sizes.add_row(str(n), f"{count:,}")
    console.print(sizes)

    elements = Table(title=f"elements (top {top} of {len(summary.element_counts)})")
    elements.add_column("element")
    elements.add_column("structures", justify="right")
    for symbol, count in list(summary.element_counts.items())[:top]:
        elements.add_row(symbol, f"{count:,}")
    console.print(elements)

    if data.errors:
        bad = Table(title=f"row errors (first {min(errors, len(data.errors))})")
        bad.add_column("material_id")
        bad.add_column("reason", overflow="fold")
        for err in data.errors[:errors]:
            bad.add_row(err.material_id, err.reason)
        console.print(bad)


@app.command("fetch-mp")
def fetch_mp(
    out: Annotated[Path, typer.Option(help="Output folder for train/val/test.csv + query.json.")],
    max_sites: Annotated[int, typer.Option(help="Maximum sites per cell.")] = 20,
    e_hull_max: Annotated[float, typer.Option(help="Max energy above hull, eV/atom.")] = 0.08,
    formation_energy_max: Annotated[
        float, typer.Option(help="Formation energy upper bound (strict), eV/atom.")
    ] = 2.0,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="Excluded element (repeatable); default noble gases + radioactive."),
    ] = None,
    elements: Annotated[
        list[str] | None, typer.Option(help="Required element (repeatable).")
    ] = None,
    chemsys: Annotated[str | None, typer.Option(help="Chemical system, e.g. Li-Fe-O.")] = None,
    experimental_only: Annotated[
        bool, typer.Option(help="Only ICSD-sourced materials (theoretical=False), as MP-20.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the 60/20/20 material-id hash split.")] = 42,
    endpoint: Annotated[
        str | None, typer.Option(help="API address (default: the public Materials Project).")
    ] = None,
    retries: Annotated[int, typer.Option(help="Attempts on HTTP 429/5xx.")] = 4,
    backoff: Annotated[float, typer.Option(help="First retry delay in seconds.")] = 2.0,
) -> None:
    """Query the Materials Project (key from MP_API_KEY) and write an MP-20-style dataset."""
    from pydantic import ValidationError

    from generators.data.materials_project import MPError, MPQueryCriteria, fetch_mp_dataset

    settings: dict[str, object] = {
        "max_sites": max_sites,
        "energy_above_hull_max": e_hull_max,
        "formation_energy_max": formation_energy_max,
        "elements": elements or None,
        "chemsys": chemsys,
        "experimental_only": experimental_only,
        "split_seed": seed,
    }
    if exclude is not None:
        settings["exclude_elements"] = exclude
    try:
        criteria = MPQueryCriteria(**settings)
    except ValidationError as exc:
        _fail(f"invalid criteria: {exc.errors()[0]['msg']}")
        return
    try:
        result = fetch_mp_dataset(
            out, criteria, endpoint=endpoint, retries=retries, backoff_s=backoff
        )
    except MPError as exc:
        _fail(f"{type(exc).__name__}: {exc}")
        return
    console = _console()
    table = Table(title=f"Materials Project -> {result.out_dir}")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for name, count in result.counts.items():
        table.add_row(name, f"{count:,}")
    console.print(table)
    console.print(
        f"{result.n_documents} documents returned, {len(result.rejected)} not written "
        f"(see {result.out_dir / 'query.json'})"
    )
