"""S.U.N. (stable, unique, novel) on carbon_24 structures read in place from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from analysis.sun import (
    NoveltyReference,
    reduce_for_matching,
    sun_flags,
    sun_rate,
)


def _split(data_dir: Path, split: str, limit: int | None) -> tuple[list[str], list[Structure]]:
    from generators.data import load_split

    loaded = load_split("carbon_24", split, data_dir=data_dir, limit=limit, progress=False)
    assert not loaded.errors, loaded.errors[:3]
    return [r.material_id for r in loaded.records], [r.structure for r in loaded.records]


@pytest.fixture(scope="module")
def train_150(data_dir: Path) -> tuple[list[str], list[Structure]]:
    return _split(data_dir, "train", 150)


@pytest.fixture(scope="module")
def reference(train_150) -> NoveltyReference:
    ids, structures = train_150
    return NoveltyReference(structures, ids=ids)


def test_training_copies_are_not_novel_and_duplicates_not_unique(
    train_150, reference: NoveltyReference, data_dir: Path
) -> None:
    train_ids, train = train_150
    _, test = _split(data_dir, "test", 1)
    original = train[10]
    perturbed = original.copy()
    perturbed.perturb(0.02, min_distance=0.01, seed=0)
    compressed = original.copy()
    compressed.scale_lattice(original.volume * 0.8)
    batch = [
        test[0],  # 0: a test structure
        original,  # 1: a training structure
        original * (1, 2, 1),  # 2: its supercell
        perturbed,  # 3: displaced by 0.02 A
        compressed,  # 4: 20 % smaller volume (the matcher rescales volumes)
        test[0].copy(),  # 5: duplicate of 0
    ]
    flags = sun_flags(batch, [0.0] * len(batch), reference, ids=list("abcdef"))
    assert [f["id"] for f in flags] == list("abcdef")
    for k in (1, 2, 3, 4):
        assert not flags[k]["novel"], k
        assert flags[k]["novel_match"] is not None
        assert not flags[k]["sun"]
    assert flags[1]["novel_match"] in train_ids
    matcher = StructureMatcher()
    assert matcher.fit(original, train[train_ids.index(flags[1]["novel_match"])])
    # 2, 3 and 4 are copies of 1 within the batch, so they are not unique either
    assert flags[1]["unique"]
    assert [flags[k]["duplicate_of"] for k in (2, 3, 4)] == ["b", "b", "b"]
    assert flags[0]["unique"] and not flags[5]["unique"] and flags[5]["duplicate_of"] == "a"
    expected_novel = not any(matcher.fit(test[0], t) for t in train)
    assert flags[0]["novel"] is expected_novel
    assert flags[0]["sun"] is expected_novel


def test_prefilter_gives_the_same_answer_as_matching_every_pair(
    reference: NoveltyReference, data_dir: Path
) -> None:
    _, batch = _split(data_dir, "test", 30)
    batch = [*batch, batch[4].copy()]
    flags = sun_flags(batch, [0.0] * len(batch), reference)
    matcher = reference.matcher
    reduced = [reduce_for_matching(s, matcher) for s in batch]
    train = [r for group in reference._by_key.values() for _, r in group]
    assert len(train) == 150

    def fit(a, b) -> bool:
        return bool(matcher.fit(a.reduced, b.reduced, skip_structure_reduction=True))

    novel = [not any(fit(g, t) for t in train) for g in reduced]
    unique = [not any(fit(reduced[j], reduced[i]) for j in range(i)) for i in range(len(batch))]
    assert [f["novel"] for f in flags] == novel
    assert [f["unique"] for f in flags] == unique
    assert 0 < sum(novel) < len(batch)  # the check has both outcomes to compare
    assert not unique[-1]
    # the prefilter skips most pairs
    assert sum(f["n_fits"] for f in flags) < len(batch) * (len(train) + len(batch)) / 4


def test_stability_thresholds_and_rate(reference: NoveltyReference) -> None:
    lattice = Lattice.cubic(3.0)
    batch = [
        Structure(
            lattice.matrix * (1 + 0.3 * k), ["C", "C"], [[0, 0, 0], [0.5, 0.4, 0.3 + 0.05 * k]]
        )
        for k in range(5)
    ]
    e_hull = [0.05, 0.1, -0.01, 0.0, None]
    flags = sun_flags(batch, e_hull, reference)
    assert [f["stable"] for f in flags] == [True, False, True, True, False]
    assert [f["stable_strict"] for f in flags] == [False, False, True, True, False]
    assert flags[4]["error"] and "no finite energy above hull" in flags[4]["error"]
    # the five cells differ only by volume and a small shift: the default matcher (scale=True)
    # matches them all to the first, so only the first is unique; it is novel and stable (0.05)
    # but not strictly stable (E_hull > 0)
    assert [f["unique"] for f in flags] == [True, False, False, False, False]
    assert flags[0]["novel"] and flags[0]["sun"] and not flags[0]["sun_strict"]
    summary = sun_rate(flags)
    assert summary["n"] == 5 and summary["n_sun"] == 1 and summary["n_sun_strict"] == 0
    assert summary["rate"] == pytest.approx(1 / 5)
    assert summary["n_errors"] == 1
    thresholds = summary["thresholds"]
    assert thresholds["stability_threshold_eV"] == 0.1
    assert thresholds["matcher"]["ltol"] == 0.2 and thresholds["matcher"]["stol"] == 0.3
    assert thresholds["matcher"]["angle_tol"] == 5
    looser = sun_flags(batch, e_hull, reference, stability_threshold_eV=0.2)
    assert looser[1]["stable"] and looser[1]["thresholds"]["stability_threshold_eV"] == 0.2
    assert sun_rate([])["rate"] is None


def test_bad_item_does_not_stop_the_batch(train_150) -> None:
    _, train = train_150
    flags = sun_flags([train[0], "not a structure", train[1]], [0.0, 0.0, 0.0], train[:20])
    assert "1: cannot be matched" in flags[1]["error"]
    assert not flags[1]["unique"] and not flags[1]["novel"] and not flags[1]["sun"]
    assert not flags[0]["novel"] and not flags[2]["novel"]
    reference = NoveltyReference([*train[:40], None], n_jobs=2)
    assert reference.errors == [{"id": "40", "reason": "TypeError: not a Structure (NoneType)"}]
    serial = NoveltyReference(train[:40])
    assert {k: [i for i, _ in v] for k, v in reference._by_key.items()} == {
        k: [i for i, _ in v] for k, v in serial._by_key.items()
    }
    with pytest.raises(ValueError, match="3 structures but 2 E_hull"):
        sun_flags([train[0]] * 3, [0.0, 0.0], train[:5])


@pytest.mark.slow
def test_full_carbon_24_training_split_novelty(data_dir: Path) -> None:
    """The first 100 carbon_24 test structures against all 6091 training ones (timed in
    benchmarks/novelty_reference.py): most test crystals have a copy in the training split."""
    ids, train = _split(data_dir, "train", None)
    assert len(train) == 6091
    reference = NoveltyReference(train, ids=ids)
    _, batch = _split(data_dir, "test", 100)
    flags = sun_flags(batch, np.zeros(len(batch)).tolist(), reference)
    summary = sun_rate(flags)
    assert not reference.errors and summary["n_errors"] == 0
    # measured (pymatgen's default StructureMatcher): 18 novel, 75 unique
    assert summary["n"] == 100 and summary["n_novel"] == 18 and summary["n_unique"] == 75
    novel = [f for f in flags if f["novel"]]
    assert all(f["novel_match"] is None for f in novel)
    assert all(f["novel_match"] in set(ids) for f in flags if not f["novel"])


def test_reference_is_reused_for_identical_training_structures(train_150) -> None:
    from analysis import sun as sun_module

    _, train = train_150
    batch = [train[3]]
    first = sun_flags(batch, [0.0], [s.copy() for s in train[:30]])
    reference = sun_module._REFERENCE_CACHE[-1][1]
    second = sun_flags(batch, [0.0], [s.copy() for s in train[:30]], matcher=StructureMatcher())
    assert sun_module._REFERENCE_CACHE[-1][1] is reference
    assert first[0]["novel_match"] == second[0]["novel_match"] == "3"
    changed = [s.copy() for s in train[:30]]
    changed[0].perturb(0.01, seed=1)
    sun_flags(batch, [0.0], changed)
    assert sun_module._REFERENCE_CACHE[-1][1] is not reference
    loose = sun_flags(batch, [0.0], train[:30], matcher=StructureMatcher(stol=0.5, ltol=0.3))
    assert loose[0]["thresholds"]["novelty_matcher"]["stol"] == 0.5
