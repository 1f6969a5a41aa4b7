"""DiffCSP memorises a handful of perov_5 training crystals on the CPU.

Train on the first n training structures, CSP-sample their own compositions (1000 steps,
one candidate each) and match the samples against the same structures with the foundation
metric (``analysis.matching.csp_match``, protocol ``diffcsp``: StructureMatcher stol 0.5,
angle_tol 10, ltol 0.3). The default test is a small, time-boxed version with a threshold
measured on this machine; the full version is ``-m slow``. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from pymatgen.core import Structure

from analysis.matching import csp_match
from generators.configs import deep_merge, load_config
from generators.crystal import batch_to_structures, data_list_to_batch
from generators.data import load_split
from generators.models.diffcsp import DiffCSP
from generators.trainer import fit, structures_to_data_list

from .memorisation_gates import check_validity, random_coordinate_validity, validity_fraction


def plausible_cell(structure: Structure) -> bool:
    """Cell lengths 0.5-100 Å, angles 20-160° and 1-1000 Å^3 per atom: a cell StructureMatcher
    can handle (a perov_5 crystal has ~4 Å, ~90° and ~13 Å^3 per atom)."""
    lattice = structure.lattice
    per_atom = lattice.volume / len(structure)
    return (
        all(0.5 <= x <= 100.0 for x in lattice.abc)
        and all(20.0 <= x <= 160.0 for x in lattice.angles)
        and 1.0 <= per_atom <= 1000.0
    )


def csp_samples(model: DiffCSP, data: list, seed: int) -> list:
    """One 1000-step CSP sample per training composition (the model in eval mode)."""
    model.eval().configure_sampling(steps=1000, candidates=1)
    out = model.sample_csp(data_list_to_batch(data), torch.Generator().manual_seed(seed))
    structures, _ = batch_to_structures(out)
    return structures


def shipped_optimisation() -> dict[str, Any]:
    """The moving average and learning-rate schedule of the shipped checkpoints' ``cpu`` recipe.

    Full-batch training takes one optimiser step per epoch, so the weight average (updated
    after every step) and the cosine decay (stepped after every epoch, over ``max_epochs``)
    both run per step, and the samples come from the averaged weights :func:`fit` returns.
    """
    train = load_config("diffcsp", "cpu", "perov_5")["train"]
    return {"ema_decay": train["ema_decay"], "scheduler": copy.deepcopy(train["scheduler"])}


def memorise(
    tmp_path: Path,
    data_dir: Path,
    n: int,
    minutes: float,
    epochs: int,
    seed: int = 0,
    with_untrained: bool = False,
    shipped_recipe: bool = False,
) -> dict[str, Any]:
    """Train on the first ``n`` perov_5 training crystals, CSP-sample them and match.

    By default the learning rate is constant and the last weights are sampled;
    ``shipped_recipe`` uses :func:`shipped_optimisation` instead. ``with_untrained`` also
    samples the same compositions with the untrained network (the trained one's initial
    weights, same sampling seed) for the match rate an untrained model reaches. The figures
    include the samples' validity and that of random coordinates in the samples' cells
    (:mod:`memorisation_gates`).
    """
    records = load_split("perov_5", "train", data_dir=data_dir, limit=n, progress=False).records
    data, errors = structures_to_data_list(records)
    assert not errors
    train = {
        "batch_size": n,
        "max_epochs": epochs,
        "max_minutes": minutes,
        "checkpoint_every": 10**6,
        "scheduler": {"name": "none"},
        "seed": seed,
    }
    if shipped_recipe:
        train.update(shipped_optimisation())
    config = deep_merge(load_config("diffcsp", "cpu-small", "perov_5"), {"train": train})
    torch.manual_seed(seed)
    model = DiffCSP(config["model"])
    initial = copy.deepcopy(model.state_dict())
    tic = time.monotonic()
    result = fit(model, config, data, [], tmp_path, dataset="perov_5", progress=False)
    train_minutes = (time.monotonic() - tic) / 60
    tic = time.monotonic()
    structures = csp_samples(result.model, data, seed)
    sample_minutes = (time.monotonic() - tic) / 60
    preds = [[s if s is not None and plausible_cell(s) else None] for s in structures]
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
        "stop_reason": result.stop_reason,
        "final_lr": result.history[-1]["lr"],
        "train_minutes": round(train_minutes, 2),
        "sample_minutes": round(sample_minutes, 2),
        "final_train_loss": result.history[-1]["train"],
        "match_rate": plain["match_rate"].value,
        "rmse": plain["rmse"].value,
        "diffcsp_protocol_match_rate": gated["match_rate"].value,
        "diffcsp_protocol_rmse": gated["rmse"].value,
        "validity": validity_fraction(structures),
        "random_coordinate_validity": random_coordinate_validity(structures, seed=seed),
    }
    if with_untrained:
        baseline = DiffCSP(config["model"])
        baseline.load_state_dict(initial)
        untrained_structures = csp_samples(baseline, data, seed)
        # an untrained lattice head lets the DDPM lattice run away (cells of 1e8 Å with
        # collinear vectors, on which StructureMatcher's Niggli reduction does not finish):
        # such cells count as unmatched without being matched (as for the trained model above)
        matchable = [
            s if s is not None and plausible_cell(s) else None for s in untrained_structures
        ]
        reached = csp_match([[s] for s in matchable], gts, protocol="continuousp", ids=ids)
        figures["untrained_match_rate"] = reached["match_rate"].value
        figures["untrained_implausible_cells"] = sum(s is None for s in matchable)
        figures["untrained_validity"] = validity_fraction(untrained_structures)
    (tmp_path / "samples.json").write_text(
        json.dumps([None if s is None else s.as_dict() for s in structures])
    )
    print(json.dumps(figures))
    (tmp_path / "memorisation.json").write_text(json.dumps(figures, indent=2))
    return figures


UNTRAINED_MARGIN = 0.25
"""The trained model must match at least this fraction of the crystals more than the untrained
network does with the same compositions and sampling seed (2 of 8)."""


def test_memorises_eight_structures_quickly(tmp_path: Path, data_dir: Path) -> None:
    """3000 full-batch steps on 8 crystals with the shipped recipe's moving average and cosine
    decay (deterministic on CPU; the time budget is only a safety net). Measured (1.5 min of
    training at load ~4): 3/8 matched (RMSE 0.435; docs/benchmarks.md), the untrained network
    0/8 (its lattices run away: all 8 cells implausible). Validity is reported, not gated here:
    4 of the 8 samples are valid by the 0.5 Å rule, against 95 % for random coordinates in the
    same cells, so this short run learns cells and rough positions, not interatomic distances;
    the slow test gates it.
    """
    figures = memorise(
        tmp_path, data_dir, n=8, minutes=10, epochs=3000, with_untrained=True, shipped_recipe=True
    )
    assert figures["match_rate"] >= 0.25
    assert figures["match_rate"] >= figures["untrained_match_rate"] + UNTRAINED_MARGIN


@pytest.mark.slow
def test_memorises_thirty_two_structures(tmp_path: Path, data_dir: Path) -> None:
    """18000 steps on 32 crystals with the moving average and cosine decay of the shipped
    recipe: a hard floor of 90 % matched, the margin over the untrained network, and a validity
    bar above random coordinates in the samples' cells.

    Measured (14.1 min of training at load ~4-5): 32/32 matched (RMSE 0.025; DiffCSP protocol
    30/32), untrained 0/32, and 31/32 samples valid (96.9 %) against 92.2 % for random
    coordinates in the same cells (bar 96.1 %): the test passes with one invalid sample to
    spare. Over 9000 steps the same recipe matches 29/32 (RMSE 0.133) but only 27/32 samples
    are valid (84.4 %, below the bar; four of the five invalid ones put a cation on an anion's
    site, 0.004-0.03 Å apart), and a constant learning rate without the average gives 29/32
    (RMSE 0.082) with 28/32 valid (docs/benchmarks.md). 18000 steps are about those of the
    shipped perov_5 checkpoint (100 epochs of 178 batches). The time budget (90 min) is a
    safety net for a loaded machine; a run it cuts short has not finished its cosine decay.
    """
    figures = memorise(
        tmp_path, data_dir, n=32, minutes=90, epochs=18000, with_untrained=True, shipped_recipe=True
    )
    assert figures["match_rate"] >= 0.9
    assert figures["match_rate"] >= figures["untrained_match_rate"] + UNTRAINED_MARGIN
    check_validity(figures["validity"], figures["random_coordinate_validity"])
