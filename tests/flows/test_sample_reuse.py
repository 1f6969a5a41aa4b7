"""A sample directory is reused only when complete; an interrupted one goes back to the sampler."""

from __future__ import annotations

from dftloop_io.samples import is_complete


def test_complete_only_when_every_chunk_is_listed() -> None:
    index = {"total": 10, "chunk_size": 4, "chunks": ["chunk_00000.json", "chunk_00001.json"]}
    assert not is_complete(index)
    index["chunks"].append("chunk_00002.json")
    assert is_complete(index)


def test_index_without_sizes_is_not_complete() -> None:
    assert not is_complete({"chunks": ["chunk_00000.json"]})
    assert not is_complete({"total": 0, "chunk_size": 4, "chunks": []})
