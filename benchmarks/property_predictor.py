"""Fit the independent property predictor on one split and measure its MAE on another.

::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/property_predictor.py \\
        --dataset perov_5 --property heat_ref --train-split val --test-split test \\
        --out runs/predictor/perov_5-heat_ref.pkl

The predictor (:mod:`analysis.property_predictor`) is trained on every crystal of
``--train-split`` that has the property and evaluated on the whole ``--test-split``, which it
never sees. The held-out MAE, the median-guess baseline, the counts and the fitting time are
stored in the predictor file and printed as JSON.
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

from analysis.property_predictor import fit_predictor, mean_absolute_error  # noqa: E402
from generators.data import load_split  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Fit, evaluate, save; return the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="perov_5")
    parser.add_argument("--property", default="heat_ref")
    parser.add_argument("--train-split", default="val")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="First N crystals per split.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="Predictor file to write.")
    args = parser.parse_args(argv)
    if args.train_split == args.test_split:
        parser.error("--train-split and --test-split must differ")

    def split(name: str) -> tuple[list, list[float]]:
        records = load_split(args.dataset, name, limit=args.limit, progress=False).records
        values = [r.properties.get(args.property, float("nan")) for r in records]
        return [r.structure for r in records], values

    started = time.process_time()
    train_structures, train_values = split(args.train_split)
    predictor = fit_predictor(
        train_structures,
        train_values,
        args.property,
        trained_on=f"{args.dataset}/{args.train_split}",
        seed=args.seed,
    )
    fit_cpu = time.process_time() - started
    test_structures, test_values = split(args.test_split)
    held_out = mean_absolute_error(predictor, test_structures, test_values)
    predictor.metrics = {
        f"{args.test_split}_mae": held_out["mae"],
        f"{args.test_split}_baseline_mae": held_out["baseline_mae"],
        f"{args.test_split}_n": held_out["n"],
    }
    predictor.save(args.out)
    summary = {
        "dataset": args.dataset,
        "property": args.property,
        "trained_on": predictor.trained_on,
        "n_train": predictor.n_train,
        "held_out": f"{args.dataset}/{args.test_split}",
        **held_out,
        "fit_cpu_s": round(fit_cpu, 1),
        "out": str(args.out),
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
