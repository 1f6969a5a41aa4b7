"""The independent property predictor: its descriptor by hand, its fit on a known relation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Element, Lattice, Structure

from analysis.property_predictor import (
    describe,
    feature_names,
    fit_predictor,
    load_predictor,
    mean_absolute_error,
)

A_SITES = ("Sr", "Ba", "Ca", "K", "Na", "La")
B_SITES = ("Ti", "Zr", "Nb", "Ta", "Mn", "Fe")


def _perovskite(a_site: str, b_site: str, a: float) -> Structure:
    """Cubic ABO3: A at the corner, B at the body centre, O at the face centres."""
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(a), [a_site, b_site, "O", "O", "O"], frac)


def test_descriptor_of_a_cubic_perovskite_by_hand() -> None:
    a = 3.905
    row = dict(zip(feature_names(), describe(_perovskite("Sr", "Ti", a)), strict=True))
    assert row["volume_per_atom"] == pytest.approx(a**3 / 5)
    assert row["shortest_distance"] == pytest.approx(a / 2)  # Ti-O
    assert [row[f"length_{i}"] for i in (1, 2, 3)] == pytest.approx([1, 1, 1])
    # the 12-fold A site first, the 6-fold B site second (not the 2-fold oxygens)
    assert row["site1_Z"] == 38 and row["site1_coordination"] == 12
    assert row["site2_Z"] == 22 and row["site2_coordination"] == 6
    scale = (a**3 / 5) ** (1 / 3)
    assert row["site1_nearest"] == pytest.approx(a / math.sqrt(2) / scale)
    assert row["site2_nearest"] == pytest.approx(a / 2 / scale)
    assert row["site1_X"] == pytest.approx(Element("Sr").X)


def _dataset(n: int, seed: int) -> tuple[list[Structure], np.ndarray]:
    """Perovskites whose 'property' is a known function of the A and B sites and the cell:
    y = X(B) - 0.5·X(A) + 0.3·(a - 4 Å); swapping A and B changes y, composition does not."""
    rng = np.random.default_rng(seed)
    structures, values = [], []
    for _ in range(n):
        a_site, b_site = rng.choice(A_SITES), rng.choice(B_SITES)
        if rng.random() < 0.5:  # the same composition with the sites swapped
            a_site, b_site = b_site, a_site
        a = float(rng.uniform(3.7, 4.3))
        structures.append(_perovskite(str(a_site), str(b_site), a))
        values.append(Element(b_site).X - 0.5 * Element(a_site).X + 0.3 * (a - 4.0))
    return structures, np.array(values)


def test_predictor_learns_a_known_relation_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    train_s, train_y = _dataset(300, seed=1)
    test_s, test_y = _dataset(80, seed=2)
    predictor = fit_predictor(train_s, train_y, "toy", trained_on="toy/train", seed=0)
    held_out = mean_absolute_error(predictor, test_s, test_y)
    spread = float(np.mean(np.abs(test_y - np.median(test_y))))
    assert held_out["n"] == 80
    assert held_out["baseline_mae"] == pytest.approx(spread)
    assert held_out["mae"] < 0.15 * spread  # measured 0.03x; a constant guess is 1x

    shuffled = fit_predictor(train_s, np.random.default_rng(3).permutation(train_y), "toy")
    assert mean_absolute_error(shuffled, test_s, test_y)["mae"] > 0.6 * spread  # measured 0.99x

    path = predictor.save(tmp_path / "toy.pkl")
    again = load_predictor(path)
    assert again.trained_on == "toy/train" and again.n_train == 300
    assert np.array_equal(again.predict(test_s), predictor.predict(test_s))


def test_predictor_errors_name_the_problem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    structures, values = _dataset(5, seed=4)
    with pytest.raises(ValueError, match="5 usable training crystals; need at least 10"):
        fit_predictor(structures, values, "toy")
    with pytest.raises(ValueError, match="5 structures but 4 property values"):
        fit_predictor(structures, values[:4], "toy")
    with pytest.raises(ValueError, match="no sites"):
        describe(Structure(Lattice.cubic(4.0), [], []))
    with pytest.raises(FileNotFoundError, match="no property predictor"):
        load_predictor(tmp_path / "missing.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(__import__("pickle").dumps({"format": 0}))
    with pytest.raises(ValueError, match="not a property predictor"):
        load_predictor(bad)
