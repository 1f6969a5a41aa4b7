"""Seconds for S.U.N. novelty against a whole training split.

Builds an ``analysis.sun.NoveltyReference`` of a dataset's training split (reduced structures
grouped by composition), then flags the first N test-split structures (E_hull 0 for all, so
stability plays no part) and prints both wall times with the novelty and uniqueness counts.

    .venv/bin/python benchmarks/novelty_reference.py --dataset carbon_24 --n 100 --jobs 1
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="carbon_24")
    parser.add_argument("--n", type=int, default=100, help="test-split structures to flag")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (all cores)")
    args = parser.parse_args()

    from analysis.sun import NoveltyReference, sun_flags, sun_rate
    from generators.data import load_split

    train = load_split(args.dataset, "train", progress=False)
    test = load_split(args.dataset, "test", limit=args.n, progress=False)
    start = time.perf_counter()
    reference = NoveltyReference(
        [r.structure for r in train.records],
        ids=[r.material_id for r in train.records],
        n_jobs=args.jobs,
    )
    built = time.perf_counter() - start
    batch = [r.structure for r in test.records]
    start = time.perf_counter()
    flags = sun_flags(batch, [0.0] * len(batch), reference)
    matched = time.perf_counter() - start
    summary = sun_rate(flags)
    print(f"{args.dataset}: {len(train.records)} training structures, {len(batch)} test ones")
    print(f"reference built:  {built:7.1f} s (jobs {args.jobs or 'all'})")
    print(f"{len(batch)} structures flagged: {matched:7.1f} s")
    print(
        f"n_novel {summary['n_novel']}, n_unique {summary['n_unique']}, "
        f"reference errors {len(reference.errors)}, load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
