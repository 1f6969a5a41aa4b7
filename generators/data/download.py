"""Download data files: progress bar, checksum, atomic write, and a cache of verified files.

A file is streamed into a temporary file beside its destination while its sha256 is computed;
only when size and checksum match the registry does it replace the destination (``os.replace``),
so an interrupted or corrupt download never leaves a half file under the real name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import requests
from tqdm.auto import tqdm

from generators.data.cache import file_sha256
from generators.data.locations import download_dir, locate_split
from generators.data.registry import FileSource

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download failed (network error or HTTP error status)."""


class ChecksumError(DownloadError):
    """A downloaded or present file does not match its recorded size or sha256."""


def _check(
    name: str, actual_size: int, actual_sha: str, sha256: str | None, size: int | None
) -> None:
    if size is not None and actual_size != size:
        raise ChecksumError(f"{name}: size {actual_size} B, expected {size} B")
    if sha256 is not None and actual_sha != sha256:
        raise ChecksumError(f"{name}: sha256 {actual_sha}, expected {sha256}")


def verify_file(path: Path, sha256: str | None = None, size: int | None = None) -> str:
    """Check a present file against the recorded size and checksum.

    Parameters
    ----------
    path
        File to check.
    sha256, size
        Expected values (``None``: not checked).

    Returns
    -------
    str
        The file's sha256.

    Raises
    ------
    ChecksumError
        On a mismatch.
    """
    digest = file_sha256(path)
    _check(str(path), path.stat().st_size, digest, sha256, size)
    return digest


def download_file(
    url: str,
    dest: Path,
    sha256: str | None = None,
    size: int | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    backoff_s: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying size and sha256 when known.

    An existing ``dest`` that verifies is kept (cache hit) and no request is made.

    Parameters
    ----------
    url
        Source address.
    dest
        Destination file.
    sha256, size
        Expected checksum and size (``None``: not checked; a warning says so).
    progress
        Show a tqdm bar.
    timeout
        Per-request timeout in seconds.
    retries
        Attempts on connection errors and 5xx answers.
    backoff_s
        First retry delay; doubles each attempt.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    DownloadError
        On network/HTTP failures after the retries.
    ChecksumError
        If the downloaded bytes do not match (nothing is written under ``dest``).
    """
    dest = Path(dest)
    if dest.is_file():
        try:
            verify_file(dest, sha256, size)
            log.info("%s present and verified; not downloaded", dest)
            return dest
        except ChecksumError as exc:
            log.warning("%s present but does not verify (%s); downloading again", dest, exc)
    if sha256 is None:
        log.warning("%s: no sha256 recorded; the download is checked for size only if known", url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            _download_once(url, dest, sha256, size, progress=progress, timeout=timeout)
            return dest
        except ChecksumError:
            raise
        except (requests.RequestException, DownloadError) as exc:
            last_error = exc
            retryable = not isinstance(exc, DownloadError) or "HTTP 5" in str(exc)
            if not retryable or attempt == retries:
                break
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("%s: attempt %d failed (%s); retrying in %.1f s", url, attempt, exc, delay)
            time.sleep(delay)
    raise DownloadError(f"download of {url} failed: {last_error}") from last_error


def _download_once(
    url: str, dest: Path, sha256: str | None, size: int | None, *, progress: bool, timeout: float
) -> None:
    with requests.get(url, stream=True, timeout=timeout) as response:
        if response.status_code != 200:
            raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
        total = int(response.headers.get("Content-Length") or 0) or size
        digest = hashlib.sha256()
        written = 0
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
        try:
            with (
                os.fdopen(fd, "wb") as handle,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                for chunk in response.iter_content(chunk_size=1 << 16):
                    handle.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            _check(url, written, digest.hexdigest(), sha256, size)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class FetchResult:
    """What ``fetch_split`` did for one split.

    Attributes
    ----------
    dataset, split
        Registry keys.
    path
        The file that serves the split.
    action
        ``"verified"`` (present, checksum matched), ``"present-unverified"`` (present, nothing
        recorded to check), or ``"downloaded"``.
    source
        The registry source used.
    """

    dataset: str
    split: str
    path: Path
    action: Literal["verified", "present-unverified", "downloaded"]
    source: FileSource


def fetch_split(
    dataset: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    url_override: str | None = None,
) -> FetchResult:
    """Make sure a file that serves ``dataset``/``split`` is present and verified.

    Parameters
    ----------
    dataset, split
        Registry keys.
    data_dir
        Look in and download to this directory (default: the search roots of
        :func:`generators.data.locations.data_roots`, downloads to
        :func:`generators.data.locations.download_dir`).
    progress
        Show a progress bar while downloading.
    url_override
        Download from this address instead of the registry's (mirrors, tests).

    Returns
    -------
    FetchResult
        What was done.
    """
    located = locate_split(dataset, split, data_dir)
    source = located.source
    if located.path is not None:
        if source.sha256 is None and source.size is None:
            return FetchResult(dataset, split, located.path, "present-unverified", source)
        verify_file(located.path, source.sha256, source.size)
        return FetchResult(dataset, split, located.path, "verified", source)
    target_root = Path(data_dir) if data_dir is not None else download_dir()
    dest = target_root / source.relpath
    download_file(url_override or source.url, dest, source.sha256, source.size, progress=progress)
    return FetchResult(dataset, split, dest, "downloaded", source)
