"""Batched CHGNet relaxation versus one ASE relaxation at a time, on rattled carbon_24 structures.

Both paths use the same optimiser (FIRE with ASE's defaults), the same cell parametrisation
(Fréchet), the same convergence criterion (fmax on atom forces and cell rows) and the same step
limit and the same torch thread count (``--threads``). The sequential path is what a user gets
from ``FIRE(FrechetCellFilter(atoms))`` with CHGNet's ASE calculator (equivalently chgnet's
``StructOptimizer``). The structures are split into ``--blocks`` blocks and the two paths
alternate block by block (batched first, then sequential first, ...), so that both see the same
share of a varying machine load. ``--workers N`` lets the batched path use N processes.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_relax.py --n 64 \
        --out benchmarks/results/relax.json

Prints a JSON summary (structures/min per path, speed-up, energy agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
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


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes), seconds."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(relaxer, items) -> tuple[float, float, list]:
    """Relax ``items``; return wall seconds, CPU seconds and the results."""
    start, cpu = time.perf_counter(), cpu_seconds()
    results = relaxer.relax(items)
    return time.perf_counter() - start, cpu_seconds() - cpu, results


def uptime() -> str:
    """The ``uptime`` line (load averages), for the record."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="number of carbon_24 test structures")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--rattle", type=float, default=0.05, help="Gaussian rattle, Å")
    parser.add_argument("--strain", type=float, default=0.02, help="uniform strain, ±")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both paths")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes of the batched path (1 thread each)"
    )
    parser.add_argument("--max-batch-atoms", type=int, default=None, help="batched pass size")
    parser.add_argument(
        "--device", default=None, help="torch device of both paths (default: GPU if present)"
    )
    parser.add_argument(
        "--blocks",
        type=int,
        default=4,
        help="alternate the two paths over this many blocks of structures (fair share of load)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from relax.chgnet_model import load_chgnet, resolve_device
    from relax.chgnet_relaxer import CHGNetRelaxer

    torch.set_num_threads(args.threads)
    items = load_structures(args.n, args.rattle, args.strain, args.seed)
    device = resolve_device(args.device)
    load_chgnet(device=device)  # load once, outside the timings
    common = {"fmax": args.fmax, "max_steps": args.max_steps, "device": device}
    batched_kwargs = {**common, "workers": args.workers}
    if args.max_batch_atoms is not None:
        batched_kwargs["max_batch_atoms"] = args.max_batch_atoms
    uptime_start = uptime()
    t_batch = t_seq = cpu_batch = cpu_seq = 0.0
    batched: list = []
    sequential: list = []
    blocks = np.array_split(np.arange(len(items)), max(1, min(args.blocks, len(items))))
    with threadpool_limits(limits=1, user_api="blas"):
        for b, block in enumerate(blocks):
            part = [items[i] for i in block]
            order = ["batched", "sequential"] if b % 2 == 0 else ["sequential", "batched"]
            for path in order:
                if path == "batched":
                    dt, cpu, res = run(CHGNetRelaxer(mode="batched", **batched_kwargs), part)
                    t_batch += dt
                    cpu_batch += cpu
                    batched.extend(res)
                else:
                    dt, cpu, res = run(CHGNetRelaxer(mode="sequential", **common), part)
                    t_seq += dt
                    cpu_seq += cpu
                    sequential.extend(res)
                print(
                    f"block {b + 1}/{len(blocks)} {path}: {dt:.1f} s wall, {cpu:.1f} s cpu",
                    flush=True,
                )
    uptime_end = uptime()

    n_atoms = [len(s) for _, s in items]
    pairs = [
        (b, s)
        for b, s in zip(batched, sequential, strict=True)
        if b.error is None and s.error is None
    ]
    de = [abs(b.final_energy_per_atom_eV - s.final_energy_per_atom_eV) for b, s in pairs]
    de0 = [abs(b.initial_energy_per_atom_eV - s.initial_energy_per_atom_eV) for b, s in pairs]
    summary = {
        "command": "benchmarks/bench_relax.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k != "out" and v is not None
        ),
        "machine": {
            "cpu_count": os.cpu_count(),
            "uptime_start": uptime_start,
            "uptime_end": uptime_end,
            "python": platform.python_version(),
            "torch_threads": args.threads,
            "batched_workers": args.workers,
            "device": device,
        },
        "n_structures": len(items),
        "atoms_per_structure": {"min": min(n_atoms), "max": max(n_atoms), "total": sum(n_atoms)},
        "batched": {**_path_stats(t_batch, batched, sum(n_atoms)), "cpu_s": cpu_batch},
        "sequential_ase": {**_path_stats(t_seq, sequential, sum(n_atoms)), "cpu_s": cpu_seq},
        "speedup_batched_vs_sequential": t_seq / t_batch,
        # on a box shared with higher-priority work, CPU time measures the work each path needs
        "speedup_cpu_time": cpu_seq / cpu_batch,
        "final_energy_abs_diff_meV_per_atom": {
            "max": 1000 * max(de),
            "median": 1000 * float(np.median(de)),
            "n_within_1meV": int(sum(d < 1e-3 for d in de)),
            "n_compared": len(de),
        },
        "initial_energy_abs_diff_meV_per_atom_max": 1000 * max(de0),
        "same_step_counts": sum(b.n_ionic_steps == s.n_ionic_steps for b, s in pairs),
        "worst": sorted(
            (
                {
                    "id": b.structure_id,
                    "diff_meV": 1000 * abs(b.final_energy_per_atom_eV - s.final_energy_per_atom_eV),
                    "steps": [b.n_ionic_steps, s.n_ionic_steps],
                }
                for b, s in pairs
            ),
            key=lambda d: -d["diff_meV"],
        )[:5],
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def _path_stats(wall: float, results: list, n_atoms: int) -> dict:
    ok = [r for r in results if r.error is None]
    return {
        "wall_s": wall,
        "structures_per_min": 60 * len(results) / wall,
        "atoms_per_min": 60 * n_atoms / wall,
        "converged": sum(r.converged for r in results),
        "errors": len(results) - len(ok),
        "ionic_steps_total": sum(r.n_ionic_steps for r in ok),
        # energy+force+stress evaluations of one structure (steps + the initial one) per second
        "structure_evaluations_per_s": sum(r.n_ionic_steps + 1 for r in ok) / wall,
    }


if __name__ == "__main__":
    main()
