"""The untrained baseline of a shipped checkpoint: same network, initial weights, same sampler.

Writes a checkpoint with the card's configuration and the initial weights that ``dftloop
train`` draws from ``train.seed`` (no training step), so that sampling and evaluating it with the
card's own commands gives the figure a model reaches without learning anything (for
ContinuouSP, the density penalty of the energy and the annealed MALA chain alone). Example::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/untrained_baseline.py \\
        --name continuousp-perov5-csp --out dftloop-runs/baseline/continuousp-perov5-untrained.pt
    dftloop sample --checkpoint dftloop-runs/baseline/continuousp-perov5-untrained.pt \\
        --csp-split test --k 1 --limit 256 --batch-size 128 --seed 0 --no-progress \\
        --out dftloop-runs/baseline/continuousp-perov5-untrained
    dftloop evaluate dftloop-runs/baseline/continuousp-perov5-untrained --dataset perov_5 \\
        --gt-split test --protocol continuousp --no-coverage
"""

from __future__ import annotations

import argparse
from pathlib import Path

from generators.trainer import initial_model, read_checkpoint, save_checkpoint


def untrained_checkpoint(name: str, out: Path) -> Path:
    """Write the untrained counterpart of checkpoint ``name`` (a registered name or a file).

    Parameters
    ----------
    name
        Registered name or checkpoint file whose configuration is taken.
    out
        Where the checkpoint is written (its parent is created).

    Returns
    -------
    Path
        ``out``.
    """
    trained = read_checkpoint(name)
    config = trained["config"]
    model = initial_model(trained["model"], config)  # the weights `dftloop train` starts from
    payload = {
        **trained,
        "epoch": 0,
        "best_val": float("inf"),
        "state_dict": model.state_dict(),
        "weights": "initial",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, payload)
    return out


def main() -> None:
    """Command line: ``--name`` and ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="registered name or checkpoint file")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint file to write")
    args = parser.parse_args()
    print(untrained_checkpoint(args.name, args.out))


if __name__ == "__main__":
    main()
