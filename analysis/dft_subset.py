"""Which structures get the (expensive) DFT stage, and which test-split structures form the floor.

Selections (:func:`select_for_dft`)
-----------------------------------
``"stratified"`` (default)
    Random, stratified by cell size: the candidates are ordered by number of sites (ties in a
    seeded random order), cut into ``k`` consecutive groups of (nearly) equal size, and one
    structure is drawn at random from each group. Every size range is represented in
    proportion to how often it occurs, and the draw is reproducible with the seed.
``"random"``
    A uniform random subset (seeded).
``"smallest"``
    Fewest atoms first, ties in sample order: the cheapest choice (DFT cost grows ~N³), biased
    towards small cells.
``"lowest_energy"``
    Lowest force-field energy per atom first.

``max_sites`` leaves out larger cells before any selection (the report says so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

DftSelection = Literal["stratified", "random", "smallest", "lowest_energy"]
DFT_SELECTIONS: tuple[str, ...] = ("stratified", "random", "smallest", "lowest_energy")


def select_for_dft(
    candidates: Sequence[dict[str, Any]],
    k: int,
    selection: DftSelection | str = "stratified",
    seed: int = 0,
    *,
    max_sites: int | None = None,
) -> list[str]:
    """Choose the structures that get the DFT stage.

    Parameters
    ----------
    candidates
        In sample order, dicts with ``structure_id``, ``n_sites`` and ``energy_per_atom_eV``
        (force-field relaxed energy); only structures whose force-field relaxation succeeded.
    k
        How many (all when fewer candidates).
    selection
        One of :data:`DFT_SELECTIONS` (module docstring).
    seed
        Seed of the random selections.
    max_sites
        Leave out candidates with more sites (``None``: no cap).

    Returns
    -------
    list of str
        The chosen structure ids, in the chosen order (smallest stratum first for
        ``"stratified"``); deterministic for given inputs.

    Raises
    ------
    ValueError
        For an unknown ``selection``.
    """
    if selection not in DFT_SELECTIONS:
        raise ValueError(f"dft_selection must be one of {DFT_SELECTIONS}, not {selection!r}")
    k = max(0, int(k))
    indexed = [
        (i, c)
        for i, c in enumerate(candidates)
        if max_sites is None or int(c.get("n_sites") or 0) <= max_sites
    ]
    if selection == "smallest":
        indexed.sort(key=lambda p: (int(p[1].get("n_sites") or 0), p[0]))
    elif selection == "lowest_energy":

        def energy(p: tuple[int, dict[str, Any]]) -> tuple[float, int]:
            e = p[1].get("energy_per_atom_eV")
            return (float(e) if e is not None and math.isfinite(e) else math.inf, p[0])

        indexed.sort(key=energy)
    elif selection == "random":
        order = np.random.default_rng(seed).permutation(len(indexed))
        indexed = [indexed[i] for i in order]
    else:
        return [str(c["structure_id"]) for _, c in _stratified(indexed, k, seed)]
    return [str(c["structure_id"]) for _, c in indexed[:k]]


def _stratified(
    indexed: list[tuple[int, dict[str, Any]]], k: int, seed: int
) -> list[tuple[int, dict[str, Any]]]:
    """One random member of each of ``k`` equal-count cell-size strata."""
    if k == 0 or not indexed:
        return []
    rng = np.random.default_rng(seed)
    tie_break = rng.permutation(len(indexed))
    order = sorted(
        range(len(indexed)), key=lambda j: (int(indexed[j][1].get("n_sites") or 0), tie_break[j])
    )
    if k >= len(order):
        return [indexed[j] for j in order]
    return [indexed[int(rng.choice(stratum))] for stratum in np.array_split(order, k)]


def random_subset(ids: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """``n`` ids drawn uniformly without replacement, in the order drawn (seeded).

    Parameters
    ----------
    ids
        The population (e.g. the material ids of a test split).
    n
        How many (all, in random order, when ``n`` exceeds the population).
    seed
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    list of str
        The chosen ids.
    """
    order = np.random.default_rng(seed).permutation(len(ids))
    return [str(ids[i]) for i in order[: max(0, int(n))]]
