"""DiffCSP memorises a handful of perov_5 training crystals on the CPU.

Train on the first n training structures, CSP-sample their own compositions (1000 steps,
one candidate each) and match the samples against the same structures with the foundation
metric (``analysis.matching.csp_match``, protocol ``diffcsp``: StructureMatcher stol 0.5,
angle_tol 10, ltol 0.3). The default test is a small, time-boxed version with a threshold
measured on this machine; the full version is ``-m slow``. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from analysis.matching import csp_match
from generators.configs import deep_merge, load_config
from generators.crystal import batch_to_structures, data_list_to_batch
from generators.data import load_split
from generators.models.diffcsp import DiffCSP
from generators.trainer import fit, structures_to_data_list


def memorise(
    tmp_path: Path, data_dir: Path, n: int, minutes: float, epochs: int, seed: int = 0
) -> dict[str, Any]:
    records = load_split("perov_5", "train", data_dir=data_dir, limit=n, progress=False).records
    data, errors = structures_to_data_list(records)
    assert not errors
    config = deep_merge(
        load_config("diffcsp", "cpu-small", "perov_5"),
        {
            "train": {
                "batch_size": n,
                "max_epochs": epochs,
                "max_minutes": minutes,
                "checkpoint_every": 10**6,
                "scheduler": {"name": "none"},
                "seed": seed,
            }
        },
    )
    torch.manual_seed(seed)
    tic = time.monotonic()
    result = fit(
        DiffCSP(config["model"]), config, data, [], tmp_path, dataset="perov_5", progress=False
    )
    train_minutes = (time.monotonic() - tic) / 60
    model = result.model.eval()
    model.configure_sampling(steps=1000, candidates=1)
    tic = time.monotonic()
    out = model.sample_csp(data_list_to_batch(data), torch.Generator().manual_seed(seed))
    sample_minutes = (time.monotonic() - tic) / 60
    structures, _ = batch_to_structures(out)
    preds = [[s] for s in structures]
    gts = [r.structure for r in records]
    ids = [r.material_id for r in records]
    # memorisation is about structure: StructureMatcher alone (protocol "continuousp", no
    # validity gate); the DiffCSP protocol also needs SMACT-valid compositions, which some
    # perov_5 training crystals are not, so it is reported beside it
    plain = csp_match(preds, gts, protocol="continuousp", ids=ids)
    gated = csp_match(preds, gts, protocol="diffcsp", ids=ids)
    figures = {
        "n": n,
        "epochs": result.epochs,
        "train_minutes": round(train_minutes, 2),
        "sample_minutes": round(sample_minutes, 2),
        "final_train_loss": result.history[-1]["train"],
        "match_rate": plain["match_rate"].value,
        "rmse": plain["rmse"].value,
        "diffcsp_protocol_match_rate": gated["match_rate"].value,
        "diffcsp_protocol_rmse": gated["rmse"].value,
    }
    (tmp_path / "samples.json").write_text(
        json.dumps([None if s is None else s.as_dict() for s in structures])
    )
    print(json.dumps(figures))
    (tmp_path / "memorisation.json").write_text(json.dumps(figures, indent=2))
    return figures


def test_memorises_eight_structures_quickly(tmp_path: Path, data_dir: Path) -> None:
    # a fixed number of steps (deterministic on CPU); the time budget is only a safety net
    figures = memorise(tmp_path, data_dir, n=8, minutes=10, epochs=3000)
    # measured 2/8 (deterministic on CPU; docs/benchmarks.md, DiffCSP, memorisation). Below
    # an exploratory run with 1500 steps matched 1/8 and with 5000 steps 7/8 (plain matcher).
    assert figures["match_rate"] >= 0.25


@pytest.mark.slow
def test_memorises_thirty_two_structures(tmp_path: Path, data_dir: Path) -> None:
    figures = memorise(tmp_path, data_dir, n=32, minutes=30, epochs=9000)
    assert figures["match_rate"] >= 0.9
