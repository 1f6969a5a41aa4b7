"""ContinuouSP throughput on this CPU: Niggli reduction, MALA sampler steps, CD training.

Usage::

    .venv/bin/python benchmarks/bench_continuousp.py [--threads 1] [--quick] [--bias]

Prints a JSON summary and markdown lines for docs/benchmarks.md. Structures are perov_5
training crystals (5 atoms each), the network is the paper's perov_5 size (32/32/32, 3 conv).
``--bias`` also measures the effect of the Niggli reduction on a toy energy of the density only
(see generators/mcmc.py): the exact stationary mean of log V versus the chain's.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from generators.configs import load_config
from generators.crystal import structures_to_batch
from generators.data import load_split
from generators.mcmc import MalaSchedule, mala_sample
from generators.models.continuousp import ContinuouSP
from generators.niggli import niggli_reduce


def bench_niggli(n: int = 1024, repeats: int = 3) -> dict:
    cells = torch.randn(n, 3, 3, generator=torch.Generator().manual_seed(0)) * 4
    tic = time.perf_counter()
    for _ in range(repeats):
        result = niggli_reduce(cells)
    cold = (time.perf_counter() - tic) / repeats
    reduced = result.lattice
    tic = time.perf_counter()
    for _ in range(repeats):
        niggli_reduce(reduced)
    warm = (time.perf_counter() - tic) / repeats
    return {
        "n": n,
        "random_cells_per_s": n / cold,
        "rounds_random": result.iterations,
        "reduced_cells_per_s": n / warm,
    }


def bench_sampler(model: ContinuouSP, batch, steps: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    tic = time.perf_counter()
    result = model.run_chains(batch.atom_types, batch.num_atoms, steps=steps, generator=gen)
    seconds = time.perf_counter() - tic
    crystals = int(batch.num_graphs)
    return {
        "crystals": crystals,
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "crystal_steps_per_s": steps * crystals / seconds,
        "acceptance": float(result.acceptance.mean()),
    }


def bench_training(model: ContinuouSP, batch, batches: int) -> dict:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    model.training_loss(batch, 1)  # warm-up
    tic = time.perf_counter()
    for _ in range(batches):
        terms = model.training_loss(batch, 1)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    seconds = time.perf_counter() - tic
    return {
        "batch_size": int(batch.num_graphs),
        "train_mcmc_steps": int(model.config["train_mcmc_steps"]),
        "batches": batches,
        "seconds": seconds,
        "crystals_per_s": batches * int(batch.num_graphs) / seconds,
    }


def bench_reduction_bias(chains: int = 200, steps: int = 1500, n_atoms: int = 2) -> dict:
    """MALA + Niggli on E = (log(ρ/ρ0))², T = 1: exact log V ~ N(log(N/ρ0) + (N+3)/2, 1/2)."""
    gen = torch.Generator().manual_seed(0)
    num_atoms = torch.full((chains,), n_atoms)

    def energy(x: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        rho = n_atoms / torch.linalg.det(cell).abs()
        return torch.log(rho / 0.05) ** 2 + 0.0 * x.sum()

    x0 = torch.rand(chains * n_atoms, 3, generator=gen, dtype=torch.float64) * 5
    cell0 = torch.eye(3, dtype=torch.float64).repeat(chains, 1, 1) * (n_atoms / 0.05) ** (1 / 3)
    schedule = MalaSchedule(steps, 0.3, 0.3, 1.0, 1.0)
    result = mala_sample(energy, x0, cell0, num_atoms, schedule, generator=gen, reduce=True)
    log_v = torch.log(torch.linalg.det(result.lattice).abs())
    return {
        "chains": chains,
        "steps": steps,
        "exact_mean_log_v": math.log(n_atoms / 0.05) + (n_atoms + 3) / 2,
        "exact_var_log_v": 0.5,
        "minimum_of_e_log_v": math.log(n_atoms / 0.05),
        "chain_mean_log_v": float(log_v.mean()),
        "chain_var_log_v": float(log_v.var()),
        "acceptance": float(result.acceptance.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer steps and batches")
    parser.add_argument("--bias", action="store_true", help="also measure the reduction bias")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    records = load_split("perov_5", "train", limit=128, progress=False).records
    structures = [r.structure for r in records]
    ids = [r.material_id for r in records]
    config = load_config("continuousp", "cpu-small", "perov_5")["model"]
    model = ContinuouSP(config).eval()
    steps = 10 if args.quick else 30
    out: dict = {"threads": args.threads, "niggli": bench_niggli()}
    out["sampler"] = [
        bench_sampler(model, structures_to_batch(structures[:b], ids[:b]), steps) for b in (16, 128)
    ]
    out["training_cpu_small"] = bench_training(
        model, structures_to_batch(structures[:16], ids[:16]), 1 if args.quick else 3
    )
    if args.bias:
        out["reduction_bias"] = bench_reduction_bias()
    print(json.dumps(out, indent=2))
    s16, s128 = out["sampler"]
    train = out["training_cpu_small"]
    print()
    print(
        f"- Niggli reduction, random Gaussian cells: {out['niggli']['random_cells_per_s']:.0f} "
        f"cells/s ({out['niggli']['rounds_random']} rounds for the batch of 1024); already "
        f"reduced: {out['niggli']['reduced_cells_per_s']:.0f} cells/s"
    )
    print(
        f"- MALA, 16 perov_5 crystals: {s16['steps_per_s']:.2f} steps/s "
        f"({s16['crystal_steps_per_s']:.0f} crystal-steps/s, acceptance {s16['acceptance']:.2f})"
    )
    print(
        f"- MALA, 128 crystals (paper batch): {s128['steps_per_s']:.2f} steps/s "
        f"({s128['crystal_steps_per_s']:.0f} crystal-steps/s): one 1000-step chain batch "
        f"= {1000 / s128['steps_per_s'] / 60:.1f} min"
    )
    print(
        f"- CD training, cpu-small (batch 16, 100 MALA steps per batch): "
        f"{train['crystals_per_s']:.2f} crystals/s"
    )


if __name__ == "__main__":
    main()
