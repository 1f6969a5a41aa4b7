"""Structure and composition fingerprints for COV (metrics.md §5.3), cached per structure.

- Structure fingerprint: matminer ``CrystalNNFingerprint.from_preset("ops")`` of every site,
  averaged over the sites (61 numbers). If it throws, the crystal has no fingerprint and CDVAE
  counts it as invalid.
- Composition fingerprint: matminer ``ElementProperty.from_preset("magpie")`` of the composition
  built from the atom counts (132 numbers), standardised with CDVAE's ``CompScalerMeans`` /
  ``CompScalerStds`` (``analysis/cdvae_comp_scaler.json``), NaN -> 0 after standardising.

CrystalNN costs ~0.01-0.03 s per site, so fingerprints are computed once per structure (keyed by
:func:`fingerprint_key`), in a process pool over all cores, and can be kept in a SQLite file
(:class:`FingerprintCache`); the fingerprints of a ground-truth split are also kept beside the
dataset cache (:mod:`analysis.gt_fingerprints`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure

from analysis.construction import CheckedStructure, check_structures
from analysis.parallel import parallel_map

STRUCTURE_PRESET = "ops"
COMPOSITION_PRESET = "magpie"
KEY_VERSION = f"fp1-matminer{version('matminer')}-{STRUCTURE_PRESET}-{COMPOSITION_PRESET}"
"""Part of every cache key: a new matminer version or preset gives new keys."""

_SCALER_FILE = Path(__file__).with_name("cdvae_comp_scaler.json")


@dataclass
class Fingerprint:
    """The fingerprints of one crystal.

    Parameters
    ----------
    struct
        Site-averaged CrystalNN fingerprint, or ``None`` if it could not be computed.
    comp
        Raw (unstandardised) magpie composition features, or ``None``.
    error
        Why a fingerprint is missing (``None`` if both exist).
    """

    struct: np.ndarray | None
    comp: np.ndarray | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Both fingerprints exist."""
        return self.struct is not None and self.comp is not None


def fingerprint_key(structure: Structure) -> str:
    """Hash of a concrete structure (lattice, species and wrapped coordinates, 1e-6 precision).

    Parameters
    ----------
    structure
        The crystal.

    Returns
    -------
    str
        sha256 hex digest, prefixed implicitly by :data:`KEY_VERSION`.
    """
    frac = np.mod(np.round(np.asarray(structure.frac_coords, dtype=float), 6), 1.0)
    frac = np.round(frac, 6) % 1.0
    rows = sorted(
        (int(sp.Z), *(float(x) for x in f)) for sp, f in zip(structure.species, frac, strict=True)
    )
    payload = {
        "v": KEY_VERSION,
        "lattice": np.round(structure.lattice.matrix, 6).tolist(),
        "sites": rows,
    }
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


@lru_cache(maxsize=1)
def _featurizers() -> tuple[Any, Any]:
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset(STRUCTURE_PRESET), ElementProperty.from_preset(
        COMPOSITION_PRESET
    )


def composition_fingerprint(atomic_numbers: Sequence[int]) -> np.ndarray:
    """Raw magpie ``ElementProperty`` features of a composition given by its atom list.

    Parameters
    ----------
    atomic_numbers
        Atomic number per site.

    Returns
    -------
    numpy.ndarray
        132 features (may contain NaN for elements without data).
    """
    counter = Counter(int(z) for z in atomic_numbers)
    # the element order of the Composition is the summation order of the features, so the
    # counts are remembered in that order (first appearance), not sorted
    return _composition_features(tuple(counter.items())).copy()


@lru_cache(maxsize=4096)
def _composition_features(counts: tuple[tuple[int, int], ...]) -> np.ndarray:
    _, comp_fp = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(comp_fp.featurize(Composition(dict(counts))), dtype=float)


def structure_fingerprint(structure: Structure) -> np.ndarray:
    """Site-averaged CrystalNN ``ops`` fingerprint.

    Parameters
    ----------
    structure
        The crystal.

    Returns
    -------
    numpy.ndarray
        61 features.
    """
    cnn, _ = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sites = [cnn.featurize(structure, i) for i in range(len(structure))]
    return np.asarray(sites, dtype=float).mean(axis=0)


def _fingerprint_one(item: CheckedStructure) -> Fingerprint:
    if not item.constructed or item.structure is None:
        return Fingerprint(None, None, f"not constructed: {item.error}")
    try:
        comp = composition_fingerprint([sp.Z for sp in item.structure.species])
        struct = structure_fingerprint(item.structure)
    except Exception as exc:
        return Fingerprint(None, None, f"fingerprint failed: {type(exc).__name__}: {exc}")
    return Fingerprint(struct, comp, None)


