"""The fingerprints of a ground-truth split, computed once and kept beside the dataset cache.

COV compares the generated crystals with every ground-truth crystal, so each evaluation needs
the CrystalNN and magpie fingerprints (:mod:`analysis.fingerprints`) of the whole ground truth
as well, and CrystalNN is the slow part. When the ground truth names its content and a cache
directory (:class:`analysis.ground_truth.GroundTruth` ``content_key`` and ``cache_dir``; a
dataset split read through the data layer does), its fingerprints are kept in one file::

    <cache_dir>/gt-fingerprints/<dataset>-<label>-<content key[:20]>-<fingerprint version>.json.gz

The content key is the split's cache key (a hash of the source file, the split and the
preprocessing), so a changed split is written to a new file and never served an old one; the
fingerprint version hashes the matminer version and presets (``KEY_VERSION``), so new
fingerprint settings start a new file too. Inside, every fingerprint is stored under its
structure's :func:`~analysis.fingerprints.fingerprint_key`, so a value is only ever returned for
the very structure it was computed from. Values are the float64 bytes (base64), read back
bit for bit. The first evaluation against a split computes the fingerprints of the rows it uses
and adds them to the file; later evaluations read them. Deleting the directory is always safe.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.fingerprints import KEY_VERSION, Fingerprint, fingerprint_key
from analysis.ground_truth import GroundTruth
from dftloop_io.gzip_json import read_gzip_json, write_gzip_json

STORE_FORMAT = "dftloop-gt-fingerprints/1"
STORE_DIRNAME = "gt-fingerprints"
"""Subdirectory of the cache directory that holds the files."""


def fingerprint_version() -> str:
    """Short hash of :data:`analysis.fingerprints.KEY_VERSION` (part of every file name).

    Returns
    -------
    str
        12 hex digits.
    """
    return hashlib.sha256(KEY_VERSION.encode()).hexdigest()[:12]


def store_path(cache_dir: str | Path, dataset: str, label: str, content_key: str) -> Path:
    """The file that keeps the fingerprints of one ground-truth source.

    Parameters
    ----------
    cache_dir
        The cache directory (for a dataset split, the data cache directory).
    dataset
        Dataset name.
    label
        Name of the source (the split).
    content_key
        Hash of the source's content.

    Returns
    -------
    Path
        ``<cache_dir>/gt-fingerprints/<dataset>-<label>-<key[:20]>-<version>.json.gz``.

    Raises
    ------
    ValueError
        For an empty content key.
    """
    if not content_key:
        raise ValueError("a ground-truth fingerprint file needs the source's content key")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{label}").strip("_")
    return (
        Path(cache_dir)
        / STORE_DIRNAME
        / f"{name}-{content_key[:20]}-{fingerprint_version()}.json.gz"
    )


class GroundTruthFingerprints:
    """The stored fingerprints of one ground-truth source, keyed by structure.

    Parameters
    ----------
    path
        The gzipped-JSON file (:func:`store_path`); it need not exist yet.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def for_ground_truth(cls, truth: GroundTruth, dataset: str) -> GroundTruthFingerprints | None:
        """The store of a ground truth, or ``None`` if it names no content key or directory.

        Parameters
        ----------
        truth
            The ground truth.
        dataset
            Dataset name (part of the file name).

        Returns
        -------
        GroundTruthFingerprints | None
            The store.
        """
        if not truth.content_key or truth.cache_dir is None:
            return None
        return cls(store_path(truth.cache_dir, dataset, truth.label, truth.content_key))

    def load(self) -> dict[str, Fingerprint]:
        """All stored fingerprints (empty when the file is absent, unreadable or of another format).

        Returns
        -------
        dict[str, Fingerprint]
            :func:`~analysis.fingerprints.fingerprint_key` -> fingerprint.
        """
        payload = read_gzip_json(self.path)
        if not isinstance(payload, dict):
            return {}
        if payload.get("format") != STORE_FORMAT or payload.get("key_version") != KEY_VERSION:
            return {}
        return {
            key: Fingerprint(_decode(struct), _decode(comp), error)
            for key, (struct, comp, error) in payload.get("entries", {}).items()
        }

    def add(self, structures: Sequence[Any], fingerprints: Sequence[Fingerprint]) -> int:
        """Keep the fingerprints of these structures that the file does not hold yet.

        Fingerprints that are missing because the structure was not built are not kept (that is
        not a property of the structure); failed CrystalNN runs are, as in the SQLite cache.
        The file is re-read just before it is rewritten, so entries another process added in
        the meantime are kept.

        Parameters
        ----------
        structures
            pymatgen Structures.
        fingerprints
            Their fingerprints, in the same order.

        Returns
        -------
        int
            How many entries were added (0 when the file cannot be written).
        """
        if len(structures) != len(fingerprints):
            raise ValueError(f"{len(structures)} structures but {len(fingerprints)} fingerprints")
        stored = self.load()
        new = {
            fingerprint_key(s): fp
            for s, fp in zip(structures, fingerprints, strict=True)
            if fp.ok or (fp.error or "").startswith("fingerprint failed")
        }
        new = {k: fp for k, fp in new.items() if k not in stored}
        if not new:
            return 0
        stored.update(new)
        payload = {
            "format": STORE_FORMAT,
            "key_version": KEY_VERSION,
            "entries": {
                key: [_encode(fp.struct), _encode(fp.comp), fp.error] for key, fp in stored.items()
            },
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_gzip_json(self.path, payload)
        except OSError:  # a read-only cache: the fingerprints are simply computed next time
            return 0
        return len(new)


def _encode(array: np.ndarray | None) -> str | None:
    if array is None:
        return None
    return base64.b64encode(np.asarray(array, dtype="<f8").tobytes()).decode("ascii")


def _decode(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    return np.frombuffer(base64.b64decode(text), dtype="<f8").astype(float)
