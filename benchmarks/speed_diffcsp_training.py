"""DiffCSP training-step speed: this tree against d3e0318 with self-edges, alternating rounds.

    .venv/bin/python benchmarks/speed_diffcsp_training.py [--rounds 5] [--steps 20]
        [--batch-size 32] [--crystals 256] [--threads 1]

Both sides train the same perov_5 paper net (4 × 256, 128 frequencies; same initial weights)
on the same ``--crystals`` perov_5 training crystals, cut into batches of ``--batch-size``
and taken in turn. A step is what the trainer does per batch: the loss (one random time step
per crystal), backward, gradient clipping by value 0.5 and an Adam step. Each round runs the
old and the new code in fresh subprocesses (order swapped every round); each times ``--steps``
steps after one warm-up step and, before that, reports the loss and the gradient norm of the
first batch for torch seed 0, so the two sides can be compared. Prints the wall and CPU
(process) seconds per step of every round, the old/new ratios (min, median) and the load.
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
    """Time ``--steps`` training steps in this process and print one JSON line."""
    worker_setup(args.worker, args.threads)
    import torch

    model, batches = worker_model_and_batches(Path(args.workdir), args.batch_size)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]

    torch.manual_seed(0)
    first = model.training_loss(batches[0], 1)["loss"]
    first.backward()
    grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in parameters)))
    first_loss = float(first)

    optimizer = torch.optim.Adam(parameters, lr=1e-3)

    def step(index: int) -> None:
        loss = model.training_loss(batches[index % len(batches)], 1)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(parameters, 0.5)
        optimizer.step()

    step(0)  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(args.steps):
        step(index + 1)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        json.dumps(
            {
                "wall_per_step": wall / args.steps,
                "cpu_per_step": cpu / args.steps,
                "first_loss": first_loss,
                "first_grad_norm": grad_norm,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crystals", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--commit", default=REFERENCE_COMMIT)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    with tempfile.TemporaryDirectory(prefix="dftloop-speed-inputs-") as tmp:
        workdir = Path(tmp)
        write_inputs(workdir, args.crystals)
        with reference_worktree(args.commit) as old_tree:
            worker_args = [
                "--workdir", str(workdir), "--batch-size", str(args.batch_size),
                "--steps", str(args.steps), "--threads", str(args.threads),
            ]  # fmt: skip
            results = run_rounds(
                Path(__file__).resolve(), {"old": old_tree, "new": REPO}, worker_args, args.rounds
            )
    old, new = results["old"][0], results["new"][0]
    print()
    print(
        f"DiffCSP training step, batch {args.batch_size} of {args.crystals} perov_5 crystals, "
        f"{args.steps} steps per round, {args.threads} thread(s), {args.rounds} rounds; "
        f"old = {args.commit} + self-edges"
    )
    print(TABLE_HEADER)
    print(summarise(results, "wall_per_step", "wall s/step", lambda x: f"{x:.3f}"))
    print(summarise(results, "cpu_per_step", "CPU s/step", lambda x: f"{x:.3f}"))
    print(load_line(results))
    print(
        f"first batch, seed 0: loss old {old['first_loss']:.7f} new {new['first_loss']:.7f}; "
        f"gradient norm old {old['first_grad_norm']:.6f} new {new['first_grad_norm']:.6f}"
    )


if __name__ == "__main__":
    main()
