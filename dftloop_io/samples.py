"""The on-disk format of generated samples: a directory of JSON chunks and an index.

Written by :mod:`generators.sampler` as samples are produced, read by :mod:`analysis`,
:mod:`relax` and :mod:`flows`; the module needs only pymatgen, so every package may import it. A
chunk file is complete once it is listed in ``index.json``; the index is
rewritten atomically after each chunk, so an interrupted sampler resumes at the first chunk
that is not listed and nothing already written is lost::

    samples/
      index.json          {"format": "dftloop-samples/1", "model": ..., "dataset": ..., "mode": ...,
                           "checkpoint_sha256": ..., "chunk_size": ..., "total": ...,
                           "chunks": ["chunk_00000.json", ...], ...}
      chunk_00000.json    [{"sample_id", "target_id", "candidate", "structure", "error"}, ...]
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

FORMAT = "dftloop-samples/1"
INDEX = "index.json"


@dataclass
class SampleRecord:
    """One generated crystal.

    Attributes
    ----------
    sample_id
        Unique id within the sample directory (``"<chunk>-<row>"`` by default).
    structure
        The crystal, or ``None`` when it could not be built (see ``error``).
    target_id
        Material id of the ground-truth crystal (CSP and reconstruction), else ``None``.
    candidate
        Candidate number 0..k−1 for CSP with k candidates per composition.
    error
        Why ``structure`` is missing, else ``None``.
    """

    sample_id: str
    structure: Structure | None
    target_id: str | None = None
    candidate: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the structure as ``Structure.as_dict()``)."""
        return {
            "sample_id": self.sample_id,
            "target_id": self.target_id,
            "candidate": self.candidate,
            "structure": None if self.structure is None else self.structure.as_dict(),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleRecord:
        """Inverse of :meth:`to_dict`."""
        structure = data.get("structure")
        return cls(
            sample_id=str(data["sample_id"]),
            structure=None if structure is None else Structure.from_dict(structure),
            target_id=data.get("target_id"),
            candidate=int(data.get("candidate") or 0),
            error=data.get("error"),
        )


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written).

    A reader of ``path`` sees either the old or the new content; the temporary file is removed
    if the write fails. The file keeps its permissions (a new file is readable by all, 0644).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, mode)  # mkstemp creates 0600
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write compact JSON to ``path`` atomically (see :func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(payload))


def read_index(directory: str | Path) -> dict[str, Any]:
    """The index of a sample directory.

    Raises
    ------
    FileNotFoundError
        If the directory has no ``index.json``.
    ValueError
        If the index is of another format.
    """
    path = Path(directory) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a sample directory (no {INDEX})")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown sample format {index.get('format')!r}")
    return index


