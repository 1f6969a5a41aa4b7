"""Where one CHGNet energy/forces/stress evaluation of the batched relaxer spends its CPU time.

Times, per structure and summed over ``--n`` rattled carbon_24 test structures (one structure per
pass, as the relaxer's default pass size puts them on this CPU): the graph build from the
relaxer's neighbour cache, CHGNet's ``BatchedGraph.from_graphs`` (bond vectors and bases), the
network forward pass (:func:`relax.chgnet_model.model_energy`), the one gradient with respect to
positions and strains, and the composition model. With ``--compile`` it then times the same
evaluations with ``model_energy`` wrapped in ``torch.compile(dynamic=True)`` (the compile itself is
reported apart) and checks that energies and forces agree.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/chgnet_evaluation.py --n 16 --compile \
        --out benchmarks/results/chgnet_evaluation_16.json

CPU seconds (``time.process_time``) are reported, so the split holds on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("graph", "batch", "forward", "gradient", "composition")


def evaluate_split(model: Any, builds: list[Any]) -> tuple[dict[str, float], list[tuple]]:
    """CPU seconds per stage and the (energy, forces) results, one structure per pass.

    ``builds`` are callables returning each structure's CHGNet graph (from the relaxer's cache).
    """
    import torch
    from chgnet.model.model import BatchedGraph

    from relax import chgnet_model

    seconds = dict.fromkeys(STAGES, 0.0)
    results = []
    for build in builds:
        t0 = time.process_time()
        graph = build()
        t1 = time.process_time()
        with torch.enable_grad():
            batched = BatchedGraph.from_graphs(
                [graph],
                bond_basis_expansion=model.bond_basis_expansion,
                angle_basis_expansion=model.angle_basis_expansion,
                compute_stress=True,
            )
            t2 = time.process_time()
            energy = chgnet_model.model_energy(model, batched)
            total = energy * len(graph.atomic_number) if model.is_intensive else energy
            t3 = time.process_time()
            grads = torch.autograd.grad(total.sum(), [*batched.atom_positions, *batched.strains])
            t4 = time.process_time()
        with torch.inference_mode():
            model.composition_model([graph])
        t5 = time.process_time()
        marks = (t0, t1, t2, t3, t4, t5)
        for k, stage in enumerate(STAGES):
            seconds[stage] += marks[k + 1] - marks[k]
        results.append((float(total.detach()), -grads[0].detach().numpy()))
    return seconds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=16, help="number of carbon_24 test structures")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    args = parser.parse_args()

    import torch
    from bench_relax import load_structures, uptime  # the script directory is on sys.path

    from relax import chgnet_model
    from relax.chgnet_graphs import GraphCache

    torch.set_num_threads(1)
    items = load_structures(args.n, 0.05, 0.02, 0)
    model = chgnet_model.load_chgnet()
    converter = model.graph_converter
    cache = GraphCache(
        [[site.specie.Z for site in s] for _, s in items],
        atom_cutoff=converter.atom_graph_cutoff,
        bond_cutoff=converter.bond_graph_cutoff,
    )
    builds = [
        (lambda i=i, s=s: cache.graph(i, s.cart_coords, s.lattice.matrix))
        for i, (_, s) in enumerate(items)
    ]
    graphs = [build() for build in builds]  # also the first neighbour search of each
    summary: dict[str, Any] = {
        "command": "benchmarks/chgnet_evaluation.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "uptime_start": uptime(),
        "n_structures": len(items),
        "atoms": sum(len(g.atomic_number) for g in graphs),
        "directed_atom_graph_edges": sum(len(g.atom_graph) for g in graphs),
        "angles": sum(len(g.bond_graph) for g in graphs),
    }
    eager = []
    for _ in range(args.repeats):
        seconds, reference = evaluate_split(model, builds)
        eager.append(seconds)
        print("eager", {k: round(v, 3) for k, v in seconds.items()}, flush=True)
    summary["eager_cpu_s"] = eager
    summary["eager_total_cpu_s"] = [sum(s.values()) for s in eager]

    if args.compile:
        plain = chgnet_model.model_energy
        chgnet_model.model_energy = torch.compile(plain, dynamic=True)
        try:
            start = time.perf_counter()
            evaluate_split(model, builds)
            summary["compile_and_first_pass_wall_s"] = time.perf_counter() - start
            compiled = []
            for _ in range(args.repeats):
                seconds, results = evaluate_split(model, builds)
                compiled.append(seconds)
                print("compiled", {k: round(v, 3) for k, v in seconds.items()}, flush=True)
        finally:
            chgnet_model.model_energy = plain
        summary["compiled_cpu_s"] = compiled
        summary["compiled_total_cpu_s"] = [sum(s.values()) for s in compiled]
        summary["compiled_max_energy_diff_eV_per_atom"] = max(
            abs(a[0] - b[0]) / len(g.atomic_number)
            for a, b, g in zip(reference, results, graphs, strict=True)
        )
        summary["compiled_max_force_diff_eV_per_A"] = max(
            float(np.abs(a[1] - b[1]).max()) for a, b in zip(reference, results, strict=True)
        )
    summary["uptime_end"] = uptime()
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
