"""An independent property predictor for scoring generated crystals (CDVAE's property optimisation).

CDVAE scores its optimised crystals with a regressor trained separately from the generative
model, so that the success rates do not measure the generator's own property head against
itself. This module is that scorer at CPU scale: gradient-boosted trees
(scikit-learn's ``HistGradientBoostingRegressor``) on a fixed descriptor of each crystal:

- composition: matminer's ``ElementProperty`` magpie preset (132 statistics of elemental
  properties over the composition);
- structure: volume per atom, density, the shortest interatomic distance, the three lattice
  lengths (sorted) divided by the cube root of the volume, the three angles (sorted);
- sites: the two sites of highest coordination (neighbours within 1.2 × the site's nearest
  distance, ties broken by the longer nearest distance; in an ABX3 perovskite the 12-fold A
  site and the 6-fold B site), each as its atomic number, Pauling electronegativity, atomic
  radius, row, group, coordination number and nearest distance divided by the cube root of the
  volume per atom.

The descriptor reads any crystal, so generated ones that are not perovskites still get a score.
It does not reach the accuracy of the papers' DimeNet++ regressor; :func:`mean_absolute_error`
on held-out crystals says how far it is.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure

FORMAT_VERSION = 1
"""Stored with a saved predictor; :func:`load_predictor` refuses other versions."""

SITE_FEATURES = ("Z", "X", "atomic_radius", "row", "group", "coordination", "nearest")
TOP_SITES = 2
STRUCTURE_FEATURES = (
    "volume_per_atom",
    "density",
    "shortest_distance",
    "length_1",
    "length_2",
    "length_3",
    "angle_1",
    "angle_2",
    "angle_3",
)
NEIGHBOUR_TOLERANCE = 1.2
"""A neighbour of a site is within this factor of the site's nearest distance."""


@lru_cache(maxsize=1)
def _magpie() -> Any:
    from matminer.featurizers.composition import ElementProperty

    return ElementProperty.from_preset("magpie", impute_nan=True)


@cache
def _element_features(symbol: str) -> tuple[float, ...]:
    element = Element(symbol)
    radius = element.atomic_radius
    return (
        float(element.Z),
        float(element.X) if element.X == element.X else math.nan,
        float(radius) if radius is not None else math.nan,
        float(element.row),
        float(element.group),
    )


def feature_names() -> list[str]:
    """Names of the descriptor's columns, in order."""
    magpie = [f"magpie_{name}" for name in _magpie().feature_labels()]
    sites = [f"site{i + 1}_{name}" for i in range(TOP_SITES) for name in SITE_FEATURES]
    return magpie + list(STRUCTURE_FEATURES) + sites


def describe(structure: Structure) -> np.ndarray:
    """The descriptor of one crystal (:func:`feature_names` gives the columns).

    Parameters
    ----------
    structure
        An ordered crystal with at least one site.

    Raises
    ------
    ValueError
        If the crystal has no sites, is disordered, or has a non-positive volume.
    """
    if len(structure) == 0:
        raise ValueError(f"{structure.formula or 'structure'}: no sites to describe")
    if not structure.is_ordered:
        raise ValueError(f"{structure.formula}: disordered sites cannot be described")
    volume = float(structure.volume)
    if not volume > 0:
        raise ValueError(f"{structure.formula}: cell volume {volume} is not positive")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        magpie = np.asarray(_magpie().featurize(structure.composition), dtype=float)
    scale = (volume / len(structure)) ** (1 / 3)
    distances = structure.distance_matrix.copy() if len(structure) > 1 else np.zeros((1, 1))
    np.fill_diagonal(distances, np.inf)
    nearest = distances.min(axis=1)
    if not np.all(np.isfinite(nearest)):  # one atom: its own images are its neighbours
        image = min(structure.lattice.abc)
        nearest = np.minimum(nearest, image)
    cell = structure.lattice
    lengths = np.sort(np.asarray(cell.abc)) / volume ** (1 / 3)
    angles = np.sort(np.asarray(cell.angles))
    glob = [
        volume / len(structure),
        float(structure.density),
        float(nearest.min()),
        *lengths,
        *angles,
    ]
    coordination = _coordination(structure, nearest)
    order = sorted(range(len(structure)), key=lambda i: (-coordination[i], -nearest[i], i))
    sites: list[float] = []
    for rank in range(TOP_SITES):
        if rank < len(order):
            i = order[rank]
            symbol = structure[i].specie.symbol
            sites += [*_element_features(symbol), float(coordination[i]), nearest[i] / scale]
        else:
            sites += [math.nan] * len(SITE_FEATURES)
    return np.concatenate([magpie, np.asarray(glob, dtype=float), np.asarray(sites, dtype=float)])


def _coordination(structure: Structure, nearest: np.ndarray) -> list[int]:
    """Neighbours of each site within :data:`NEIGHBOUR_TOLERANCE` × its nearest distance."""
    cutoff = float(nearest.max()) * NEIGHBOUR_TOLERANCE + 1e-6
    centres, _, _, dists = structure.get_neighbor_list(cutoff)
    counts = [0] * len(structure)
    for centre, dist in zip(centres, dists, strict=True):
        if dist > 1e-8 and dist <= nearest[centre] * NEIGHBOUR_TOLERANCE + 1e-6:
            counts[centre] += 1
    return counts


