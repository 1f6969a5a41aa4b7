"""Worker of the DDP test, launched by ``torchrun --nproc-per-node 2`` (not a test module).

Usage: ``torchrun --nproc-per-node 2 ddp_worker.py OUT_DIR DATA_DIR``. Each rank trains the
tiny DiffCSP for 2 epochs on 8 perov_5 crystals and saves its final parameters to
``OUT_DIR/rank<R>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from generators.configs import deep_merge, load_config
from generators.data import load_split
from generators.models.diffcsp import DiffCSP
from generators.trainer import fit, structures_to_data_list


def main() -> None:
    out, data_dir = Path(sys.argv[1]), sys.argv[2]
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    config = deep_merge(
        load_config("diffcsp", "cpu-small", "perov_5"),
        {
            "model": {"hidden_dim": 16, "num_layers": 1, "num_freqs": 4, "time_dim": 8},
            "train": {"batch_size": 2, "max_epochs": 2, "checkpoint_every": 1},
        },
    )
    records = load_split("perov_5", "val", data_dir=data_dir, limit=8, progress=False).records
    data, _ = structures_to_data_list(records)
    torch.manual_seed(100 + rank)  # different initialisations: DDP must broadcast rank 0's
    result = fit(
        DiffCSP(config["model"]), config, data, [], out / "run", dataset="perov_5", progress=False
    )
    torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
