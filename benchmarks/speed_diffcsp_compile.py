"""DiffCSP CSP sampling with and without ``torch.compile`` of the network, alternating runs.

    .venv/bin/python benchmarks/speed_diffcsp_compile.py [--rounds 3] [--steps 20]
        [--crystals 32] [--threads 1]

One process, the perov_5 paper net (4 × 256, 128 frequencies, seed-0 weights) on the first
``--crystals`` perov_5 training crystals. The first compiled call (2 steps) is timed apart
(compilation); then eager and compiled runs of ``--steps`` steps alternate for ``--rounds``
rounds. Prints wall and CPU (this process) seconds per step; the compiler's worker processes
are not in the CPU time.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--crystals", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from generators.configs import load_config
    from generators.crystal import data_list_to_batch
    from generators.data import load_split
    from generators.models.diffcsp import DiffCSP
    from generators.trainer import structures_to_data_list

    records = load_split("perov_5", "train", limit=args.crystals, progress=False).records
    data, _ = structures_to_data_list(records)
    torch.manual_seed(0)
    model = DiffCSP(load_config("diffcsp", "paper", "perov_5")["model"]).eval()
    template = data_list_to_batch(data)

    def run(compiled: bool, steps: int) -> tuple[float, float]:
        model.configure_sampling(steps=steps, compile=compiled or None)
        wall, cpu = time.perf_counter(), time.process_time()
        model.sample_csp(template, torch.Generator().manual_seed(0))
        return time.perf_counter() - wall, time.process_time() - cpu

    wall, cpu = run(True, 2)
    print(f"first compiled call (2 steps): wall {wall:.1f} s, CPU {cpu:.1f} s")
    for r in range(args.rounds):
        for compiled in (False, True):
            wall, cpu = run(compiled, args.steps)
            print(
                f"round {r + 1} {'compiled' if compiled else 'eager   '}: "
                f"wall {wall / args.steps:.3f} s/step, CPU {cpu / args.steps:.4f} s/step, "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
