"""DiffCSP throughput on this machine: training steps/s and sampling crystals/s.

    .venv/bin/python benchmarks/bench_diffcsp.py [--threads 1] [--train-steps 5]
        [--train-batch 32] [--sample-batch 16] [--sample-steps 1000] [--json out.json]

For each dataset (perov_5, carbon_24) and configuration (paper, cpu-small) it builds the model,
fits it on real training crystals, times ``--train-steps`` optimiser steps (forward, backward,
clip, Adam) on batches of ``--train-batch`` crystals after one warm-up step, then times one
CSP sampling run of ``--sample-batch`` crystals with ``--sample-steps`` predictor-corrector
steps (2 network calls each; the paper-size nets run ``--paper-sample-steps`` steps and the
time is scaled to 1000, sampling time being linear in the steps). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from generators.configs import load_config
from generators.crystal import data_list_to_batch
from generators.data import load_split
from generators.models.diffcsp import DiffCSP
from generators.trainer import structures_to_data_list


def bench(dataset: str, config_name: str, args: argparse.Namespace) -> dict[str, float | str]:
    config = load_config("diffcsp", config_name, dataset)
    n_load = max(args.train_batch, args.sample_batch)
    records = load_split(dataset, "train", limit=n_load, progress=False).records
    data, _ = structures_to_data_list(records)
    torch.manual_seed(0)
    model = DiffCSP(config["model"])
    model.fit_statistics(data_list_to_batch(data))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = data_list_to_batch(data[: args.train_batch])

    def step() -> None:
        loss = model.training_loss(batch, 1)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
        optimizer.step()

    step()  # warm-up
    tic = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    train_s = (time.perf_counter() - tic) / args.train_steps

    model.eval()
    steps = args.sample_steps if config_name != "paper" else args.paper_sample_steps
    model.configure_sampling(steps=steps)
    template = data_list_to_batch(data[: args.sample_batch])
    tic = time.perf_counter()
    model.sample_csp(template, torch.Generator().manual_seed(0))
    measured_s = time.perf_counter() - tic
    sample_s = measured_s * 1000 / steps  # time scales linearly with the number of steps
    m = config["model"]
    return {
        "dataset": dataset,
        "config": config_name,
        "net": f"{m['num_layers']}x{m['hidden_dim']}, {m['num_freqs']} freqs",
        "atoms_per_crystal": round(float(batch.num_atoms.float().mean()), 1),
        "train_batch": args.train_batch,
        "train_steps_per_s": 1.0 / train_s,
        "train_crystals_per_s": args.train_batch / train_s,
        "sample_batch": args.sample_batch,
        "sample_steps_measured": steps,
        "sample_seconds": sample_s,
        "sample_crystals_per_s": args.sample_batch / sample_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--sample-batch", type=int, default=16)
    parser.add_argument("--sample-steps", type=int, default=1000)
    parser.add_argument(
        "--paper-sample-steps",
        type=int,
        default=50,
        help="steps actually run for the paper-size nets (time scaled to 1000 steps)",
    )
    parser.add_argument("--datasets", nargs="+", default=["perov_5", "carbon_24"])
    parser.add_argument("--configs", nargs="+", default=["cpu-small", "paper"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for dataset in args.datasets:
        for config_name in args.configs:
            row = bench(dataset, config_name, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(
        "| dataset | config | net | atoms/crystal | train batch | train steps/s "
        "| train crystals/s | sample batch (steps run) | s per 1000 steps "
        "| crystals/s at 1000 steps |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['config']} | {r['net']} | {r['atoms_per_crystal']} "
            f"| {r['train_batch']} | {r['train_steps_per_s']:.2f} "
            f"| {r['train_crystals_per_s']:.1f} "
            f"| {r['sample_batch']} ({r['sample_steps_measured']}) "
            f"| {r['sample_seconds']:.1f} | {r['sample_crystals_per_s']:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
