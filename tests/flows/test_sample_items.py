"""Tolerant reading of sample directories: one bad row or chunk never takes the rest down."""

from __future__ import annotations

import json
from pathlib import Path

from pymatgen.core import Lattice, Structure

from dftloop_io.samples import UNREADABLE, SampleRecord, load_samples, write_chunk, write_index
from flows.tasks import load_sample_items


def _nacl(a: float = 5.6) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _sample_dir(path: Path) -> Path:
    """Chunk 0: two good rows; chunk 1: bad rows; chunk 2: not JSON; chunk 3: missing."""
    good = [SampleRecord("ok-0", _nacl()), SampleRecord("ok-1", _nacl(5.8), "mp-1", 1)]
    unknown = _nacl().as_dict()
    unknown["sites"][1]["species"][0]["element"] = "Qq"
    bad_rows = [
        {"sample_id": "bad-element", "target_id": "mp-2", "candidate": 3, "structure": unknown},
        {"sample_id": "bad-lattice", "structure": {"lattice": "not a lattice"}},
        {"structure": None, "error": "sampler produced NaN"},  # no sample_id
        ["not", "an", "object"],
        SampleRecord("ok-2", _nacl(6.0)).to_dict(),
    ]
    chunks = [
        write_chunk(path, 0, good),
        "chunk_00001.json",
        "chunk_00002.json",
        "chunk_00003.json",
    ]
    (path / chunks[1]).write_text(json.dumps(bad_rows))
    (path / chunks[2]).write_text('[{"sample_id": ')
    write_index(
        path,
        {"model": "m", "dataset": "perov_5", "mode": "csp", "chunks": chunks, "total": 9},
    )
    return path


def test_load_samples_turns_bad_rows_and_chunks_into_error_records(tmp_path: Path) -> None:
    records = load_samples(_sample_dir(tmp_path / "s"))
    by_id = {r.sample_id: r for r in records}
    assert [r.sample_id for r in records] == [
        "ok-0",
        "ok-1",
        "bad-element",
        "bad-lattice",
        "chunk_00001.json-2",
        "chunk_00001.json-3",
        "ok-2",
        "chunk_00002.json",
        "chunk_00003.json",
    ]
    assert {sid for sid, r in by_id.items() if r.structure is not None} == {"ok-0", "ok-1", "ok-2"}
    assert by_id["ok-1"].target_id == "mp-1" and by_id["ok-1"].candidate == 1
    element = by_id["bad-element"]
    assert element.error.startswith(f"{UNREADABLE} bad-element: ValueError")
    assert "Qq" in element.error
    assert element.target_id == "mp-2" and element.candidate == 3  # kept for CSP grouping
    assert by_id["bad-lattice"].error.startswith(f"{UNREADABLE} bad-lattice:")
    assert by_id["chunk_00001.json-2"].error == "sampler produced NaN"  # the sampler's own
    assert "not list" in by_id["chunk_00001.json-3"].error
    assert "JSONDecodeError" in by_id["chunk_00002.json"].error
    assert "FileNotFoundError" in by_id["chunk_00003.json"].error


def test_load_sample_items_keeps_its_shape(tmp_path: Path) -> None:
    items, errors = load_sample_items(str(_sample_dir(tmp_path / "s")))
    assert [sid for sid, _ in items] == ["ok-0", "ok-1", "ok-2"]
    assert all(isinstance(s, Structure) for _, s in items)
    assert [e["id"] for e in errors] == [
        "bad-element",
        "bad-lattice",
        "chunk_00001.json-2",
        "chunk_00001.json-3",
        "chunk_00002.json",
        "chunk_00003.json",
    ]
    assert all(set(e) == {"id", "reason"} and e["reason"] for e in errors)
    assert "bad-lattice" in errors[1]["reason"]
