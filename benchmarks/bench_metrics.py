"""Seconds to evaluate N structures: validity + CSP match rate + COV (CrystalNN fingerprints).

The "generated" set is a rattled copy (Gaussian, sigma 0.05 Å per Cartesian component, seeded)
of the first N structures of a dataset's test split; the ground truth is those N structures.
Stages are timed separately; the fingerprint stage is timed with a cold cache (in memory) and
again with a warm one.

    .venv/bin/python benchmarks/bench_metrics.py --dataset perov_5 --n 1000 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="perov_5")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (all cores)")
    parser.add_argument("--sigma", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=None, help="write the timings as JSON")
    args = parser.parse_args()

    from analysis.coverage import coverage_from_fingerprints
    from analysis.datasets import cov_cutoffs
    from analysis.fingerprints import FingerprintCache, compute_fingerprints
    from analysis.matching import csp_match
    from analysis.validity import assess_validity, validity_metrics
    from generators.data import load_split

    t = time.perf_counter()
    split = load_split(args.dataset, args.split, limit=args.n, progress=False)
    ids = [r.material_id for r in split.records]
    gt = [r.structure for r in split.records]
    load_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    gen = []
    for s in gt:
        g = s.copy()
        disp = rng.normal(0.0, args.sigma, (len(s), 3))
        for i in range(len(s)):
            g.translate_sites([i], disp[i], frac_coords=False, to_unit_cell=True)
        gen.append(g)
    n_sites = sum(len(s) for s in gt)

    timings: dict[str, float] = {}
    t = time.perf_counter()
    records = assess_validity(gen, ids, n_jobs=args.jobs, progress=True)
    timings["validity_s"] = time.perf_counter() - t
    validity = validity_metrics(records)["validity"].value

    t = time.perf_counter()
    match = csp_match(
        [[g] for g in gen],
        gt,
        "diffcsp",
        ids=ids,
        pred_valid=[[r.valid] for r in records],
        n_jobs=args.jobs,
        progress=True,
    )
    timings["match_s"] = time.perf_counter() - t

    cache = FingerprintCache(None)
    t = time.perf_counter()
    gen_fps = compute_fingerprints(gen, ids, cache=cache, n_jobs=args.jobs, progress=True)
    gt_fps = compute_fingerprints(gt, ids, cache=cache, n_jobs=args.jobs, progress=True)
    timings["fingerprints_cold_s"] = time.perf_counter() - t
    t = time.perf_counter()
    struct_cut, comp_cut, _ = cov_cutoffs(args.dataset)
    cov = coverage_from_fingerprints(gen_fps, gt_fps, struct_cut, comp_cut)
    timings["coverage_distances_s"] = time.perf_counter() - t
    t = time.perf_counter()
    compute_fingerprints(gen, ids, cache=cache, n_jobs=args.jobs, progress=False)
    compute_fingerprints(gt, ids, cache=cache, n_jobs=args.jobs, progress=False)
    timings["fingerprints_warm_s"] = time.perf_counter() - t
    timings["total_cold_s"] = (
        timings["validity_s"]
        + timings["match_s"]
        + timings["fingerprints_cold_s"]
        + timings["coverage_distances_s"]
    )
    report = {
        "command": "benchmarks/bench_metrics.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None),
        "dataset": args.dataset,
        "n_structures": len(gt),
        "n_sites_gt": n_sites,
        "jobs": args.jobs or len(os.sched_getaffinity(0)),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_split_s": load_s,
        "timings_s": timings,
        "fingerprint_s_per_site": timings["fingerprints_cold_s"] / (2 * n_sites),
        "values": {
            "validity": validity,
            "match_rate": match["match_rate"].value,
            "rmse": match["rmse"].value,
            "cov_recall": cov["cov_recall"].value,
            "cov_precision": cov["cov_precision"].value,
        },
        "loadavg_at_end": os.getloadavg(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
