"""Wasserstein distances of property distributions (CDVAE ``GenEval``, metrics.md §5.4).

``n_samples`` (1000) valid generated crystals are drawn at random without replacement (seeded
``numpy.random.default_rng(seed)``) and compared with every ground-truth crystal by
``scipy.stats.wasserstein_distance`` of:

- density: ``structure.density`` in g/cm³ (d_ρ);
- number of distinct elements: ``len(set(structure.species))`` (d_elem);
- a property predicted by a callable (d_E), when one is given.

Deviation: the original script raises when fewer than ``n_samples`` crystals are valid; here all
valid crystals are used instead and the definition records ``n_used`` and ``fewer_than_requested``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Structure
from scipy.stats import wasserstein_distance

from analysis.results import MetricResult

N_SAMPLES = 1000
"""Valid samples drawn for the property statistics (CDVAE ``n_samples``)."""

PropertyPredictor = Callable[[Sequence[Structure]], Sequence[float]]
"""Maps structures to one predicted property value each."""


def draw_valid_indices(
    valid: Sequence[bool], n_samples: int = N_SAMPLES, seed: int = 0
) -> tuple[list[int], dict[str, Any]]:
    """Draw up to ``n_samples`` indices of valid items at random, without replacement.

    Parameters
    ----------
    valid
        Validity flag per item.
    n_samples
        How many to draw.
    seed
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    tuple
        ``(sorted indices, definition)``; the definition says how many were requested and used.
    """
    pool = [i for i, ok in enumerate(valid) if ok]
    if len(pool) > n_samples:
        rng = np.random.default_rng(seed)
        chosen = sorted(pool[i] for i in rng.choice(len(pool), n_samples, replace=False))
    else:
        chosen = list(pool)
    definition = {
        "n_samples_requested": n_samples,
        "n_valid_available": len(pool),
        "n_used": len(chosen),
        "fewer_than_requested": len(pool) < n_samples,
        "sampling": f"random without replacement, numpy default_rng(seed={seed})",
        "deviation": (
            "the original script raises if fewer than n_samples are valid; "
            "here all valid samples are used and this is recorded"
        ),
    }
    return chosen, definition


def draw_valid_samples(
    structures: Sequence[Structure | None],
    valid: Sequence[bool],
    n_samples: int = N_SAMPLES,
    seed: int = 0,
) -> tuple[list[Structure], dict[str, Any]]:
    """Draw up to ``n_samples`` valid structures at random, without replacement.

    Parameters
    ----------
    structures
        All generated structures (``None`` entries are never drawn).
    valid, n_samples, seed
        As :func:`draw_valid_indices`.

    Returns
    -------
    tuple
        ``(selected structures, definition)`` (see :func:`draw_valid_indices`).
    """
    flags = [bool(ok) and s is not None for s, ok in zip(structures, valid, strict=True)]
    idx, definition = draw_valid_indices(flags, n_samples, seed)
    return [structures[i] for i in idx], definition  # type: ignore[misc]


def wasserstein(
    name: str,
    generated: Sequence[float],
    reference: Sequence[float],
    definition: dict[str, Any] | None = None,
    description: str = "",
) -> MetricResult:
    """W1 distance between two samples of a scalar, as a :class:`MetricResult`.

    Parameters
    ----------
    name
        Metric name.
    generated, reference
        The two samples.
    definition
        Extra definition entries.
    description
        What the scalar is.

    Returns
    -------
    MetricResult
        ``value`` is ``None`` if either sample is empty.
    """
    gen = np.asarray(generated, dtype=float)
    ref = np.asarray(reference, dtype=float)
    gen, ref = gen[np.isfinite(gen)], ref[np.isfinite(ref)]
    value = float(wasserstein_distance(gen, ref)) if len(gen) and len(ref) else None
    return MetricResult(
        name,
        value,
        {"distance": "scipy.stats.wasserstein_distance (W1)", **(definition or {})},
        {"n_generated": len(gen), "n_reference": len(ref)},
        description,
    )


@dataclass(frozen=True)
class StructureScalar:
    """One scalar per structure whose distributions are compared.

    Attributes
    ----------
    values
        Maps a list of structures to one value each.
    quantity
        Definition entries that say what the scalar is.
    description
        One-line description of the metric.
    """

    values: PropertyPredictor
    quantity: dict[str, Any]
    description: str


STRUCTURE_SCALARS: dict[str, StructureScalar] = {
    "wdist_density": StructureScalar(
        lambda structures: [s.density for s in structures],
        {"quantity": "pymatgen Structure.density (g/cm^3)"},
        "d_ρ: Wasserstein distance between the density distributions.",
    ),
    "wdist_num_elems": StructureScalar(
        lambda structures: [len(set(s.species)) for s in structures],
        {"quantity": "len(set(structure.species))"},
        "d_elem: Wasserstein distance between the numbers of distinct elements.",
    ),
}
"""d_ρ and d_elem by metric name."""


def wasserstein_of_structures(
    name: str,
    scalar: StructureScalar,
    gen_samples: Sequence[Structure],
    gt: Sequence[Structure | None],
    definition: dict[str, Any] | None = None,
) -> MetricResult:
    """W1 of one scalar of the structures between samples and ground truth.

    Parameters
    ----------
    name
        Metric name.
    scalar
        The scalar compared.
    gen_samples
        Selected valid generated structures (see :func:`draw_valid_samples`).
    gt
        Ground-truth structures (``None`` entries are skipped).
    definition
        Extra definition entries (sampling, dataset).

    Returns
    -------
    MetricResult
        ``value`` is ``None`` if either sample is empty.
    """
    return wasserstein(
        name,
        list(scalar.values(list(gen_samples))),
        list(scalar.values([s for s in gt if s is not None])),
        {**scalar.quantity, **(definition or {})},
        scalar.description,
    )


def wasserstein_structure_scalars(
    gen_samples: Sequence[Structure],
    gt: Sequence[Structure | None],
    definition: dict[str, Any] | None = None,
) -> dict[str, MetricResult]:
    """d_ρ (``wdist_density``, g/cm³) and d_elem (``wdist_num_elems``) of the samples.

    Parameters
    ----------
    gen_samples
        Selected valid generated structures (see :func:`draw_valid_samples`).
    gt
        Ground-truth structures.
    definition
        Extra definition entries (sampling, dataset).

    Returns
    -------
    dict
        ``{metric name: MetricResult}`` for every entry of :data:`STRUCTURE_SCALARS`.
    """
    return {
        name: wasserstein_of_structures(name, scalar, gen_samples, gt, definition)
        for name, scalar in STRUCTURE_SCALARS.items()
    }


def wasserstein_property(
    gen_samples: Sequence[Structure],
    gt: Sequence[Structure | None],
    predictor: PropertyPredictor,
    property_name: str = "property",
    definition: dict[str, Any] | None = None,
) -> MetricResult:
    """d_E (``wdist_prop``): W1 of a predicted property.

    Parameters
    ----------
    gen_samples, gt, definition
        As :func:`wasserstein_of_structures`.
    predictor
        Callable mapping a list of structures to one value each.
    property_name
        Name of the predicted property (recorded in the definition).

    Returns
    -------
    MetricResult
        ``wdist_prop``.
    """
    predictor_name = getattr(predictor, "__name__", type(predictor).__name__)
    scalar = StructureScalar(
        predictor,
        {"quantity": property_name, "predictor": predictor_name},
        "d_E: Wasserstein distance between predicted-property distributions.",
    )
    return wasserstein_of_structures("wdist_prop", scalar, gen_samples, gt, definition)
