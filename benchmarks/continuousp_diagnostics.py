"""ContinuouSP memorisation diagnostics on a few perov_5 training structures.

Trains the energy by contrastive divergence (``ContinuouSP.contrastive_divergence``, plain Adam
on one batch holding all structures) and reports, every few Adam steps, E(real), E(sample),
the acceptance and what the noise-started negatives look like (volume per atom, shortest
interatomic distance). Then:

* gradients of the energy w.r.t. positions and cell against central finite differences;
* "stay" test: chains started AT the training crystals over the low-temperature tail of the
  schedule (``tail_schedule``); a crystal stays if StructureMatcher still matches it (a necessary
  condition for memorisation);
* CSP sampling from noise with k candidates per crystal, matched with ContinuouSP's protocol
  (``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``, any candidate).

Example (see docs/continuousp.md)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/continuousp_diagnostics.py \\
        --n 8 --steps 50 --adam-steps 80 --lr 1e-2 --k 4 --baseline
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from generators.configs import load_config
from generators.crystal import frac_to_cart, structures_to_batch
from generators.data import load_split
from generators.mcmc import MalaResult
from generators.models.continuousp import ContinuouSP
from generators.registry import build_model

MATCHER = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)


def chain_structures(result: MalaResult, types: torch.Tensor, counts: torch.Tensor) -> list:
    """Final chain states as pymatgen Structures."""
    out, start = [], 0
    for b, n in enumerate(counts.tolist()):
        out.append(
            Structure(
                Lattice(result.lattice[b].detach().double().numpy()),
                types[start : start + n].tolist(),
                result.cart_coords[start : start + n].detach().double().numpy(),
                coords_are_cartesian=True,
            )
        )
        start += n
    return out


def geometry(structures: list) -> dict[str, float]:
    """Mean volume per atom (Å^3) and mean shortest distance incl. periodic images (Å)."""
    shortest = []
    for s in structures:
        dist = s.distance_matrix + np.eye(len(s)) * 1e9
        shortest.append(min(float(dist.min()), min(s.lattice.abc)))
    return {
        "volume_per_atom": float(np.mean([s.volume / len(s) for s in structures])),
        "shortest_distance": float(np.mean(shortest)),
    }


def gradient_check(model: ContinuouSP, batch, h: float = 1e-5) -> dict[str, float]:
    """Largest |autograd − central difference| over a few position and cell entries."""
    model = model.double()
    lattice = batch.lattice.double()
    cart = frac_to_cart(batch.frac_coords.double(), lattice, batch.num_atoms)
    types, counts = batch.atom_types, batch.num_atoms
    x, cell = cart.clone().requires_grad_(True), lattice.clone().requires_grad_(True)
    grad_x, grad_cell = torch.autograd.grad(model.energy(x, types, cell, counts).sum(), [x, cell])

    def total(c: torch.Tensor, lat: torch.Tensor) -> float:
        return float(model.energy(c, types, lat, counts).sum().detach())

    worst = {"positions": 0.0, "cell": 0.0}
    rng = np.random.default_rng(0)
    for _ in range(6):
        d = torch.zeros_like(cart)
        i, j = int(rng.integers(len(cart))), int(rng.integers(3))
        d[i, j] = h
        fd = (total(cart + d, lattice) - total(cart - d, lattice)) / (2 * h)
        worst["positions"] = max(worst["positions"], abs(fd - float(grad_x[i, j])))
        d = torch.zeros_like(lattice)
        b, i, j = int(rng.integers(len(lattice))), int(rng.integers(3)), int(rng.integers(3))
        d[b, i, j] = h
        fd = (total(cart, lattice + d) - total(cart, lattice - d)) / (2 * h)
        worst["cell"] = max(worst["cell"], abs(fd - float(grad_cell[b, i, j])))
    model.float()
    return worst


def evaluate(model: ContinuouSP, structures: list, steps: int, k: int, seed: int) -> dict:
    """Stay test and noise-started CSP matching (k candidates) of ``model``."""
    model.eval()
    batch = structures_to_batch(structures)
    stay = model.data_started_chains(batch, steps, torch.Generator().manual_seed(seed))
    stayed = chain_structures(stay, batch.atom_types, batch.num_atoms)
    n = len(structures)
    repeated = structures_to_batch(structures * k)
    chains = model.run_chains(
        repeated.atom_types,
        repeated.num_atoms,
        steps=steps,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    samples = chain_structures(chains, repeated.atom_types, repeated.num_atoms)
    hits = [
        MATCHER.get_rms_dist(g, s) is not None for g, s in zip(structures * k, samples, strict=True)
    ]
    return {
        "stay_matched": sum(
            MATCHER.get_rms_dist(g, s) is not None for g, s in zip(structures, stayed, strict=True)
        ),
        "csp_matched_k": sum(any(hits[i + c * n] for c in range(k)) for i in range(n)),
        "csp_matched_1": sum(hits[:n]),
        "n": n,
        "k": k,
        "sample_energy": float(chains.energy.mean()),
        **{f"sample_{key}": v for key, v in geometry(samples).items()},
    }


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="perov_5 training structures")
    parser.add_argument("--config", default="cpu-memorise")
    parser.add_argument("--steps", type=int, default=50, help="MALA steps (train and sample)")
    parser.add_argument("--adam-steps", type=int, default=80)
    parser.add_argument("--minutes", type=float, default=None, help="stop training after")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--data-start-fraction", type=float, default=0.0)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true", help="also evaluate untrained")
    parser.add_argument(
        "--checkpoint", default=None, help="start from a trained checkpoint (e.g. last.pt)"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    split = load_split("perov_5", "train", limit=args.n, progress=False)
    structures = split.structures
    batch = structures_to_batch(structures)
    overrides = {"data_start_fraction": args.data_start_fraction, "max_negative_atoms": 20}
    config = load_config("continuousp", args.config, "perov_5", {"model": overrides})
    model = build_model("continuousp", config["model"])
    fresh = {key: value.clone() for key, value in model.state_dict().items()}
    if args.checkpoint:
        from generators.trainer import load_checkpoint

        model, _ = load_checkpoint(args.checkpoint, expect_model="continuousp")
    report: dict = {"args": vars(args), "gradient_abs_error": gradient_check(model, batch)}
    if args.baseline:
        untrained = build_model("continuousp", config["model"])
        untrained.load_state_dict(fresh)
        report["untrained"] = evaluate(untrained, structures, args.steps, args.k, args.seed)
        print(json.dumps({"untrained": report["untrained"]}), flush=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    tic, history, step = time.monotonic(), [], -1
    for step in range(args.adam_steps):
        if args.minutes is not None and time.monotonic() - tic > 60 * args.minutes:
            break
        model.train()
        optimiser.zero_grad()
        types, counts = model.negative_compositions(batch)
        chains = model.run_chains(types, counts, steps=args.steps)
        real = model.batch_energy(batch)
        sample = model.energy(chains.cart_coords, types, chains.lattice, counts)
        loss = real.mean() - sample.mean()
        loss = loss + float(model.config["regularization_lambda"]) * (
            (real**2).mean() + (sample**2).mean()
        )
        if args.data_start_fraction > 0:  # the model's CD loss (own chains; these only report)
            loss = model.contrastive_divergence(batch, args.steps)["loss"]
        loss.backward()
        optimiser.step()
        if step % 5 == 0 or step == args.adam_steps - 1:
            row = {
                "adam_step": step,
                "seconds": round(time.monotonic() - tic, 1),
                "energy_real": round(float(real.mean()), 3),
                "energy_sample": round(float(sample.mean()), 3),
                "acceptance": round(float(chains.acceptance.mean()), 2),
                **{
                    f"negatives_{key}": round(v, 2)
                    for key, v in geometry(chain_structures(chains, types, counts)).items()
                },
            }
            history.append(row)
            print(json.dumps(row), flush=True)
    report["adam_steps"] = step + 1
    report["train_minutes"] = (time.monotonic() - tic) / 60
    report["history"] = history
    report["trained"] = evaluate(model, structures, args.steps, args.k, args.seed)
    report["trained_gradient_abs_error"] = gradient_check(model, batch)
    print(json.dumps({key: v for key, v in report.items() if key != "history"}, indent=1))


if __name__ == "__main__":
    main()
