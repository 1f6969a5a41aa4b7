"""Property optimisation in the latent space of CDVAE and DP-CDVAE (CDVAE's third task).

The protocol of CDVAE's ``scripts/evaluate.py`` (``optimization``) and ``compute_metrics.py``
(``OptEval``):

1. a VAE trained with a property head (``model.predict_property: true``, ``model.property``,
   ``cost_property`` 1: an MLP from z to the standardised property, trained jointly);
2. 100 starting points: latents of the first 100 test crystals (a posterior sample each, as the
   original's ``encode`` returns);
3. gradient descent on the *head's* prediction with Adam (lr 1e-3, 5000 steps) on z, the model
   frozen; z is saved every ``steps // (saves − 1)`` steps and after the last one (11 snapshots
   for 5000 steps and 10 saves, as the original's loop gives);
4. every snapshot is decoded (the model's sampler) and each *valid* crystal is scored by an
   independent property predictor (the papers: a separately trained DimeNet++ regressor);
5. per start, the best score over its snapshots; SR5 / SR10 / SR15 are the fractions of starts
   whose best score is at or below the 5th / 10th / 15th percentile of the dataset's property
   (:data:`PAPER_PERCENTILES`).

:func:`optimize_latents` does step 3, :func:`success_rates` step 5 and :func:`optimize_property`
steps 3–5 given a predictor and a validity check (``analysis.validity`` has the papers' one; the
border rules keep it out of this package, so the caller passes it). Minimisation is the papers'
task; ``direction="max"`` ascends the head and counts scores at or above the 95th / 90th / 85th
percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure
from torch import Tensor
from torch_geometric.data import Batch, Data

from generators.crystal import batch_to_structures, structure_to_data

PAPER_PERCENTILES: dict[str, tuple[float, float, float]] = {
    "perov_5": (0.43925, 0.61202, 0.73646),
    "carbon_24": (-154.5271, -154.4587, -154.4421),
    "mp_20": (-3.1756, -2.8220, -2.5281),
}
"""5th, 10th and 15th percentiles of heat_ref (perov_5), energy_per_atom (carbon_24) and
formation_energy_per_atom (mp_20), CDVAE's ``Percentiles`` of ``OptEval``."""

DIRECTIONS = ("min", "max")


def records_to_property_data(
    records: Sequence[Any], property_name: str
) -> tuple[list[Data], list[tuple[str, str]]]:
    """Crystal ``Data`` with the property as ``y`` (NaN where a record lacks it).

    Parameters
    ----------
    records
        ``CrystalRecord``-like items (``material_id``, ``structure``, ``properties``).
    property_name
        The property column (e.g. ``heat_ref``).

    Returns
    -------
    tuple
        The crystals and ``(material_id, reason)`` of those that failed to convert.
    """
    data: list[Data] = []
    errors: list[tuple[str, str]] = []
    for record in records:
        try:
            item = structure_to_data(record.structure, material_id=record.material_id)
        except Exception as exc:  # one bad crystal does not stop the split
            errors.append((str(record.material_id), str(exc)))
            continue
        value = (getattr(record, "properties", None) or {}).get(property_name, math.nan)
        item.y = torch.tensor([float(value)], dtype=torch.float32)
        data.append(item)
    return data, errors


