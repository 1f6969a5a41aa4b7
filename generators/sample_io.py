"""The on-disk format of generated samples: a directory of JSON chunks and an index.

Written by :mod:`generators.sampler` as samples are produced, read by :mod:`analysis` and
:mod:`flows`. A chunk file is complete once it is listed in ``index.json``; the index is
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
            candidate=int(data.get("candidate", 0)),
            error=data.get("error"),
        )


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def load_samples(directory: str | Path) -> list[SampleRecord]:
    """All samples of the finished chunks of a sample directory, in chunk order."""
    index = read_index(directory)
    records: list[SampleRecord] = []
    for name in index.get("chunks", []):
        payload = json.loads((Path(directory) / name).read_text())
        records.extend(SampleRecord.from_dict(item) for item in payload)
    return records


__all__ = [
    "FORMAT",
    "SampleRecord",
    "atomic_write_json",
    "chunk_name",
    "is_complete",
    "load_samples",
    "read_index",
    "write_chunk",
    "write_index",
]
