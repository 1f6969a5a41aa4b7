"""``dftloop results``: list and export what the result store holds.

::

    dftloop results list [--kind relaxation] [--model dataset] [--limit 20] [--home DIR]
    dftloop results export out.csv   [--kind analysis]     # one row per document, flat columns
    dftloop results export out.extxyz [--kind relaxation]  # relaxed structures (samples: generated)
    dftloop results publish REPORT_DIR DEST                 # a report without this machine's paths

The store is the one of :mod:`flows.store` (``DFTLOOP_HOME`` or ``JOBFLOW_CONFIG_FILE``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(name="results", help="List and export the result store.", no_args_is_help=True)

KIND_CHOICES = ("sample", "relaxation", "analysis")

LIST_COLUMNS: dict[str, tuple[str, ...]] = {
    "sample": ("sample_id", "formula", "n_sites", "target_id", "error"),
    "relaxation": (
        "structure_id",
        "relaxer",
        "status",
        "final_energy_per_atom_eV",
        "n_ionic_steps",
        "wall_time_s",
        "error",
    ),
    "analysis": (
        "structure_id",
        "formula",
        "status",
        "delta_e_mev_per_atom",
        "rmsd",
        "delta_volume_frac",
        "error",
    ),
}

HomeOption = Annotated[
    Path | None, typer.Option(help="Project directory (default DFTLOOP_HOME or ./dftloop-runs).")
]
KindOption = Annotated[str, typer.Option(help="Document kind: sample, relaxation or analysis.")]
ModelOption = Annotated[str | None, typer.Option(help="Only documents of this model.")]


def register(parent: typer.Typer) -> None:
    """Add the ``results`` command group to the ``dftloop`` application."""
    parent.add_typer(app, name="results")


def _check_kind(kind: str) -> str:
    if kind not in KIND_CHOICES:
        raise typer.BadParameter(f"unknown kind {kind!r}; choose from {', '.join(KIND_CHOICES)}")
    return kind


def _criteria(model: str | None) -> dict[str, Any]:
    return {"provenance.model": model} if model else {}


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``a.b`` columns; lists and structures become JSON text.

    Parameters
    ----------
    doc
        A store document.
    prefix
        Column prefix (used in recursion).

    Returns
    -------
    dict
        One level of keys; structure dicts (``@class`` Structure) and blob references are
        written as compact JSON.
    """
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "@class" not in value and "blob_uuid" not in value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, dict | list):
            out[name] = json.dumps(value, separators=(",", ":"))
        else:
            out[name] = value
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


@app.command("list")
def list_results(
    kind: KindOption = "relaxation",
    model: ModelOption = None,
    limit: Annotated[int, typer.Option(help="Show at most this many (0: all).")] = 20,
    home: HomeOption = None,
) -> None:
    """List documents of one kind, with the counts of every kind."""
    from flows.store import KINDS, ResultStore

    _check_kind(kind)
    console = Console()
    with ResultStore(home=home) as store:
        counts = {k: store.count(k, _criteria(model)) for k in KINDS}
        docs = store.query(kind, _criteria(model), limit=limit)
        where = store.describe()["docs"]
    columns = LIST_COLUMNS[kind]
    table = Table(title=f"{kind} documents ({len(docs)} of {counts[kind]} shown)")
    for column in columns:
        table.add_column(column)
    for doc in docs:
        table.add_row(*(_fmt(doc.get(c)) for c in columns))
    console.print(table)
    console.print("counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    console.print("store: " + ", ".join(f"{k}={v}" for k, v in where.items()))


@app.command("export")
def export_results(
    out: Annotated[Path, typer.Argument(help="Output file: .csv or .extxyz (.xyz).")],
    kind: KindOption = "relaxation",
    model: ModelOption = None,
    home: HomeOption = None,
) -> None:
    """Export documents to CSV (flat columns) or extended XYZ (one frame per structure).

    For extxyz, relaxations give their relaxed structure, samples their generated structure and
    analyses are not exportable (no structure). Documents without a structure are skipped and
    counted.
    """
    from flows.store import ResultStore

    _check_kind(kind)
    console = Console()
    with ResultStore(home=home) as store:
        docs = store.query(kind, _criteria(model))
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        n = write_csv(out, docs)
        console.print(f"wrote {n} {kind} rows to {out}")
    elif suffix in (".extxyz", ".xyz"):
        if kind == "analysis":
            raise typer.BadParameter("analysis documents have no structure; export them as CSV")
        written, skipped = write_extxyz(out, docs, kind)
        console.print(f"wrote {written} structures to {out} ({skipped} without structure skipped)")
    else:
        raise typer.BadParameter(f"unknown export format {out.suffix!r}; use .csv or .extxyz")


@app.command("publish")
def publish_command(
    report: Annotated[Path, typer.Argument(help="Report directory (with report.md).")],
    destination: Annotated[Path, typer.Argument(help="Directory to write the copy to.")],
    home: HomeOption = None,
) -> None:
    """Copy a report to share or commit it: this machine's paths become variable names.

    The project directory is written as ``$DFTLOOP_HOME`` and the DFT scratch folder as
    ``$DFTLOOP_SCRATCH_DIR``; any other absolute path left in the text files is listed (exit
    status 1), so that nothing of the machine is published unnoticed.
    """
    from dftloop_io.job_store import dftloop_home
    from dftloop_io.publish import publish_report
    from relax.espresso_relaxer import SCRATCH_ENV, default_scratch_root

    replacements = {
        str(dftloop_home(home).resolve()): "$DFTLOOP_HOME",
        str(default_scratch_root()): f"${SCRATCH_ENV}",
    }
    try:
        left = publish_report(report, destination, replacements)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc)) from None
    console = Console()
    console.print(f"wrote {destination}")
    if left:
        console.print("absolute paths left (edit them before publishing):")
        for line in left:
            console.print(f"  {line}", markup=False)
        raise typer.Exit(1)


def write_csv(path: Path, docs: list[dict[str, Any]]) -> int:
    """Write documents as flat CSV rows (see :func:`flatten`); return the number of rows."""
    rows = [flatten(d) for d in docs]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def write_extxyz(path: Path, docs: list[dict[str, Any]], kind: str) -> tuple[int, int]:
    """Write the structures of documents to extended XYZ with their ids and energies.

    Returns
    -------
    tuple of int
        ``(written, skipped)``.
    """
    from ase.io import write
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    field = "final_structure" if kind == "relaxation" else "structure"
    frames, skipped = [], 0
    for doc in docs:
        if not doc.get(field):
            skipped += 1
            continue
        atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(doc[field]))
        atoms.info = {
            "doc_id": doc["doc_id"],
            "structure_id": str(doc.get("structure_id") or doc.get("sample_id")),
            "model": str((doc.get("provenance") or {}).get("model")),
        }
        if kind == "relaxation":
            atoms.info["relaxer"] = str(doc.get("relaxer"))
            atoms.info["status"] = str(doc.get("status"))
            if doc.get("final_energy_eV") is not None:
                atoms.info["energy_eV"] = float(doc["final_energy_eV"])
        frames.append(atoms)
    if frames:
        write(str(path), frames, format="extxyz")
    else:
        path.write_text("")
    return len(frames), skipped
