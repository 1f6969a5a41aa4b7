"""Batched CHGNet relaxation versus one ASE relaxation at a time, on rattled carbon_24 structures.

Both paths use the same optimiser (FIRE with ASE's defaults), the same cell parametrisation
(Fréchet), the same convergence criterion (fmax on atom forces and cell rows) and the same step
limit; both run torch on one thread. The sequential path is what a user gets from
``FIRE(FrechetCellFilter(atoms))`` with CHGNet's ASE calculator (equivalently chgnet's
``StructOptimizer``); ``--isolate`` also times the batched code one structure at a time, to
separate the gain from batching from the gain from the lighter gradient evaluation.

Usage::

    .venv/bin/python benchmarks/bench_relax.py --n 64 --out benchmarks/results/relax.json

Prints a JSON summary (structures/min per path, speed-up, energy agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def load_structures(n: int, rattle: float, strain: float, seed: int) -> list[tuple[str, object]]:
    from pymatgen.core import Structure

    from generators.data import load_split

    split = load_split("carbon_24", "test", limit=n, progress=False)
    rng = np.random.default_rng(seed)
    items = []
    for record in split.records[:n]:
        base = record.structure
        noise = rng.normal(0.0, rattle, (len(base), 3))
        s = Structure(
            base.lattice, base.species, base.cart_coords + noise, coords_are_cartesian=True
        )
        s.apply_strain(rng.uniform(-strain, strain, 3))
        items.append((record.material_id, s))
    return items


def run(relaxer, items) -> tuple[float, list]:
    start = time.perf_counter()
    results = relaxer.relax(items)
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="number of carbon_24 test structures")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--rattle", type=float, default=0.05, help="Gaussian rattle, Å")
    parser.add_argument("--strain", type=float, default=0.02, help="uniform strain, ±")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--sequential-n",
        type=int,
        default=None,
        help="run the slow sequential path on the first N structures only (default: all)",
    )
    parser.add_argument("--isolate", action="store_true", help="also batched code, batch of 1")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from relax.chgnet_model import load_chgnet
    from relax.chgnet_relaxer import CHGNetRelaxer

    torch.set_num_threads(args.threads)
    items = load_structures(args.n, args.rattle, args.strain, args.seed)
    load_chgnet()  # load once, outside the timings
    common = {"fmax": args.fmax, "max_steps": args.max_steps, "progress": True}
    with threadpool_limits(limits=1, user_api="blas"):
        t_batch, batched = run(CHGNetRelaxer(mode="batched", **common), items)
        n_seq = len(items) if args.sequential_n is None else min(args.sequential_n, len(items))
        t_seq, sequential = run(CHGNetRelaxer(mode="sequential", **common), items[:n_seq])
        t_iso = None
        if args.isolate:
            relaxer = CHGNetRelaxer(mode="batched", **common)
            t_iso = 0.0
            for item in items[:n_seq]:
                dt, _ = run(relaxer, [item])
                t_iso += dt

    n_atoms = [len(s) for _, s in items]
    de = [
        abs(b.final_energy_per_atom_eV - s.final_energy_per_atom_eV)
        for b, s in zip(batched[:n_seq], sequential, strict=True)
        if b.error is None and s.error is None
    ]
    de0 = [
        abs(b.initial_energy_per_atom_eV - s.initial_energy_per_atom_eV)
        for b, s in zip(batched[:n_seq], sequential, strict=True)
        if b.error is None and s.error is None
    ]
    summary = {
        "command": "benchmarks/bench_relax.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out",)
        ),
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_avg_1min_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
            "torch_threads": args.threads,
        },
        "n_structures": len(items),
        "n_structures_sequential": n_seq,
        "atoms_per_structure": {"min": min(n_atoms), "max": max(n_atoms), "total": sum(n_atoms)},
        "batched": _path_stats(t_batch, batched),
        "sequential_ase": _path_stats(t_seq, sequential),
        "batched_one_at_a_time": None
        if t_iso is None
        else {"wall_s": t_iso, "structures_per_min": 60 * n_seq / t_iso},
        "speedup_batched_vs_sequential": (t_seq / n_seq) / (t_batch / len(items)),
        "final_energy_abs_diff_meV_per_atom": {
            "max": 1000 * max(de),
            "median": 1000 * float(np.median(de)),
            "n_within_1meV": int(sum(d < 1e-3 for d in de)),
            "n_compared": len(de),
        },
        "initial_energy_abs_diff_meV_per_atom_max": 1000 * max(de0),
        "worst": sorted(
            (
                {
                    "id": b.structure_id,
                    "diff_meV": 1000 * abs(b.final_energy_per_atom_eV - s.final_energy_per_atom_eV),
                    "steps": [b.n_ionic_steps, s.n_ionic_steps],
                }
                for b, s in zip(batched[:n_seq], sequential, strict=True)
                if b.error is None and s.error is None
            ),
            key=lambda d: -d["diff_meV"],
        )[:5],
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def _path_stats(wall: float, results: list) -> dict:
    ok = [r for r in results if r.error is None]
    return {
        "wall_s": wall,
        "structures_per_min": 60 * len(results) / wall,
        "converged": sum(r.converged for r in results),
        "errors": len(results) - len(ok),
        "ionic_steps_total": sum(r.n_ionic_steps for r in ok),
        # energy+force+stress evaluations of one structure (steps + the initial one) per second
        "structure_evaluations_per_s": sum(r.n_ionic_steps + 1 for r in ok) / wall,
    }


if __name__ == "__main__":
    main()