def snapshot_steps(steps: int, saves: int) -> list[int]:
    """Optimiser steps after which z is saved: every ``steps // (saves − 1)`` and the last.

    Raises
    ------
    ValueError
        If ``steps`` < 1 or ``saves`` < 2.
    """
    if steps < 1 or saves < 2:
        raise ValueError(f"need steps >= 1 and saves >= 2, got steps={steps}, saves={saves}")
    interval = max(1, steps // (saves - 1))
    return sorted({i for i in range(steps) if i % interval == 0} | {steps - 1})


def optimize_latents(
    model: torch.nn.Module,
    z0: Tensor,
    steps: int = 5000,
    lr: float = 1e-3,
    saves: int = 10,
    direction: str = "min",
) -> tuple[Tensor, list[int]]:
    """Adam on z against the model's property head, the model frozen.

    Parameters
    ----------
    model
        A CDVAE/DP-CDVAE with a property head (``predict_property``).
    z0
        [B, latent] starting points.
    steps, lr
        Adam steps and learning rate (the paper: 5000, 1e-3).
    saves
        Snapshots to aim for (:func:`snapshot_steps`).
    direction
        ``min`` (the papers) or ``max``.

    Returns
    -------
    tuple
        Snapshots [S, B, latent] (detached) and the steps they were taken after.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    keep = set(snapshot_steps(steps, saves))
    sign = 1.0 if direction == "min" else -1.0
    z = z0.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=lr)
    flags = [p.requires_grad for p in model.parameters()]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    snapshots: list[Tensor] = []
    taken: list[int] = []
    try:
        for step in range(steps):
            optimiser.zero_grad()
            (sign * model.predict_property(z).mean()).backward()
            optimiser.step()
            if step in keep:
                snapshots.append(z.detach().clone())
                taken.append(step)
    finally:
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
    return torch.stack(snapshots), taken


def success_rates(
    best: np.ndarray, percentiles: Sequence[float], direction: str = "min"
) -> dict[str, float]:
    """SR5 / SR10 / SR15: fractions of starts whose best score passes each percentile.

    Parameters
    ----------
    best
        [starts] best score of each start; ``inf`` (min) / ``-inf`` (max) or NaN where none of
        its snapshots gave a valid crystal (never a success).
    percentiles
        The 5th, 10th, 15th percentiles (min) or the 95th, 90th, 85th (max).
    direction
        ``min`` or ``max``.
    """
    best = np.asarray(best, dtype=float)
    out: dict[str, float] = {}
    for label, threshold in zip(("SR5", "SR10", "SR15"), percentiles, strict=True):
        passed = best <= threshold if direction == "min" else best >= threshold
        out[label] = float(np.mean(passed & np.isfinite(best))) if len(best) else 0.0
    return out


@dataclass
class DecodedSnapshots:
    """What :func:`optimize_and_decode` returns.

    Attributes
    ----------
    steps
        Optimiser steps after which each snapshot was taken.
    structures
        [snapshot][start] decoded crystals (``None`` where one could not be built).
    head
        [snapshot, start] the property head's prediction at each snapshot.
    """

    steps: list[int]
    structures: list[list[Structure | None]]
    head: np.ndarray


@dataclass
class OptimizationResult(DecodedSnapshots):
    """What :func:`optimize_property` returns: the :class:`DecodedSnapshots`, scored.

    Attributes
    ----------
    valid
        [snapshot, start] validity of each decoded crystal.
    scores
        [snapshot, start] predictor scores of the valid crystals (NaN elsewhere).
    best
        [start] best score over the snapshots (±inf without a valid crystal).
    rates
        SR5 / SR10 / SR15.
    """

    valid: np.ndarray
    scores: np.ndarray
    best: np.ndarray
    rates: dict[str, float] = field(default_factory=dict)


def optimize_and_decode(
    model: torch.nn.Module,
    starts: Batch,
    *,
    steps: int = 5000,
    lr: float = 1e-3,
    saves: int = 10,
    direction: str = "min",
    generator: torch.Generator | None = None,
) -> DecodedSnapshots:
    """Steps 2–4 up to decoding: encode the starts, descend z, decode every snapshot.

    Parameters
    ----------
    model
        A CDVAE/DP-CDVAE with a property head.
    starts
        The crystals whose latents (a posterior sample each) start the optimisation.
    steps, lr, saves, direction
        As :func:`optimize_latents`.
    generator
        Random stream of the posterior draws and of the decoder's sampler.
    """
    with torch.no_grad():
        mu, log_var = model.encode(starts)
        z0 = model.reparameterize(mu, log_var, generator)
    snapshots, taken = optimize_latents(model, z0, steps, lr, saves, direction)
    structures: list[list[Structure | None]] = []
    with torch.no_grad():
        head = torch.stack([model.predict_property(z) for z in snapshots]).cpu().numpy()
        for z in snapshots:
            decoded, _ = batch_to_structures(model.decode(z, generator))
            structures.append(decoded)
    return DecodedSnapshots(taken, structures, head)


def best_scores(scores: np.ndarray, direction: str = "min") -> np.ndarray:
    """[start] best score over the snapshots (axis 0); ±inf where a start has none (NaN).

    Raises
    ------
    ValueError
        For an unknown direction.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    scores = np.asarray(scores, dtype=float)
    worst = np.inf if direction == "min" else -np.inf
    filled = np.where(np.isnan(scores), worst, scores)
    return filled.min(axis=0) if direction == "min" else filled.max(axis=0)


def score_snapshots(
    structures: Sequence[Sequence[Structure | None]],
    predictor: Callable[[list[Structure]], Sequence[float]],
    is_valid: Callable[[Structure], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validity and predictor score of each decoded crystal.

    Parameters
    ----------
    structures
        [snapshot][start] crystals or ``None``.
    predictor
        Structures → values; called once with every valid crystal.
    is_valid
        Validity check (default: the crystal could be built).

    Returns
    -------
    tuple
        ``valid`` [snapshot, start] (bool) and ``scores`` (NaN where not valid or where the
        predictor returned NaN).
    """
    valid = np.array(
        [
            [s is not None and (is_valid is None or bool(is_valid(s))) for s in row]
            for row in structures
        ],
        dtype=bool,
    ).reshape(len(structures), -1)
    scores = np.full(valid.shape, np.nan)
    rows, cols = valid.nonzero()
    if len(rows):
        values = predictor([structures[r][c] for r, c in zip(rows, cols, strict=True)])  # type: ignore[misc]
        scores[rows, cols] = np.asarray(values, dtype=float)
    return valid, scores


def optimize_property(
    model: torch.nn.Module,
    starts: Batch,
    predictor: Callable[[list[Structure]], Sequence[float]],
    percentiles: Sequence[float],
    *,
    steps: int = 5000,
    lr: float = 1e-3,
    saves: int = 10,
    direction: str = "min",
    is_valid: Callable[[Structure], bool] | None = None,
    generator: torch.Generator | None = None,
) -> OptimizationResult:
    """CDVAE's property optimisation: descend z, decode the snapshots, score, count successes.

    Parameters
    ----------
    model
        A CDVAE/DP-CDVAE with a property head.
    starts
        The crystals whose latents (a posterior sample each) start the optimisation (the
        paper: the first 100 test crystals).
    predictor
        An independent property model: structures → values (one per structure).
    percentiles
        Success thresholds (:data:`PAPER_PERCENTILES` for the papers' datasets).
    steps, lr, saves, direction
        As :func:`optimize_latents`.
    is_valid
        Validity of a decoded crystal (default: it could be built); the papers use the 0.5 Å
        structural check with SMACT's composition check (``analysis.validity``).
    generator
        Random stream of the decoder's sampler.

    Returns
    -------
    OptimizationResult
    """
    decoded = optimize_and_decode(
        model, starts, steps=steps, lr=lr, saves=saves, direction=direction, generator=generator
    )
    valid, scores = score_snapshots(decoded.structures, predictor, is_valid)
    best = best_scores(scores, direction)
    return OptimizationResult(
        steps=decoded.steps,
        structures=decoded.structures,
        valid=valid,
        scores=scores,
        head=decoded.head,
        best=best,
        rates=success_rates(best, percentiles, direction),
    )


__all__ = [
    "DIRECTIONS",
    "PAPER_PERCENTILES",
    "DecodedSnapshots",
    "OptimizationResult",
    "best_scores",
    "optimize_and_decode",
    "optimize_latents",
    "optimize_property",
    "records_to_property_data",
    "score_snapshots",
    "snapshot_steps",
    "success_rates",
]
