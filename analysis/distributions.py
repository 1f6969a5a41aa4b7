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
        All generated structures.
    valid
        Validity flag per structure.
    n_samples
        How many to draw.
    seed
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    tuple
        ``(selected, definition)``; the definition says how many were requested and used.
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


def wasserstein_density(
    gen_samples: Sequence[Structure],
    gt: Sequence[Structure],
    definition: dict[str, Any] | None = None,
) -> MetricResult:
    """d_ρ: W1 of ``structure.density`` (g/cm³) between samples and ground truth.

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
    MetricResult
        ``wdist_density``.
    """
    return wasserstein(
        "wdist_density",
        [s.density for s in gen_samples],
        [s.density for s in gt if s is not None],
        {"quantity": "pymatgen Structure.density (g/cm^3)", **(definition or {})},
        "d_ρ: Wasserstein distance between the density distributions.",
    )


def wasserstein_num_elements(
    gen_samples: Sequence[Structure],
    gt: Sequence[Structure],
    definition: dict[str, Any] | None = None,
) -> MetricResult:
    """d_elem: W1 of the number of distinct elements.

    Parameters
    ----------
    gen_samples
        Selected valid generated structures.
    gt
        Ground-truth structures.
    definition
        Extra definition entries.

    Returns
    -------
    MetricResult
        ``wdist_num_elems``.
    """
    return wasserstein(
        "wdist_num_elems",
        [len(set(s.species)) for s in gen_samples],
        [len(set(s.species)) for s in gt if s is not None],
        {"quantity": "len(set(structure.species))", **(definition or {})},
        "d_elem: Wasserstein distance between the numbers of distinct elements.",
    )


def wasserstein_property(
    gen_samples: Sequence[Structure],
    gt: Sequence[Structure],
    predictor: PropertyPredictor,
    property_name: str = "property",
    definition: dict[str, Any] | None = None,
) -> MetricResult:
    """d_E: W1 of a predicted property.

    Parameters
    ----------
    gen_samples
        Selected valid generated structures.
    gt
        Ground-truth structures.
    predictor
        Callable mapping a list of structures to one value each.
    property_name
        Name of the predicted property (recorded in the definition).
    definition
        Extra definition entries.

    Returns
    -------
    MetricResult
        ``wdist_prop``.
    """
    gt_list = [s for s in gt if s is not None]
    return wasserstein(
        "wdist_prop",
        list(predictor(list(gen_samples))),
        list(predictor(gt_list)),
        {
            "quantity": property_name,
            "predictor": getattr(predictor, "__name__", type(predictor).__name__),
            **(definition or {}),
        },
        "d_E: Wasserstein distance between predicted-property distributions.",
    )