def describe_all(structures: Sequence[Structure]) -> np.ndarray:
    """[n, features] descriptors; a row of NaN for a crystal :func:`describe` rejects."""
    width = len(feature_names())
    rows = np.full((len(structures), width), np.nan)
    for k, structure in enumerate(structures):
        try:
            rows[k] = describe(structure)
        except ValueError:
            continue
    return rows


@dataclass
class PropertyPredictor:
    """A fitted descriptor + gradient-boosting regressor for one property.

    Attributes
    ----------
    property_name
        The property it predicts (e.g. ``heat_ref``).
    model
        The fitted scikit-learn regressor.
    trained_on
        Where the training crystals came from (free text, e.g. ``perov_5/val``).
    n_train
        Training crystals.
    metrics
        Held-out figures recorded with it (e.g. ``{"test_mae": ...}``).
    """

    property_name: str
    model: Any
    trained_on: str = ""
    n_train: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def predict(self, structures: Sequence[Structure]) -> np.ndarray:
        """Predicted property of each crystal (NaN for one the descriptor rejects)."""
        if not len(structures):
            return np.zeros(0)
        features = describe_all(structures)
        out = np.full(len(structures), np.nan)
        usable = ~np.all(np.isnan(features), axis=1)
        if usable.any():
            out[usable] = self.model.predict(features[usable])
        return out

    def __call__(self, structures: Sequence[Structure]) -> list[float]:
        """:meth:`predict` as a list (the scorer interface of property optimisation)."""
        return [float(v) for v in self.predict(structures)]

    def save(self, path: str | Path) -> Path:
        """Write the predictor (a pickle: load only files you trust) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT_VERSION, "features": feature_names(), **self.__dict__}
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(pickle.dumps(payload))
        tmp.replace(path)
        return path


def load_predictor(path: str | Path) -> PropertyPredictor:
    """Read a predictor written by :meth:`PropertyPredictor.save`.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a predictor of this format or its descriptor columns differ.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no property predictor at {path}")
    payload = pickle.loads(path.read_bytes())  # a file the user wrote: trusted
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a property predictor of format {FORMAT_VERSION}")
    if payload.get("features") != feature_names():
        raise ValueError(f"{path}: written with other descriptor columns; retrain it")
    return PropertyPredictor(
        property_name=payload["property_name"],
        model=payload["model"],
        trained_on=payload.get("trained_on", ""),
        n_train=int(payload.get("n_train", 0)),
        metrics=dict(payload.get("metrics", {})),
    )


def fit_predictor(
    structures: Sequence[Structure],
    values: Sequence[float],
    property_name: str,
    *,
    trained_on: str = "",
    seed: int = 0,
    max_iter: int = 500,
    learning_rate: float = 0.05,
) -> PropertyPredictor:
    """Fit the predictor on crystals with known property values.

    Parameters
    ----------
    structures, values
        Training crystals and their property; pairs with a non-finite value or a crystal the
        descriptor rejects are left out.
    property_name
        Name of the property.
    trained_on
        Provenance recorded with the predictor.
    seed
        Random state of the regressor (its early-stopping split).
    max_iter, learning_rate
        Boosting iterations (early stopping on 10 % of the training crystals) and step.

    Raises
    ------
    ValueError
        If the lengths differ or fewer than 10 usable crystals remain.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    if len(structures) != len(values):
        raise ValueError(f"{len(structures)} structures but {len(values)} property values")
    y = np.asarray(values, dtype=float)
    features = describe_all(structures)
    keep = np.isfinite(y) & ~np.all(np.isnan(features), axis=1)
    if keep.sum() < 10:
        raise ValueError(
            f"{property_name}: {int(keep.sum())} usable training crystals; need at least 10"
        )
    model = HistGradientBoostingRegressor(
        max_iter=max_iter,
        learning_rate=learning_rate,
        loss="absolute_error",
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=30,
        random_state=seed,
    )
    model.fit(features[keep], y[keep])
    return PropertyPredictor(property_name, model, trained_on, int(keep.sum()))


def mean_absolute_error(
    predictor: PropertyPredictor, structures: Sequence[Structure], values: Sequence[float]
) -> dict[str, float]:
    """MAE of the predictor on crystals it was not trained on, beside the mean-value baseline.

    Returns
    -------
    dict
        ``mae``, ``baseline_mae`` (predicting the held-out median for every crystal, the best
        constant guess), ``n`` (crystals with a value and a prediction).
    """
    y = np.asarray(values, dtype=float)
    predicted = predictor.predict(structures)
    ok = np.isfinite(y) & np.isfinite(predicted)
    if not ok.any():
        return {"mae": math.nan, "baseline_mae": math.nan, "n": 0}
    truth = y[ok]
    return {
        "mae": float(np.mean(np.abs(predicted[ok] - truth))),
        "baseline_mae": float(np.mean(np.abs(truth - np.median(truth)))),
        "n": int(ok.sum()),
    }


__all__ = [
    "PropertyPredictor",
    "describe",
    "describe_all",
    "feature_names",
    "fit_predictor",
    "load_predictor",
    "mean_absolute_error",
]
