"""On-disk cache of preprocessed splits (gzipped JSON of plain numbers), and of encoder graphs.

The key hashes the source file bytes, the split, the property columns and the preprocessing
options, so a changed file or a changed preprocessing step never returns stale structures.
Each entry keeps the source row index of every record and error, so a limited load can be
answered from a full-split cache.

:class:`EncoderGraphStore` keeps the CrystalNN graphs of CDVAE's encoder
(:func:`~generators.data.preprocessing.crystalnn_graph`), keyed by the crystal itself (its
atomic numbers and the exact float32 coordinates and lattice a model sees) under a directory
named by a hash of the CrystalNN settings and the pymatgen version, so that a changed setting
computes new graphs and never reads old ones. Graphs are computed once (a whole training split
at once, in parallel) and written as immutable chunk files; every later run reads them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dftloop_io.gzip_json import write_gzip_json
from generators.data.preprocessing import (
    CRYSTALNN_OPTIONS,
    CompactStructure,
    EncoderGraph,
    PreprocessOptions,
)

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
    write_gzip_json(path, payload)


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


# ----------------------------------------------------------------------------- encoder graphs
GRAPH_CACHE_FORMAT = "dftloop-encoder-graphs/1"


def crystal_key(numbers: np.ndarray, frac_coords: np.ndarray, lattice: np.ndarray) -> str:
    """Content key of one crystal: its atomic numbers and float32 coordinates and lattice.

    Parameters
    ----------
    numbers
        [N] atomic numbers.
    frac_coords
        [N, 3] fractional coordinates as the model holds them (float32).
    lattice
        [3, 3] lattice matrix (float32).

    Returns
    -------
    str
        A hex digest; equal for bit-identical float32 inputs.
    """
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(numbers, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(frac_coords, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(lattice, dtype=np.float32).tobytes())
    return digest.hexdigest()


def graph_settings_key(method: str = "crystalnn") -> str:
    """Short hash of the graph method, its settings and the pymatgen version."""
    from importlib.metadata import version

    text = json.dumps(
        {
            "format": GRAPH_CACHE_FORMAT,
            "method": method,
            "options": CRYSTALNN_OPTIONS,
            "pymatgen": version("pymatgen"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EncoderGraphStore:
    """Content-addressed store of encoder graphs, in memory and in the data cache.

    Parameters
    ----------
    directory
        The data cache directory (:func:`~generators.data.locations.cache_dir`); the graphs
        live in ``<directory>/encoder-graphs/crystalnn-<settings hash>/``.
    method
        The graph method (``crystalnn``).
    persist
        Read and write chunk files (off: memory only).
    """

    def __init__(self, directory: Path, method: str = "crystalnn", persist: bool = True) -> None:
        self.directory = Path(directory) / "encoder-graphs" / f"{method}-{graph_settings_key()}"
        self.persist = persist
        self._graphs: dict[str, EncoderGraph] = {}
        self._loaded = False
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not (self.persist and self.directory.is_dir()):
            return
        for path in sorted(self.directory.glob("*.json.gz")):
            try:
                with gzip.open(path, "rb") as handle:
                    payload = json.loads(handle.read())
            except (OSError, ValueError, EOFError):
                continue
            if payload.get("format") != GRAPH_CACHE_FORMAT:
                continue
            for key, (sources, targets, offsets) in payload["graphs"].items():
                self._graphs[key] = EncoderGraph(sources, targets, offsets)

    def __len__(self) -> int:
        self._load()
        return len(self._graphs)

    def get(self, key: str) -> EncoderGraph | None:
        """The graph of a crystal key, or ``None``."""
        self._load()
        return self._graphs.get(key)

    def add(self, graphs: dict[str, EncoderGraph]) -> Path | None:
        """Keep new graphs and write them as one new chunk file (atomic).

        Returns
        -------
        Path | None
            The chunk written (``None`` if nothing was new or persistence is off).
        """
        with self._lock:
            self._load()
            new = {k: g for k, g in graphs.items() if k not in self._graphs}
            self._graphs.update(new)
        if not (new and self.persist):
            return None
        name = hashlib.sha256("".join(sorted(new)).encode()).hexdigest()[:20]
        path = self.directory / f"{name}.json.gz"
        payload = {
            "format": GRAPH_CACHE_FORMAT,
            "graphs": {k: [g.sources, g.targets, g.offsets] for k, g in new.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_gzip_json(path, payload)
        except OSError:  # a read-only cache still serves the graphs from memory
            return None
        return path

    def graphs(
        self,
        crystals: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
        labels: Sequence[str | None] | None = None,
        workers: int = 1,
    ) -> list[EncoderGraph]:
        """Graphs of crystals given as (numbers, float32 frac, float32 lattice).

        The missing ones are computed (in ``workers`` processes when there are many) and stored.

        Raises
        ------
        EncoderGraphError
            If CrystalNN fails on a crystal (naming it).
        """
        from pymatgen.core import Lattice, Structure

        from generators.data.preprocessing import crystalnn_graphs

        keys = [crystal_key(*crystal) for crystal in crystals]
        missing = [k for k, key in enumerate(keys) if self.get(key) is None]
        if missing:
            structures = [
                Structure(
                    Lattice(np.asarray(crystals[k][2], dtype=np.float64)),
                    [int(z) for z in crystals[k][0]],
                    np.asarray(crystals[k][1], dtype=np.float64),
                )
                for k in missing
            ]
            names = [labels[k] for k in missing] if labels is not None else None
            computed = crystalnn_graphs(structures, names, workers)
            self.add({keys[k]: g for k, g in zip(missing, computed, strict=True)})
        return [self._graphs[key] for key in keys]
