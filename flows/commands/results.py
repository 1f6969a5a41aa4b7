"""``dftloop results``: list and export what the result store holds.

::

    dftloop results list [--kind relaxation] [--model dataset] [--limit 20] [--home DIR]
    dftloop results export out.csv   [--kind analysis]     # one row per document, flat columns
    dftloop results export out.extxyz [--kind relaxation]  # relaxed structures (samples: generated)
    dftloop results export docs.json.gz --kind sample --kind relaxation  # whole documents
    dftloop results import docs.json.gz                     # into this store; keeps what it has
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
KindsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--kind",
        help="Document kind: sample, relaxation or analysis (repeat for a .json.gz export; "
        "default relaxation).",
    ),
]
RelaxerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--relaxer",
        help="Only relaxations and analyses of this relaxer, e.g. chgnet+espresso (repeat).",
    ),
]
ModelOption = Annotated[str | None, typer.Option(help="Only documents of this model.")]

DOCUMENTS_FORMAT = "dftloop-store-documents"
"""The ``format`` field of a .json.gz export."""
DOCUMENTS_VERSION = 1


def register(parent: typer.Typer) -> None:
    """Add the ``results`` command group to the ``dftloop`` application."""
    parent.add_typer(app, name="results")


def _check_kind(kind: str) -> str:
    if kind not in KIND_CHOICES:
        raise typer.BadParameter(f"unknown kind {kind!r}; choose from {', '.join(KIND_CHOICES)}")
    return kind


def _criteria(
    model: str | None, relaxers: list[str] | None = None, kind: str = "relaxation"
) -> dict[str, Any]:
    criteria: dict[str, Any] = {"provenance.model": model} if model else {}
    if relaxers and kind in ("relaxation", "analysis"):
        criteria["provenance.relaxer"] = {"$in": list(relaxers)}
    return criteria


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
    out: Annotated[Path, typer.Argument(help="Output file: .csv, .extxyz (.xyz) or .json.gz.")],
    kind: KindsOption = None,
    model: ModelOption = None,
    relaxer: RelaxerOption = None,
    home: HomeOption = None,
) -> None:
    """Export documents to CSV, extended XYZ or whole documents (.json.gz).

    CSV writes flat columns, one row per document. extxyz writes one frame per structure:
    relaxations give their relaxed structure, samples their generated structure, analyses are
    not exportable (no structure); documents without a structure are skipped and counted.
    .json.gz writes the documents whole, blobs included, of every ``--kind`` given, and the
    sample directories the documents' structures came from: ``dftloop results import``
    adds them to another store and project directory, so that a run resumes there (or its
    report is written again) without sampling or relaxing them again. Paths under the project
    directory, the DFT scratch folder and the dftloop checkout are written as
    ``$DFTLOOP_HOME``, ``$DFTLOOP_SCRATCH_DIR`` and ``$DFTLOOP_ROOT``; other absolute paths are
    listed.
    """
    from flows.store import ResultStore

    kinds = [_check_kind(k) for k in (kind or ["relaxation"])]
    console = Console()
    suffix = "".join(out.suffixes[-2:]).lower() if out.name.endswith(".gz") else out.suffix.lower()
    if suffix not in (".csv", ".extxyz", ".xyz", ".json.gz"):
        raise typer.BadParameter(f"unknown export format {suffix!r}; use .csv, .extxyz or .json.gz")
    if suffix != ".json.gz" and len(kinds) > 1:
        raise typer.BadParameter(f"{suffix} takes one --kind; .json.gz takes several")
    out.parent.mkdir(parents=True, exist_ok=True)
    with ResultStore(home=home) as store:
        if suffix == ".json.gz":
            docs = [
                doc
                for k in kinds
                for doc in store.export_documents(k, _criteria(model, relaxer, k))
            ]
        else:
            docs = store.query(kinds[0], _criteria(model, relaxer, kinds[0]))
    if suffix == ".csv":
        n = write_csv(out, docs)
        console.print(f"wrote {n} {kinds[0]} rows to {out}")
    elif suffix == ".json.gz":
        sample_dirs = _packed_sample_dirs(docs)
        left = write_documents(out, docs, sample_dirs, machine_paths(home))
        counts = ", ".join(f"{k}={sum(d['kind'] == k for d in docs)}" for k in kinds)
        console.print(
            f"wrote {len(docs)} documents ({counts}) and {len(sample_dirs)} sample "
            f"directories to {out}"
        )
        if left:
            console.print("absolute paths of this machine left in the file:")
            for path in left:
                console.print(f"  {path}", markup=False)
    else:
        if kinds[0] == "analysis":
            raise typer.BadParameter("analysis documents have no structure; export them as CSV")
        written, skipped = write_extxyz(out, docs, kinds[0])
        console.print(f"wrote {written} structures to {out} ({skipped} without structure skipped)")


@app.command("import")
def import_results(
    source: Annotated[Path, typer.Argument(help="A .json.gz file of dftloop results export.")],
    home: HomeOption = None,
) -> None:
    """Add the documents of a .json.gz export to this store.

    Documents the store already has are kept (a relaxation that is not finished here, e.g.
    ``interrupted``, is replaced by a finished one from the file); the counts are printed.
    Sample directories in the file are written under ``samples/`` of the project directory
    unless a complete one of the same name is there. ``$DFTLOOP_HOME``,
    ``$DFTLOOP_SCRATCH_DIR`` and ``$DFTLOOP_ROOT`` become this machine's paths.
    """
    from dftloop_io.job_store import dftloop_home
    from dftloop_io.samples import unpack_directory
    from flows.store import ResultStore

    expansions = {placeholder: path for path, placeholder in machine_paths(home).items()}
    try:
        docs, sample_dirs = read_documents(source, expansions)
        written = [unpack_directory(d, dftloop_home(home) / "samples") for d in sample_dirs]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with ResultStore(home=home) as store:
        counts = store.import_documents(docs)
    Console().print(
        f"{source}: {len(docs)} documents; added {counts['added']}, "
        f"replaced {counts['replaced']} unfinished, kept {counts['kept']} already stored; "
        f"{sum(written)} of {len(sample_dirs)} sample directories written "
        "(the others were complete here)"
    )


def machine_paths(home: Path | None) -> dict[str, str]:
    """Paths of the machine and their placeholders, ``{absolute path: placeholder}``.

    The project directory, the DFT scratch folder and the dftloop checkout: what
    :func:`write_documents` and ``results publish`` replace.
    """
    from dftloop_io.job_store import dftloop_home
    from relax.espresso_relaxer import SCRATCH_ENV, default_scratch_root

    return {
        str(dftloop_home(home).resolve()): "$DFTLOOP_HOME",
        str(default_scratch_root()): f"${SCRATCH_ENV}",
        str(Path(__file__).resolve().parents[2]): "$DFTLOOP_ROOT",
    }


def _packed_sample_dirs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sample directories named in the documents' provenance that exist here, packed.

    Samples, and the relaxations and analyses of samples, name the directory they came from.
    """
    from dftloop_io.samples import pack_directory

    names = {
        str(((d.get("provenance") or {}).get("config") or {}).get("sample_dir") or "") for d in docs
    }
    names.discard("")
    return [pack_directory(name) for name in sorted(names) if (Path(name) / "index.json").is_file()]