class FingerprintCache:
    """Fingerprints keyed by :func:`fingerprint_key`, in memory and optionally in SQLite.

    Parameters
    ----------
    path
        SQLite file to read from and write to; ``None`` keeps the cache in memory only.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory: dict[str, Fingerprint] = {}
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS fp (key TEXT PRIMARY KEY, struct BLOB, "
                    "comp BLOB, error TEXT)"
                )

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        return sqlite3.connect(self.path, timeout=60)

    def __len__(self) -> int:
        if self.path is None:
            return len(self._memory)
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM fp").fetchone()[0])

    def get_many(self, keys: Sequence[str]) -> dict[str, Fingerprint]:
        """Look up many keys at once.

        Parameters
        ----------
        keys
            Cache keys.

        Returns
        -------
        dict[str, Fingerprint]
            The keys that were found.
        """
        found = {k: self._memory[k] for k in keys if k in self._memory}
        missing = [k for k in set(keys) if k not in found]
        if self.path is not None and missing:
            with self._connect() as db:
                for start in range(0, len(missing), 500):
                    part = missing[start : start + 500]
                    marks = ",".join("?" * len(part))
                    rows = db.execute(
                        f"SELECT key, struct, comp, error FROM fp WHERE key IN ({marks})", part
                    ).fetchall()
                    for key, struct, comp, error in rows:
                        fp = Fingerprint(_decode(struct), _decode(comp), error)
                        self._memory[key] = fp
                        found[key] = fp
        return found

    def remember(self, items: dict[str, Fingerprint]) -> None:
        """Serve these fingerprints from memory (they are not written to the SQLite file).

        Parameters
        ----------
        items
            Key -> fingerprint, for example the stored fingerprints of a ground-truth split.
        """
        with self._lock:
            self._memory.update(items)

    def put_many(self, items: dict[str, Fingerprint]) -> None:
        """Store many fingerprints.

        Parameters
        ----------
        items
            Key -> fingerprint. Fingerprints whose failure is not a property of the structure
            (not constructed) are not written to disk.
        """
        with self._lock:
            self._memory.update(items)
        if self.path is not None and items:
            rows = [
                (k, _encode(v.struct), _encode(v.comp), v.error)
                for k, v in items.items()
                if v.ok or (v.error or "").startswith("fingerprint failed")
            ]
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO fp VALUES (?, ?, ?, ?)", rows)


def default_cache_path() -> Path:
    """The persistent fingerprint cache: ``DFTLOOP_FP_CACHE`` or ``<user cache>/dftloop/``.

    Returns
    -------
    Path
        Path of the SQLite file (created on first use).
    """
    env = os.environ.get("DFTLOOP_FP_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dftloop")) / "fingerprints.sqlite"


def _encode(array: np.ndarray | None) -> bytes | None:
    return None if array is None else np.asarray(array, dtype="<f8").tobytes()


def _decode(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype="<f8").copy()


def compute_fingerprints(
    items: Sequence[Any],
    ids: Sequence[str] | None = None,
    cache: FingerprintCache | str | Path | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
) -> list[Fingerprint]:
    """Fingerprints of a batch, reusing the cache and computing the rest in a process pool.

    Parameters
    ----------
    items
        Structures or anything :func:`analysis.construction.check_structure` accepts.
    ids
        Item ids.
    cache
        A :class:`FingerprintCache`, a SQLite path, or ``None`` (no reuse across calls).
    n_jobs
        Worker processes (:func:`analysis.parallel.resolve_jobs`: ``None`` = ``DFTLOOP_JOBS`` or
        all cores, 1 = this process).
    progress
        Show a progress bar.

    Returns
    -------
    list[Fingerprint]
        One per item; items that were not constructed or whose CrystalNN failed have
        ``ok == False`` and an error.
    """
    if not isinstance(cache, FingerprintCache):
        cache = FingerprintCache(cache)
    checked = check_structures(items, ids)
    keys: list[str | None] = [
        fingerprint_key(c.structure) if c.constructed and c.structure is not None else None
        for c in checked
    ]
    known = cache.get_many([k for k in keys if k is not None])
    todo: dict[str, CheckedStructure] = {}
    for key, item in zip(keys, checked, strict=True):
        if key is not None and key not in known and key not in todo:
            todo[key] = item
    if todo:
        _featurizers()  # built once here, before the pool forks, not once in every worker
        # largest crystals first, so the workers finish together
        order = sorted(todo, key=lambda k: -len(todo[k].structure or ()))
        computed = parallel_map(
            _fingerprint_one,
            [todo[k] for k in order],
            n_jobs=n_jobs,
            desc="CrystalNN fingerprints",
            progress=progress,
            min_items_per_job=4,
        )
        new = dict(zip(order, computed, strict=True))
        cache.put_many(new)
        known.update(new)
    out: list[Fingerprint] = []
    for key, item in zip(keys, checked, strict=True):
        if key is None:
            out.append(Fingerprint(None, None, f"not constructed: {item.error}"))
        else:
            out.append(known[key])
    return out


@lru_cache(maxsize=1)
def comp_scaler() -> tuple[np.ndarray, np.ndarray, str]:
    """CDVAE's composition-feature means and standard deviations.

    Returns
    -------
    tuple
        ``(means, stds, source)``, 132 values each.
    """
    doc = json.loads(_SCALER_FILE.read_text())
    return np.asarray(doc["means"], float), np.asarray(doc["stds"], float), doc["source"]


def standardise_composition(comp_fps: np.ndarray) -> np.ndarray:
    """Standardise magpie features with CDVAE's constants; NaN -> 0 (CDVAE's ``CompScaler``).

    Parameters
    ----------
    comp_fps
        Raw features, shape ``[n, 132]``.

    Returns
    -------
    numpy.ndarray
        ``(x - mean) / std`` with NaN replaced by 0.
    """
    means, stds, _ = comp_scaler()
    comp_fps = np.asarray(comp_fps, dtype=float).reshape(-1, means.shape[0])
    out = (comp_fps - means) / stds
    return np.where(np.isnan(out), 0.0, out)
