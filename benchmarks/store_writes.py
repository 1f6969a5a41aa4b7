"""Result-store write/read costs on the embedded MontyStore (SQLite).

    .venv/bin/python benchmarks/store_writes.py [--n 1000]

Measures: batched ``put_relaxations`` of N documents (flows.store.upsert_many), the same N written
with maggma's per-document ``Store.update`` (one replace_one upsert each), and
``pending_relaxations`` over N structures (N/2 done). Each in a fresh temporary store.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from pymatgen.core import Lattice, Structure

from flows.hashing import structure_hash
from flows.store import Provenance, ResultStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    n = args.n
    structures = [
        (
            f"s{i}",
            Structure(Lattice.cubic(4.0 + i * 1e-3), ["Sr", "Ti"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        )
        for i in range(n)
    ]
    t0 = time.perf_counter()
    hashes = [structure_hash(s) for _, s in structures]
    t_hash = time.perf_counter() - t0
    docs = [
        (
            h,
            {
                "structure_id": sid,
                "settings_hash": "bench",
                "status": "ok",
                "forces": [[0.0] * 3] * 2,
            },
        )
        for (sid, _), h in zip(structures, hashes, strict=True)
    ]
    prov = Provenance(relaxer="bench")
    with tempfile.TemporaryDirectory() as tmp, ResultStore(home=tmp) as store:
        t0 = time.perf_counter()
        store.put_relaxations(docs[: n // 2], prov)
        store.put_relaxations(docs[n // 2 :], prov)
        t_batch = time.perf_counter() - t0
        assert store.count("relaxation") == n
    with tempfile.TemporaryDirectory() as tmp, ResultStore(home=tmp) as store:
        plain = [
            {"doc_id": f"relaxation:{h}:bench", "kind": "relaxation", "structure_id": sid}
            for (sid, _), h in zip(structures, hashes, strict=True)
        ]
        t0 = time.perf_counter()
        for doc in plain:
            store.docs.update(doc, key="doc_id")
        t_single = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp, ResultStore(home=tmp) as store:
        store.put_relaxations(docs[: n // 2], prov)
        t0 = time.perf_counter()
        pending = store.pending_relaxations(structures, "bench")
        t_pending = time.perf_counter() - t0
        assert len(pending) == n - n // 2
    print(f"n = {n}")
    print(f"structure_hash:                 {t_hash:6.2f} s ({1e3 * t_hash / n:.2f} ms each)")
    print(f"put_relaxations (batched):      {t_batch:6.2f} s (docs + forces blobs)")
    print(f"Store.update one by one:        {t_single:6.2f} s (docs only)")
    print(f"pending_relaxations (n/2 done): {t_pending:6.2f} s")


if __name__ == "__main__":
    main()
