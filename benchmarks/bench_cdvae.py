"""Throughput of CDVAE and DP-CDVAE on this CPU: training crystals/s and sampling crystals/s.

Sampling a crystal costs 5000 decoder calls for CDVAE (50 σ levels × 100 Langevin steps) and
999 for DP-CDVAE (the reverse DDPM chain); it is timed as the reconstruction of
``--sample-batch`` training crystals, so that both models decode the same crystals. Whole
chains are too long here: the script times ``--sample-steps`` steps of each sampler and
extrapolates to the full chain (the per-step cost does not depend on the step index); the
output names the figure "extrapolated".

Usage::

    .venv/bin/python benchmarks/bench_cdvae.py --dataset perov_5 --config paper \
        --batch 32 --train-steps 5 --sample-batch 32 --sample-steps 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from generators.configs import load_config
from generators.crystal import structures_to_batch
from generators.data import load_split
from generators.registry import build_model


def time_training(model, batch, steps: int) -> float:  # type: ignore[no-untyped-def]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    model.training_loss(batch, 0)["loss"].backward()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        optimiser.zero_grad()
        model.training_loss(batch, 0)["loss"].backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
        optimiser.step()
    return time.perf_counter() - start


def time_sampling(model, batch, steps: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Extrapolated seconds of the full chain on ``batch``, and the chain length.

    Reconstruction is timed (not generation) so that both models decode the same crystals.
    """
    model.eval()
    if model.name == "cdvae":
        full = len(model.sigmas) * int(model.config["sampling"]["steps_per_level"])
        model.configure_sampling(steps_per_level=max(1, steps // len(model.sigmas)))
        done = len(model.sigmas) * model.langevin_steps_per_level()
    else:
        full = model.num_timesteps - 1
        model.configure_sampling(steps=steps)
        done = len(model.reverse_steps())
    start = time.perf_counter()
    model.reconstruct(batch, torch.Generator().manual_seed(0))
    elapsed = time.perf_counter() - start
    model.configure_sampling()
    return elapsed * full / done, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="perov_5")
    parser.add_argument("--config", default="paper")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--sample-batch", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="cdvae,dpcdvae")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    split = load_split(args.dataset, "train", limit=args.batch, progress=False)
    batch = structures_to_batch(split.structures, [r.material_id for r in split.records])
    sample_batch = structures_to_batch(
        split.structures[: args.sample_batch],
        [r.material_id for r in split.records[: args.sample_batch]],
    )
    results = []
    for name in args.models.split(","):
        config = load_config(name, args.config, args.dataset, {"model": {"progress": False}})
        start = time.perf_counter()
        model = build_model(name, config["model"])
        build_s = time.perf_counter() - start
        model.fit_statistics(batch)
        params = sum(p.numel() for p in model.parameters())
        train_s = time_training(model, batch, args.train_steps)
        sample_s, chain = time_sampling(model, sample_batch, args.sample_steps)
        row = {
            "model": name,
            "config": args.config,
            "dataset": args.dataset,
            "parameters": params,
            "build_s": round(build_s, 1),
            "train_crystals_per_s": round(args.batch * args.train_steps / train_s, 2),
            "sampler_calls_per_crystal": chain,
            "sample_crystals_per_s_extrapolated": round(args.sample_batch / sample_s, 4),
            "sample_s_per_batch_extrapolated": round(sample_s, 1),
            "sample_batch": args.sample_batch,
            "sample_steps_timed": args.sample_steps,
            "threads": args.threads,
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    print(
        "\n| model | config | params | train crystals/s | sampler calls | "
        "sample crystals/s (extrapolated) |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['config']} | {r['parameters']:,} | {r['train_crystals_per_s']} "
            f"| {r['sampler_calls_per_crystal']} | {r['sample_crystals_per_s_extrapolated']} |"
        )


if __name__ == "__main__":
    main()