def write_documents(
    path: Path,
    docs: list[dict[str, Any]],
    sample_dirs: list[dict[str, Any]] | None = None,
    replacements: dict[str, str] | None = None,
) -> list[str]:
    """Write store documents (blobs inlined) as a gzipped JSON file :func:`read_documents` reads.

    Parameters
    ----------
    path
        Destination (``.json.gz``); written atomically, with the same bytes for the same
        documents.
    docs
        Documents of :meth:`flows.store.ResultStore.export_documents`.
    sample_dirs
        Packed sample directories (:func:`dftloop_io.samples.pack_directory`).
    replacements
        ``{absolute path prefix: placeholder}`` applied to the whole file
        (:func:`machine_paths`).

    Returns
    -------
    list of str
        Absolute paths still in the file after the replacements.
    """
    from monty.json import jsanitize

    from dftloop_io.gzip_json import write_gzip_json
    from dftloop_io.publish import absolute_paths, replace_prefixes

    payload = {
        "format": DOCUMENTS_FORMAT,
        "version": DOCUMENTS_VERSION,
        "documents": jsanitize(docs, strict=False),
        "sample_dirs": sample_dirs or [],
    }
    text = replace_prefixes(json.dumps(payload), replacements or {})
    write_gzip_json(path, json.loads(text))
    return absolute_paths(text)


def read_documents(
    path: Path, expansions: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read the documents and sample directories of a file written by :func:`write_documents`.

    Parameters
    ----------
    path
        The file.
    expansions
        ``{placeholder: absolute path}`` to put this machine's paths back.

    Returns
    -------
    tuple
        ``(documents, packed sample directories)``.

    Raises
    ------
    ValueError
        When the file is missing, not gzipped JSON, or not a dftloop documents export.
    """
    from dftloop_io.gzip_json import read_gzip_json
    from dftloop_io.publish import replace_prefixes

    payload = read_gzip_json(path)
    if payload is None:
        raise ValueError(f"{path}: missing, truncated or not gzipped JSON")
    if not isinstance(payload, dict) or payload.get("format") != DOCUMENTS_FORMAT:
        raise ValueError(f"{path}: not a dftloop results export (no format {DOCUMENTS_FORMAT!r})")
    if payload.get("version") != DOCUMENTS_VERSION:
        raise ValueError(
            f"{path}: export version {payload.get('version')!r}; this dftloop reads "
            f"version {DOCUMENTS_VERSION}"
        )
    if expansions:
        payload = json.loads(replace_prefixes(json.dumps(payload), expansions))
    return list(payload["documents"]), list(payload.get("sample_dirs") or [])


@app.command("publish")
def publish_command(
    report: Annotated[Path, typer.Argument(help="Report directory (with report.md).")],
    destination: Annotated[Path, typer.Argument(help="Directory to write the copy to.")],
    home: HomeOption = None,
) -> None:
    """Copy a report to share or commit it: this machine's paths become variable names.

    The project directory is written as ``$DFTLOOP_HOME``, the DFT scratch folder as
    ``$DFTLOOP_SCRATCH_DIR`` and the dftloop checkout as ``$DFTLOOP_ROOT``; any other absolute
    path left in the text files is listed (exit status 1), so that nothing of the machine is
    published unnoticed.
    """
    from dftloop_io.publish import publish_report

    try:
        left = publish_report(report, destination, machine_paths(home))
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
