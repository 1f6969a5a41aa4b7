"""CDVAE and DP-CDVAE sampling speed: this tree against 73365c3, alternating rounds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed_cdvae_sampling.py [--rounds 5]
        [--steps 20] [--crystals 16] [--threads 1] [--config cpu] [--models cdvae dpcdvae]
        [--worktree-dir DIR]

The old code is a git worktree of ``--commit`` (73365c3, the code before the sampling speed
work): in ``--worktree-dir``/<commit> when that option is given (created if missing and kept
for later runs), otherwise in a temporary directory removed at the end.

Both sides load the same untrained ``--config`` network (carbon_24 sizes, seed 0; the weights
are written once by the parent and loaded by both) and run the sampling chain of
``sample_structure`` on the same ``--crystals`` carbon_24 training crystals (their atom counts,
lattices and carbon types, as a reconstruction decodes them) with the same seed. A chain is cut
to ``--steps`` decoder calls — CDVAE: 4 of its 50 noise levels (σ = 10, 1.05, 0.095, 0.01 Å)
× steps/4 Langevin steps; DP-CDVAE: ``--steps`` strided reverse steps — and the cost of a
decoder call does not depend on where in the chain it is, so the full chains are extrapolated
from it: 5000 calls for CDVAE (50 levels × 100 steps), 999 for DP-CDVAE. The encoder takes no
part in sampling; both sides build it with ``num_spherical`` 4 so that a worker does not spend
its first minute on the sympy basis of the ``paper`` encoder.

Each round runs the old and the new code in fresh subprocesses (order swapped every round),
after a warm-up chain of 2 calls in each. Printed per model: wall and CPU (process) seconds per
decoder call (old/new ratios, min and median), the extrapolated samples per second of the full
chain (min and median of the rounds), the load average during the rounds, and the largest
difference between the two sides' final coordinates (modulo 1) and whether the atom types agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_common import (
    REPO,
    TABLE_HEADER,
    detached_worktree,
    load_line,
    run_rounds,
    summarise,
    worker_setup,
)

REFERENCE_COMMIT = "73365c3"
FULL_CHAIN_CALLS = {"cdvae": 5000, "dpcdvae": 999}
"""Decoder calls of a full chain: 50 levels × 100 Langevin steps; T − 1 reverse steps."""
CDVAE_LEVELS = [0, 16, 33, 49]
"""Noise levels (indices into the 50 σ) of the shortened CDVAE chain."""


@contextmanager
def old_worktree(commit: str, directory: Path | None) -> Iterator[Path]:
    """A detached worktree of ``commit``: kept under ``directory`` if given, else temporary."""
    if directory is not None:
        tree = directory / commit
        if not (tree / "generators").is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit],
                check=True,
                capture_output=True,
            )
        yield tree
        return
    with detached_worktree(commit) as tree:
        yield tree


def model_config(model: str, config: str) -> dict[str, Any]:
    """The ``model`` section of ``config`` for carbon_24, encoder basis at num_spherical 4."""
    from generators.configs import load_config

    section = load_config(model, config, "carbon_24")["model"]
    section["encoder"] = {**section.get("encoder", {}), "num_spherical": 4}
    return section


def write_inputs(workdir: Path, models: list[str], config: str, n_crystals: int) -> None:
    """Crystals (atom counts, lattices, carbon types), latents and each model's weights."""
    import torch

    from generators.crystal import structures_to_batch
    from generators.data import load_split
    from generators.registry import build_model

    records = load_split("carbon_24", "train", limit=n_crystals, progress=False).records
    batch = structures_to_batch([record.structure for record in records])
    for model_name in models:
        section = model_config(model_name, config)
        torch.manual_seed(0)
        model = build_model(model_name, section)
        (workdir / f"{model_name}.json").write_text(json.dumps(section))
        torch.save(
            {
                "state": model.state_dict(),
                "z": torch.randn(n_crystals, model.latent_dim),
                "num_atoms": batch.num_atoms.view(-1),
                "lattice": batch.lattice.view(-1, 3, 3),
                "atom_types": batch.atom_types,
            },
            workdir / f"{model_name}.pt",
        )


