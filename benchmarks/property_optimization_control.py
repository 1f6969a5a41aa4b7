"""Control for property optimisation: decode each start's latent as often, without moving it.

::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/property_optimization_control.py \\
        --checkpoint runs/cdvae-perov5-heat/best.pt \\
        --predictor runs/predictor/perov_5-heat_ref.pkl --n 100 --chain-steps 100

The same starts, posterior draw and seed as the ``optimize-property`` flow, but Adam's learning
rate is 0: z stays at its starting point and the 11 snapshots are 11 independent decodes of it.
Their success rates (best over the snapshots, same validity and predictor) are what taking the
best of 11 decodes gives by itself; the optimisation's own effect is the difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from analysis.property_predictor import load_predictor  # noqa: E402
from flows.property_optimization import is_valid  # noqa: E402
from generators.crystal import data_list_to_batch  # noqa: E402
from generators.data import load_split  # noqa: E402
from generators.property_optimization import (  # noqa: E402
    PAPER_PERCENTILES,
    best_scores,
    optimize_and_decode,
    records_to_property_data,
    score_snapshots,
    success_rates,
)
from generators.trainer import load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Decode without optimising; print the success rates as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--predictor", required=True)
    parser.add_argument("--dataset", default="perov_5")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--saves", type=int, default=10)
    parser.add_argument("--chain-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started, cpu = time.time(), time.process_time()
    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    if args.chain_steps is not None:
        model.configure_sampling(steps=args.chain_steps)
    records = load_split(args.dataset, args.split, limit=args.n, progress=False).records
    data, _ = records_to_property_data(records, str(model.config["property"]))
    decoded = optimize_and_decode(
        model,
        data_list_to_batch(data),
        steps=args.steps,
        lr=0.0,
        saves=args.saves,
        generator=torch.Generator().manual_seed(args.seed),
    )
    valid, scores = score_snapshots(decoded.structures, load_predictor(args.predictor), is_valid)
    thresholds = PAPER_PERCENTILES[args.dataset]
    per_snapshot = [success_rates(best_scores(row[None, :]), thresholds) for row in scores]
    summary = {
        "starts": len(data),
        "snapshots": len(decoded.steps),
        "valid_fraction": float(valid.mean()),
        "best_of_snapshots": success_rates(best_scores(scores), thresholds),
        "first_snapshot": per_snapshot[0],
        "mean_single_snapshot": {
            k: float(np.mean([r[k] for r in per_snapshot])) for k in ("SR5", "SR10", "SR15")
        },
        "wall_s": round(time.time() - started, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
