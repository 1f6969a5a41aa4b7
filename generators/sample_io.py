"""The sample-directory format, re-exported from :mod:`dftloop_io.samples` where it lives.

New code imports :mod:`dftloop_io.samples`; this name stays for existing imports.
"""

from dftloop_io.samples import (
    FORMAT,
    INDEX,
    UNREADABLE,
    SampleRecord,
    atomic_write_json,
    chunk_name,
    is_complete,
    load_samples,
    read_index,
    record_from_row,
    write_chunk,
    write_index,
)

__all__ = [
    "FORMAT",
    "INDEX",
    "UNREADABLE",
    "SampleRecord",
    "atomic_write_json",
    "chunk_name",
    "is_complete",
    "load_samples",
    "read_index",
    "record_from_row",
    "write_chunk",
    "write_index",
]
