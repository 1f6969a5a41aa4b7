"""On-disk cache of preprocessed splits (gzipped JSON of plain numbers).

The key hashes the source file bytes, the split, the property columns and the preprocessing
options, so a changed file or a changed preprocessing step never returns stale structures.
Each entry keeps the source row index of every record and error, so a limited load can be
answered from a full-split cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from generators.data.preprocessing import CompactStructure, PreprocessOptions

CACHE_FORMAT = "dftloop-split-cache/1"


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Return the sha256 hex digest of a file.

    Parameters
    ----------
    path
        File to hash.
    chunk_size
        Read size in bytes.

    Returns
    -------
    str
        Hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(
    source_sha256: str,
    split: str,
    property_columns: tuple[str, ...],
    options: PreprocessOptions,
) -> str:
    """Return the cache key of a preprocessed split.

    Parameters
    ----------
    source_sha256
        Digest of the source file bytes.
    split
        Split name (a JARVIS file serves three splits).
    property_columns
        Properties read from the rows.
    options
        Preprocessing switches.

    Returns
    -------
    str
        A hex digest.
    """
    text = "|".join([CACHE_FORMAT, source_sha256, split, ",".join(property_columns), options.key()])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CachedRow:
    """One cached row: a record (``structure`` set) or an error (``error`` set)."""

    row: int
    material_id: str
    structure: CompactStructure | None = None
    properties: dict[str, float] | None = None
    error: str | None = None


def cache_path(directory: Path, dataset: str, split: str, key: str) -> Path:
    """Return the file name of a cache entry."""
    return directory / f"{dataset}-{split}-{key[:20]}.json.gz"


def write_cache(path: Path, rows: list[CachedRow], meta: dict[str, object]) -> None:
    """Write a cache entry atomically (temporary file + ``os.replace``).

    Parameters
    ----------
    path
        Destination.
    rows
        Records and errors with their source row index.
    meta
        Extra provenance (dataset, split, source path and digest).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CACHE_FORMAT,
        "meta": meta,
        "rows": [
            {
                "row": r.row,
                "id": r.material_id,
                "lattice": r.structure.lattice if r.structure else None,
                "numbers": r.structure.numbers if r.structure else None,
                "frac": r.structure.frac_coords if r.structure else None,
                "props": r.properties,
                "error": r.error,
            }
            for r in rows
        ],
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=5) as gz,
        ):
            gz.write(json.dumps(payload).encode())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_cache(path: Path) -> list[CachedRow] | None:
    """Read a cache entry; return ``None`` if it is absent, unreadable or of another format.

    Parameters
    ----------
    path
        Cache file.

    Returns
    -------
    list[CachedRow] | None
        The rows, in source order.
    """
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rb") as handle:
            payload = json.loads(handle.read())
    except (OSError, ValueError, EOFError):
        return None
    if payload.get("format") != CACHE_FORMAT:
        return None
    rows: list[CachedRow] = []
    for item in payload["rows"]:
        structure = None
        if item["error"] is None:
            structure = CompactStructure(item["lattice"], item["numbers"], item["frac"])
        rows.append(
            CachedRow(
                row=item["row"],
                material_id=item["id"],
                structure=structure,
                properties=item["props"],
                error=item["error"],
            )
        )
    return rows
