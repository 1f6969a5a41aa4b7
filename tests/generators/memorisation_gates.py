"""Pass/fail rules shared by the memorisation tests: a hard floor on the match rate and a
validity gate measured against random coordinates.

Structural validity by the 0.5 Å rule is a weak signal on its own: uniformly random
fractional coordinates in perov_5 training cells are already 92.5 % valid (32 cells x 10
draws, seed 0). A model's validity therefore counts only against the same rule applied to
random coordinates in the same cells (its own cells and compositions, seeded), and has to
remove at least half of the invalid fraction that random placement leaves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from pymatgen.core import Structure

from analysis.validity import structure_is_valid

INVALID_FRACTION_KEPT = 0.5
"""A model may leave at most this fraction of the random baseline's invalid crystals."""


def validity_fraction(structures: Sequence[Structure | None]) -> float:
    """Fraction of the entries that are structures and structurally valid (0.5 Å, 0.1 Å³)."""
    if not structures:
        raise ValueError("no structures to measure the validity of")
    return sum(s is not None and structure_is_valid(s) for s in structures) / len(structures)


def random_coordinate_validity(
    structures: Sequence[Structure | None], seed: int = 0, draws: int = 10
) -> float:
    """Validity of the same cells and compositions with uniformly random fractional coordinates.

    Parameters
    ----------
    structures
        The crystals whose cells and species are kept (``None`` entries are skipped).
    seed
        Seed of the random coordinates.
    draws
        Random placements per crystal.
    """
    rng = np.random.default_rng(seed)
    kept = [s for s in structures if s is not None]
    if not kept:
        raise ValueError("no structures to place random coordinates in")
    placed = [
        Structure(s.lattice, s.species, rng.random((len(s), 3))) for s in kept for _ in range(draws)
    ]
    return validity_fraction(placed)


def validity_bar(baseline: float, kept: float = INVALID_FRACTION_KEPT) -> float:
    """The validity a model must reach: 1 − kept·(1 − baseline).

    With the perov_5 baseline 0.925 and ``kept`` 1/2 the bar is 0.9625.
    """
    if not 0.0 <= baseline <= 1.0:
        raise ValueError(f"a validity baseline is a fraction in [0, 1], got {baseline}")
    return 1.0 - kept * (1.0 - baseline)


def check_validity(validity: float, baseline: float, absolute: float = 0.0) -> None:
    """Fail unless ``validity`` reaches both :func:`validity_bar` of ``baseline`` and ``absolute``.

    Raises
    ------
    AssertionError
        Naming the measured validity, the baseline and the bar.
    """
    bar = max(validity_bar(baseline), absolute)
    assert validity >= bar, (
        f"validity {validity:.1%} is below the bar {bar:.1%} (random coordinates in the same "
        f"cells: {baseline:.1%})"
    )


def check_match_rate(rate: float, floor: float, target: float, known_gap: str) -> None:
    """Hard floor and target of a memorisation match rate.

    Below ``floor`` the test fails; between ``floor`` and ``target`` it is marked ``xfail``
    with ``known_gap`` (the measured spread that explains it); at or above ``target`` it passes.

    Raises
    ------
    AssertionError
        Below the floor.
    ValueError
        If the floor is above the target.
    """
    if floor > target:
        raise ValueError(f"the floor {floor} is above the target {target}")
    assert rate >= floor, f"match rate {rate:.1%} is below the hard floor {floor:.1%}"
    if rate < target:
        pytest.xfail(
            f"match rate {rate:.1%} < target {target:.0%} (floor {floor:.0%}): {known_gap}"
        )
