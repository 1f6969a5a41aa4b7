"""Gzipped JSON files written atomically: the format of the on-disk caches.

The data layer keeps its preprocessed splits and encoder graphs in such files, the metrics keep
the fingerprints of a ground-truth split beside them; both use these two functions so that a
reader never sees a half-written file.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_gzip_json(path: Path, payload: object) -> None:
    """Write ``payload`` as gzipped JSON through a temporary file and an atomic rename.

    The gzip header carries no time stamp, so the same payload gives the same bytes.

    Parameters
    ----------
    path
        Destination; its directory must exist.
    payload
        Anything :func:`json.dumps` accepts.

    Raises
    ------
    OSError
        When the directory cannot be written (the temporary file is removed).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=5, mtime=0) as gz,
        ):
            gz.write(json.dumps(payload).encode())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_gzip_json(path: Path) -> Any | None:
    """Read a gzipped JSON file; ``None`` when it is absent, truncated or not JSON.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    Any | None
        The decoded payload.
    """
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rb") as handle:
            return json.loads(handle.read())
    except (OSError, ValueError, EOFError):
        return None
