"""Where the data and the caches live.

- Data directory: ``DFTLOOP_DATA_DIR``; else ``../shared/data`` beside the checkout (resolved
  from the package location, then from the current directory); else a user cache directory.
- Downloads go to ``DFTLOOP_DATA_DIR`` when set, else to the user cache directory (the shared
  folder is read-only).
- Preprocessed splits are cached under ``DFTLOOP_CACHE_DIR`` (default: the user cache dir).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from generators.data.registry import FileSource, get_split_info

APP_NAME = "dftloop"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def shared_data_dir() -> Path | None:
    """Return ``../shared/data`` beside the checkout (or the cwd) when present, else ``None``."""
    for candidate in (REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def download_dir() -> Path:
    """Return the directory that downloads are written to."""
    return _env_path("DFTLOOP_DATA_DIR") or Path(user_cache_dir(APP_NAME)) / "data"


def data_dir() -> Path:
    """Return the primary data directory (see the module docstring for the order)."""
    return _env_path("DFTLOOP_DATA_DIR") or shared_data_dir() or download_dir()


def data_roots(data_dir_override: str | os.PathLike[str] | None = None) -> list[Path]:
    """Return the directories searched for data files, in order, without duplicates.

    Parameters
    ----------
    data_dir_override
        An explicit data directory; when given it is the only root searched.

    Returns
    -------
    list[Path]
        Roots to search for ``<root>/<FileSource.relpath>``.
    """
    if data_dir_override is not None:
        return [Path(data_dir_override).expanduser()]
    roots: list[Path] = []
    for root in (data_dir(), download_dir()):
        if root not in roots:
            roots.append(root)
    return roots


def cache_dir() -> Path:
    """Return the directory for preprocessed-split caches (``DFTLOOP_CACHE_DIR``)."""
    return _env_path("DFTLOOP_CACHE_DIR") or Path(user_cache_dir(APP_NAME)) / "preprocessed"


@dataclass(frozen=True)
class LocatedSource:
    """A split source together with the file that serves it (``path`` is ``None`` if absent)."""

    source: FileSource
    path: Path | None


def locate_split(
    dataset: str, split: str, data_dir_override: str | os.PathLike[str] | None = None
) -> LocatedSource:
    """Find the best present file for ``dataset``/``split``.

    Parameters
    ----------
    dataset, split
        Registry keys.
    data_dir_override
        Search only this directory.

    Returns
    -------
    LocatedSource
        The first source (in registry order) present under any root; if none is present,
        the preferred source with ``path=None``.
    """
    info = get_split_info(dataset, split)
    roots = data_roots(data_dir_override)
    for source in info.sources:
        for root in roots:
            path = root / source.relpath
            if path.is_file():
                return LocatedSource(source, path)
    return LocatedSource(info.sources[0], None)
