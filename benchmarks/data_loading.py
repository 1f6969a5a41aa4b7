"""Load time of a benchmark split: first load (parse + preprocess) versus the cached load.

Usage::

    .venv/bin/python benchmarks/data_loading.py [--dataset perov_5] [--split val] [--workers 2]

The cache goes to a fresh temporary DFTLOOP_CACHE_DIR, so the first load is always cold.
Prints one JSON line with the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="perov_5")
    parser.add_argument("--split", default="val")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="cached loads to time")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        os.environ["DFTLOOP_CACHE_DIR"] = cache
        from generators.data import load_split

        t0 = time.perf_counter()
        first = load_split(args.dataset, args.split, workers=args.workers, progress=False)
        cold = time.perf_counter() - t0
        assert not first.from_cache
        warm = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            again = load_split(args.dataset, args.split, progress=False)
            warm.append(time.perf_counter() - t0)
            assert again.from_cache and len(again) == len(first)
        size = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache))
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "split": args.split,
                "rows": len(first) + len(first.errors),
                "errors": len(first.errors),
                "workers": args.workers,
                "first_load_s": round(cold, 2),
                "cached_load_s_median": round(sorted(warm)[len(warm) // 2], 2),
                "cache_bytes": size,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
