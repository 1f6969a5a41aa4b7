"""DiffCSP CSP sampling speed: this tree against d3e0318 with self-edges, alternating rounds.

    .venv/bin/python benchmarks/speed_diffcsp_sampling.py [--rounds 5] [--steps 50]
        [--crystals 32] [--threads 1] [--generate]

Both sides sample the compositions of the same ``--crystals`` perov_5 training crystals with
the same weights (the perov_5 paper net, 4 × 256, 128 frequencies) and the same seed, for
``--steps`` predictor-corrector steps (2 network calls each; a full chain is 1000 steps and
its time is linear in the steps). Each round runs the old and the new code in fresh
subprocesses (order swapped every round) after one warm-up call of 2 steps in each. Prints
the wall and CPU (process) seconds per step of every round, the old/new ratios (min, median)
and the load average, and the largest difference between the two sides' final samples
(fractional coordinates modulo 1, lattice relative to its size). ``--generate`` times
ab-initio generation (DiffCSP-C, the same net with a type head) of ``--crystals`` crystals
instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_common import (
    REFERENCE_COMMIT,
    REPO,
    TABLE_HEADER,
    load_line,
    reference_worktree,
    run_rounds,
    summarise,
    worker_model_and_batches,
    worker_setup,
    write_inputs,
)


def worker(args: argparse.Namespace) -> None:
    """Time one sampling run in this process and print one JSON line."""
    worker_setup(args.worker, args.threads)
    import torch

    workdir = Path(args.workdir)
    config = "paper-generate" if args.generate else "paper"
    model, batches = worker_model_and_batches(workdir, args.crystals, config)
    template = batches[0]
    model.eval()
    if args.generate:

        def run(steps: int, seed: int):  # type: ignore[no-untyped-def]
            model.configure_sampling(steps=steps)
            return model.sample_generate(args.crystals, torch.Generator().manual_seed(seed))
    else:

        def run(steps: int, seed: int):  # type: ignore[no-untyped-def]
            model.configure_sampling(steps=steps)
            return model.sample_csp(template, torch.Generator().manual_seed(seed))

    run(2, 1)  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    out = run(args.steps, 0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    torch.save(
        {"frac": out.frac_coords, "lattice": out.lattice, "types": out.atom_types},
        workdir / f"sample-{Path(args.worker).name}.pt",
    )
    print(json.dumps({"wall_per_step": wall / args.steps, "cpu_per_step": cpu / args.steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--crystals", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--generate", action="store_true")
    parser.add_argument("--commit", default=REFERENCE_COMMIT)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    with tempfile.TemporaryDirectory(prefix="dftloop-speed-inputs-") as tmp:
        workdir = Path(tmp)
        write_inputs(workdir, args.crystals, "paper-generate" if args.generate else "paper")
        with reference_worktree(args.commit) as old_tree:
            worker_args = [
                "--workdir", str(workdir), "--crystals", str(args.crystals),
                "--steps", str(args.steps), "--threads", str(args.threads),
            ]  # fmt: skip
            if args.generate:
                worker_args.append("--generate")
            results = run_rounds(
                Path(__file__).resolve(), {"old": old_tree, "new": REPO}, worker_args, args.rounds
            )
            old = torch.load(workdir / f"sample-{old_tree.name}.pt", weights_only=True)
            new = torch.load(workdir / f"sample-{REPO.name}.pt", weights_only=True)
    frac = old["frac"] - new["frac"]
    frac_diff = float((frac - frac.round()).abs().max())
    scale = old["lattice"].abs().max()
    lattice_diff = float((old["lattice"] - new["lattice"]).abs().max() / scale)
    same_types = bool(torch.equal(old["types"], new["types"]))
    task = "generation" if args.generate else "CSP"
    print()
    print(
        f"DiffCSP {task} sampling, {args.crystals} perov_5 crystals, {args.steps} steps, "
        f"{args.threads} thread(s), {args.rounds} rounds; old = {args.commit} + self-edges"
    )
    print(TABLE_HEADER)
    print(summarise(results, "wall_per_step", "wall s/step", lambda x: f"{x:.3f}"))
    print(summarise(results, "cpu_per_step", "CPU s/step", lambda x: f"{x:.3f}"))
    print(load_line(results))
    print(
        f"final samples old vs new: max |Δfrac| (mod 1) {frac_diff:.1e}, "
        f"max |Δlattice|/max|lattice| {lattice_diff:.1e}, atom types equal: {same_types}"
    )


if __name__ == "__main__":
    main()
