"""Downloader and registry checksums, against a file server on 127.0.0.1 (never the network)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from generators.data import DATASETS, load_split
from generators.data.download import (
    ChecksumError,
    DownloadError,
    download_file,
    fetch_split,
    verify_file,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_and_caches(static_server, tmp_path):
    payload = b"material_id,cif\n" * 5000
    (static_server.root / "f.csv").write_bytes(payload)
    dest = tmp_path / "data" / "sub" / "f.csv"
    url = f"{static_server.url}/f.csv"
    download_file(url, dest, _sha(payload), len(payload), progress=False)
    assert dest.read_bytes() == payload
    assert [p for p in dest.parent.iterdir()] == [dest]  # no temporary file left behind
    n = len(static_server.requests)
    download_file(url, dest, _sha(payload), len(payload), progress=False)
    assert len(static_server.requests) == n  # cache hit: no second request


def test_checksum_mismatch_leaves_nothing(static_server, tmp_path):
    (static_server.root / "f.bin").write_bytes(b"tampered bytes")
    dest = tmp_path / "dl" / "f.bin"
    with pytest.raises(ChecksumError, match="sha256"):
        download_file(
            f"{static_server.url}/f.bin", dest, _sha(b"original bytes"), None, progress=False
        )
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    with pytest.raises(ChecksumError, match="size"):
        download_file(f"{static_server.url}/f.bin", dest, None, 3, progress=False)


def test_corrupt_present_file_is_replaced(static_server, tmp_path):
    good = b"good content"
    (static_server.root / "g.txt").write_bytes(good)
    dest = tmp_path / "g.txt"
    dest.write_bytes(b"corrupt")
    download_file(f"{static_server.url}/g.txt", dest, _sha(good), len(good), progress=False)
    assert dest.read_bytes() == good


def test_http_error_is_a_download_error(static_server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download_file(
            f"{static_server.url}/missing.csv", tmp_path / "m.csv", progress=False, backoff_s=0.01
        )
    assert len(static_server.requests) == 1  # a 404 is not retried


def test_fetch_split_downloads_then_loads(static_server, tmp_path, data_dir):
    """The mp_20 pilot file served locally stands in for the public raw GitHub file."""
    src = data_dir / "mp_20" / "wyckofftransformer_mp_20_pilot" / "test.csv.gz"
    shutil.copy(src, static_server.root / "test.csv.gz")
    target = tmp_path / "userdata"
    # put the pilot file (checksum known) in place, then fetch only verifies it
    pilot = DATASETS["mp_20"].splits["test"].sources[1]
    dest = target / pilot.relpath
    download_file(
        f"{static_server.url}/test.csv.gz", dest, pilot.sha256, pilot.size, progress=False
    )
    result = fetch_split("mp_20", "test", target, progress=False)
    assert result.action == "verified" and result.path == dest
    data = load_split("mp_20", "test", data_dir=target, limit=3, progress=False)
    assert len(data) == 3
    dest.write_bytes(b"corrupted")
    with pytest.raises(ChecksumError):
        fetch_split("mp_20", "test", target, progress=False)

    # a missing split is downloaded from the (overridden) URL into the data dir
    other = tmp_path / "other"
    (static_server.root / "train.csv").write_bytes(b",material_id,cif\n")
    fetched = fetch_split(
        "mpts_52",
        "train",
        other,
        progress=False,
        url_override=f"{static_server.url}/train.csv",
    )
    assert fetched.action == "downloaded" and fetched.path == other / "mpts_52" / "train.csv"
    assert fetched.source.sha256 is None and "unknown" in fetched.source.verification
    empty = load_split("mpts_52", "train", data_dir=other, progress=False)
    assert len(empty) == 0 and empty.errors == []


def test_registry_checksums_match_the_shared_files(data_dir):
    checked = 0
    for info in DATASETS.values():
        for split in info.splits.values():
            for source in split.sources:
                path = data_dir / source.relpath
                if source.sha256 is None:
                    continue
                assert path.is_file(), f"{source.relpath} recorded with a checksum but absent"
                verify_file(path, source.sha256, source.size)
                checked += 1
    assert checked >= 11