def worker(args: argparse.Namespace) -> None:
    """Time one shortened chain in this process and print one JSON line."""
    worker_setup(args.worker, args.threads)
    import torch

    from generators.registry import build_model

    workdir = Path(args.workdir)
    section = json.loads((workdir / f"{args.model}.json").read_text())
    inputs = torch.load(workdir / f"{args.model}.pt", weights_only=True)
    model = build_model(args.model, section)
    model.load_state_dict(inputs["state"])
    model.eval()
    model.progress = False
    full_sigmas = model.sigmas.clone() if args.model == "cdvae" else None

    def run(calls: int, seed: int):  # type: ignore[no-untyped-def]
        if args.model == "cdvae":
            levels = CDVAE_LEVELS if calls >= len(CDVAE_LEVELS) else CDVAE_LEVELS[:1]
            model.sigmas = full_sigmas[levels].clone()
            model.configure_sampling(steps_per_level=calls // len(levels))
        else:
            model.configure_sampling(steps=calls)
        with torch.no_grad():
            return model.sample_structure(
                inputs["z"],
                inputs["num_atoms"],
                inputs["lattice"],
                inputs["atom_types"],
                torch.Generator().manual_seed(seed),
            )

    run(2, 1)  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    frac, types = run(args.steps, 0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    torch.save(
        {"frac": frac, "types": types},
        workdir / f"sample-{args.model}-{Path(args.worker).name}.pt",
    )
    per_call = wall / args.steps
    print(
        json.dumps(
            {
                "wall_per_call": per_call,
                "cpu_per_call": cpu / args.steps,
                "samples_per_s": len(inputs["num_atoms"])
                / (per_call * FULL_CHAIN_CALLS[args.model]),
            }
        )
    )


def samples_line(results: dict[str, list[dict[str, Any]]]) -> str:
    """Extrapolated full-chain samples/s per side: min and median over the rounds."""
    parts = []
    for side in ("old", "new"):
        values = [row["samples_per_s"] for row in results[side]]
        parts.append(f"{side} min {min(values):.4f}, median {statistics.median(values):.4f}")
    return "full-chain samples/s (extrapolated): " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--crystals", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--models", nargs="+", default=["cdvae", "dpcdvae"])
    parser.add_argument("--commit", default=REFERENCE_COMMIT)
    parser.add_argument("--worktree-dir", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.steps < len(CDVAE_LEVELS) or args.steps % len(CDVAE_LEVELS):
        parser.error(f"--steps must be a positive multiple of {len(CDVAE_LEVELS)}")

    import torch

    reports = []
    with tempfile.TemporaryDirectory(prefix="dftloop-speed-inputs-") as tmp:
        workdir = Path(tmp)
        write_inputs(workdir, args.models, args.config, args.crystals)
        with old_worktree(args.commit, args.worktree_dir) as old_tree:
            for model_name in args.models:
                worker_args = [
                    "--workdir", str(workdir), "--model", model_name,
                    "--steps", str(args.steps), "--threads", str(args.threads),
                ]  # fmt: skip
                results = run_rounds(
                    Path(__file__).resolve(),
                    {"old": old_tree, "new": REPO},
                    worker_args,
                    args.rounds,
                )
                old = torch.load(workdir / f"sample-{model_name}-{old_tree.name}.pt")
                new = torch.load(workdir / f"sample-{model_name}-{REPO.name}.pt")
                diff = old["frac"] - new["frac"]
                reports.append((model_name, results, diff, old["types"], new["types"]))
    for model_name, results, diff, old_types, new_types in reports:
        print()
        print(
            f"{model_name} sampling, {args.crystals} carbon_24 crystals, config {args.config}, "
            f"{args.steps} decoder calls (full chain {FULL_CHAIN_CALLS[model_name]}), "
            f"{args.threads} thread(s), {args.rounds} rounds; old = {args.commit}"
        )
        print(TABLE_HEADER)
        print(summarise(results, "wall_per_call", "wall s/call", lambda x: f"{x:.4f}"))
        print(summarise(results, "cpu_per_call", "CPU s/call", lambda x: f"{x:.4f}"))
        print(samples_line(results))
        print(load_line(results))
        print(
            f"final samples old vs new: max |Δfrac| (mod 1) "
            f"{float((diff - diff.round()).abs().max()):.1e}, "
            f"atom types equal: {bool(torch.equal(old_types, new_types))}"
        )


if __name__ == "__main__":
    main()
