"""Optional record of the time the flows spend inside library calls (for the overhead benchmark).

With ``DFTLOOP_LIBRARY_TIMES`` naming a file, each :func:`library_time` block appends one JSON
line ``{"name", "start", "end", "pid"}`` (``start``/``end`` in seconds since the epoch, so that
blocks timed in Dask worker processes line up with the flow's clock). Without the variable the
block only runs its body. ``benchmarks/pipeline_overhead.py`` compares the union of these
intervals with the wall time of a whole ``generate-and-relax`` run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator

LIBRARY_TIMES_ENV = "DFTLOOP_LIBRARY_TIMES"
"""Environment variable naming the JSON-lines file of library-call intervals (unset: off)."""


@contextlib.contextmanager
def library_time(name: str) -> Iterator[None]:
    """Record the interval of a library call when ``DFTLOOP_LIBRARY_TIMES`` is set.

    Parameters
    ----------
    name
        What the block does (``"sample"``, ``"relax"``, ``"compare"``, ``"metrics"``, ...).
    """
    path = os.environ.get(LIBRARY_TIMES_ENV)
    if not path:
        yield
        return
    start = time.time()
    try:
        yield
    finally:
        line = json.dumps({"name": name, "start": start, "end": time.time(), "pid": os.getpid()})
        with open(path, "a") as stream:  # one short O_APPEND write per block
            stream.write(line + "\n")
