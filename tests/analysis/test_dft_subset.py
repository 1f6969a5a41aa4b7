"""Which structures get DFT: stratified by cell size by default, seeded; and the floor's draw."""

from __future__ import annotations

import pytest

from analysis.dft_subset import random_subset, select_for_dft

SIZES = [6, 24, 8, 12, 6, 16, 20, 8, 10, 14, 6, 18]
CANDIDATES = [
    {"structure_id": f"s{i}", "n_sites": n, "energy_per_atom_eV": -9.0 + 0.1 * i}
    for i, n in enumerate(SIZES)
]
# sorted by size: 6 6 6 | 8 8 10 | 12 14 16 | 18 20 24 (four strata of three)
STRATA = [{"s0", "s4", "s10"}, {"s2", "s7", "s8"}, {"s3", "s9", "s5"}, {"s11", "s6", "s1"}]


def test_stratified_takes_one_per_size_stratum_with_fixed_ids_for_a_seed() -> None:
    chosen = select_for_dft(CANDIDATES, 4)  # the default is "stratified", seed 0
    assert chosen == ["s4", "s8", "s5", "s11"]  # measured for seed 0
    for seed in range(6):
        picked = select_for_dft(CANDIDATES, 4, "stratified", seed)
        assert all(p in STRATA[j] for j, p in enumerate(picked)), (seed, picked)
    draws = {tuple(select_for_dft(CANDIDATES, 4, "stratified", seed)) for seed in range(6)}
    assert len(draws) > 1  # different seeds pick differently
    assert select_for_dft(CANDIDATES, 4, "stratified", 1) == ["s4", "s7", "s9", "s6"]


def test_stratified_cap_and_small_pools() -> None:
    capped = select_for_dft(CANDIDATES, 4, "stratified", 0, max_sites=12)
    assert capped == ["s10", "s2", "s8", "s3"]
    assert all(SIZES[int(s[1:])] <= 12 for s in capped)
    everything = select_for_dft(CANDIDATES[:3], 5, "stratified", 0)
    assert sorted(everything) == ["s0", "s1", "s2"]
    assert select_for_dft(CANDIDATES, 0) == []


def test_other_selections() -> None:
    assert select_for_dft(CANDIDATES, 3, "smallest") == ["s0", "s4", "s10"]  # ties: sample order
    assert select_for_dft(CANDIDATES, 2, "lowest_energy") == ["s0", "s1"]
    nan = [*CANDIDATES[:2], {"structure_id": "x", "n_sites": 2, "energy_per_atom_eV": float("nan")}]
    assert select_for_dft(nan, 3, "lowest_energy")[-1] == "x"  # NaN goes last
    assert select_for_dft(CANDIDATES, 3, "random", seed=0) == ["s9", "s2", "s7"]  # measured
    assert select_for_dft(CANDIDATES, 3, "random", seed=1) == ["s8", "s11", "s4"]
    with pytest.raises(ValueError, match="dft_selection"):
        select_for_dft(CANDIDATES, 2, "largest")


def test_random_subset_of_the_test_split() -> None:
    ids = [f"m{i}" for i in range(10)]
    assert random_subset(ids, 3, 0) == ["m4", "m6", "m2"]  # measured for seed 0
    assert random_subset(ids, 3, 1) != random_subset(ids, 3, 0)
    assert sorted(random_subset(ids, 50, 0)) == sorted(ids)