def is_complete(index: dict[str, Any]) -> bool:
    """Whether every chunk of a sample directory's index is written.

    Parameters
    ----------
    index
        The index (:func:`read_index`).

    Returns
    -------
    bool
        ``True`` when the finished chunks cover ``total`` samples of ``chunk_size`` each.
    """
    total, chunk_size = index.get("total"), index.get("chunk_size")
    if not total or not chunk_size:
        return False
    return len(set(index.get("chunks", []))) >= -(-int(total) // int(chunk_size))


def write_index(directory: str | Path, index: dict[str, Any]) -> None:
    """Atomically (re)write the index of a sample directory."""
    atomic_write_json(Path(directory) / INDEX, {**index, "format": FORMAT})


def chunk_name(number: int) -> str:
    """File name of chunk ``number``."""
    return f"chunk_{number:05d}.json"


def write_chunk(directory: str | Path, number: int, records: Iterable[SampleRecord]) -> str:
    """Write one chunk file atomically and return its name (the caller updates the index)."""
    name = chunk_name(number)
    atomic_write_json(Path(directory) / name, [r.to_dict() for r in records])
    return name


UNREADABLE = "unreadable sample"
"""Start of the ``error`` of a record whose row could not be read (see :func:`load_samples`)."""


def record_from_row(row: Any, default_id: str) -> SampleRecord:
    """Read one chunk row; a row that cannot be read becomes a record without a structure.

    Parameters
    ----------
    row
        One element of a chunk file (``SampleRecord.to_dict()`` when written by this module).
    default_id
        The sample id to report when the row has none (``"<chunk file>-<row>"``).

    Returns
    -------
    SampleRecord
        The record; for a bad row ``structure`` is ``None`` and ``error`` starts with
        :data:`UNREADABLE` and names the problem.
    """
    try:
        if not isinstance(row, dict):
            raise TypeError(f"a row is a JSON object, not {type(row).__name__}")
        return SampleRecord.from_dict({"sample_id": default_id, **row})
    except Exception as exc:  # one bad row is reported, the rest of the chunk loads
        fields = row if isinstance(row, dict) else {}
        sample_id = str(fields.get("sample_id") or default_id)
        target_id = fields.get("target_id")
        candidate = fields.get("candidate")
        return SampleRecord(
            sample_id=sample_id,
            structure=None,
            target_id=None if target_id is None else str(target_id),
            candidate=candidate if isinstance(candidate, int) else 0,
            error=f"{UNREADABLE} {sample_id}: {type(exc).__name__}: {exc}",
        )


def load_samples(directory: str | Path) -> list[SampleRecord]:
    """All samples of the finished chunks of a sample directory, in chunk order.

    Reading is tolerant per item: a row that cannot be read (malformed structure dict, unknown
    element, not a JSON object) comes back as a record without a structure whose ``error``
    names the sample and the reason (:func:`record_from_row`); a chunk file that cannot be
    read at all comes back as one such record with the chunk's name as its id. The rest loads.

    Parameters
    ----------
    directory
        The sample directory.

    Returns
    -------
    list[SampleRecord]
        One record per row of every chunk listed in the index.

    Raises
    ------
    FileNotFoundError, ValueError
        If the directory has no readable index (:func:`read_index`).
    """
    index = read_index(directory)
    records: list[SampleRecord] = []
    for name in index.get("chunks", []):
        try:
            rows = json.loads((Path(directory) / name).read_text())
            if not isinstance(rows, list):
                raise ValueError(f"a chunk is a JSON list, not {type(rows).__name__}")
        except (OSError, ValueError) as exc:
            error = f"{UNREADABLE} {name}: unreadable chunk: {type(exc).__name__}: {exc}"
            records.append(SampleRecord(sample_id=name, structure=None, error=error))
            continue
        records.extend(record_from_row(row, f"{name}-{number}") for number, row in enumerate(rows))
    return records


def pack_directory(directory: str | Path) -> dict[str, Any]:
    """A finished sample directory as one JSON-serialisable dict (:func:`unpack_directory`).

    Parameters
    ----------
    directory
        The sample directory; every chunk its index lists must be readable JSON.

    Returns
    -------
    dict
        ``{"name": directory name, "index": index, "chunks": {file name: rows}}``.

    Raises
    ------
    FileNotFoundError, ValueError
        If the directory has no readable index or a listed chunk cannot be read.
    """
    directory = Path(directory)
    index = read_index(directory)
    chunks = {name: json.loads((directory / name).read_text()) for name in index.get("chunks", [])}
    return {"name": directory.name, "index": index, "chunks": chunks}


def unpack_directory(packed: dict[str, Any], parent: str | Path) -> bool:
    """Write a :func:`pack_directory` dict as ``parent/<name>`` unless that one is complete.

    The chunk files are written first and the index last, so an interrupted unpacking leaves a
    directory the sampler treats as unfinished.

    Parameters
    ----------
    packed
        The packed directory.
    parent
        Where sample directories live (``$DFTLOOP_HOME/samples``).

    Returns
    -------
    bool
        ``True`` if the directory was written, ``False`` if a complete one was there already.

    Raises
    ------
    ValueError
        If the name is not a plain directory name or a chunk name is not one of this format.
    """
    name = str(packed.get("name", ""))
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"not a sample directory name: {name!r}")
    directory = Path(parent) / name
    try:
        if is_complete(read_index(directory)):
            return False
    except (FileNotFoundError, ValueError):
        pass
    directory.mkdir(parents=True, exist_ok=True)
    for chunk, rows in packed.get("chunks", {}).items():
        if not (
            chunk.startswith("chunk_") and chunk.endswith(".json") and Path(chunk).name == chunk
        ):
            raise ValueError(f"{name}: not a chunk file name: {chunk!r}")
        atomic_write_json(directory / chunk, rows)
    write_index(directory, packed["index"])
    return True


__all__ = [
    "FORMAT",
    "UNREADABLE",
    "SampleRecord",
    "atomic_write_json",
    "atomic_write_text",
    "chunk_name",
    "is_complete",
    "load_samples",
    "pack_directory",
    "read_index",
    "record_from_row",
    "unpack_directory",
    "write_chunk",
    "write_index",
]
