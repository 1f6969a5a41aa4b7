r"""Read raw rows (id, structure text, properties) from the two source formats.

- CSV (CDVAE/DiffCSP schema): first column an unnamed pandas index (header ``""`` or
  ``"Unnamed: 0"``), ``material_id``, ``cif`` and property columns; may be gzipped.
- JARVIS-Leaderboard ``*.json.zip``: one JSON file ``{train,val,test}: {material_id: POSCAR}``
  whose POSCAR strings carry literal ``\\n`` sequences.

``limit`` reads only the first rows (pandas ``nrows``), so a limited load never parses the
whole file.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from generators.data.preprocessing import TextFormat


@dataclass(frozen=True)
class RawRow:
    """One unparsed row.

    Attributes
    ----------
    material_id
        Row id as a string.
    text
        CIF or POSCAR text (may be empty or malformed; checked later).
    fmt
        ``"cif"`` or ``"poscar"``.
    properties
        Property values read from the row (NaN kept, checked later).
    """

    material_id: str
    text: str
    fmt: TextFormat
    properties: dict[str, float] = field(default_factory=dict)


class SourceFormatError(ValueError):
    """The file does not have the expected layout (missing columns, missing split key)."""


def _to_float(value: object) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def read_csv_rows(
    path: Path, property_columns: tuple[str, ...], limit: int | None = None
) -> list[RawRow]:
    """Read rows of a CDVAE/DiffCSP CSV (plain or ``.gz``).

    Parameters
    ----------
    path
        The CSV file.
    property_columns
        Columns to read as float properties (those absent from the file are skipped).
    limit
        Read only the first ``limit`` rows.

    Returns
    -------
    list[RawRow]
        Rows in file order.

    Raises
    ------
    SourceFormatError
        If ``material_id`` or ``cif`` is missing.
    """
    frame = pd.read_csv(
        path,
        index_col=0,
        nrows=limit,
        dtype={"material_id": str, "cif": str},
        keep_default_na=False,
        na_values={c: ["", "nan", "NaN"] for c in property_columns},
    )
    missing = {"material_id", "cif"} - set(frame.columns)
    if missing:
        raise SourceFormatError(f"{path}: missing column(s) {sorted(missing)}")
    present = [c for c in property_columns if c in frame.columns]
    rows: list[RawRow] = []
    ids = frame["material_id"].tolist()
    cifs = frame["cif"].tolist()
    props = {c: frame[c].tolist() for c in present}
    for i, (mid, cif) in enumerate(zip(ids, cifs, strict=True)):
        material_id = str(mid) if mid not in (None, "") else f"row{i}"
        rows.append(
            RawRow(
                material_id=material_id,
                text=cif if isinstance(cif, str) else "",
                fmt="cif",
                properties={c: _to_float(props[c][i]) for c in present},
            )
        )
    return rows


def read_jarvis_rows(path: Path, split: str, limit: int | None = None) -> list[RawRow]:
    """Read one split of a JARVIS-Leaderboard AtomGen ``.json.zip``.

    Parameters
    ----------
    path
        The zip file holding one JSON document.
    split
        ``train``, ``val`` or ``test``.
    limit
        Keep only the first ``limit`` entries (the JSON is small enough to read whole).

    Returns
    -------
    list[RawRow]
        Rows in the order of the JSON object (equal to the CDVAE CSV order for val/test).
    """
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(".json")]
        if len(names) != 1:
            raise SourceFormatError(f"{path}: expected one .json member, found {names}")
        document = json.loads(archive.read(names[0]))
    if split not in document:
        raise SourceFormatError(f"{path}: no {split!r} key (has {sorted(document)})")
    entries = document[split]
    rows: list[RawRow] = []
    for material_id, poscar in entries.items():
        if limit is not None and len(rows) >= limit:
            break
        text = poscar.replace("\\n", "\n") if isinstance(poscar, str) else ""
        rows.append(RawRow(material_id=str(material_id), text=text, fmt="poscar"))
    return rows
