"""Structural and compositional validity, exactly as CDVAE/DiffCSP define them (metrics.md §5.2).

- Structural validity: every periodic minimum-image distance ``structure.distance_matrix``
  (diagonal excluded) is at least ``cutoff`` (0.5 Å) and the volume is at least 0.1 Å³. The
  original code rejects ``min(d) < cutoff``, so a distance of exactly 0.5 Å passes.
- Compositional validity (SMACT): counts reduced by their gcd; valid if a single element or if
  all elements are in ``smact.metals``; otherwise valid if some combination of oxidation states
  is charge neutral (``smact.neutral_ratios`` with the reduced counts as the only stoichiometry)
  and passes the Pauling electronegativity test with the smact 2.2.1 semantics: a missing
  electronegativity makes the comparison raise ``TypeError``, which CDVAE counts as a pass.
  smact 4's own ``pauling_test`` returns ``False`` there instead, so it is reimplemented here.
- Oxidation states: the SMACT-14 set by default (``smact.Element.oxidation_states_smact14``,
  read from smact's ``data/oxidation_states.txt``), which was the default of smact 2.2.1 that
  CDVAE pins. smact >= 3 defaults to ICSD-24; pass ``oxidation_states_set="icsd24"`` for that.
- valid = constructed AND comp_valid AND struct_valid (a fingerprint failure also makes a crystal
  invalid in generation metrics; see :mod:`analysis.fingerprints`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, reduce
from math import gcd
from typing import Any

import numpy as np
import smact
from pymatgen.core import Element, Structure

from analysis.construction import MIN_VOLUME, CheckedStructure, check_structures
from analysis.parallel import parallel_map
from analysis.results import MetricResult

STRUCTURE_CUTOFF = 0.5
"""Minimum interatomic distance (Å) of a structurally valid crystal."""

OXIDATION_STATE_SETS: dict[str, str] = {
    "smact14": "oxidation_states_smact14",
    "icsd16": "oxidation_states_icsd16",
    "icsd24": "oxidation_states",
    "pymatgen_sp": "oxidation_states_sp",
    "wiki": "oxidation_states_wiki",
}
"""Name -> ``smact.Element`` attribute. ``icsd24`` is smact 4's ``Element.oxidation_states``."""

DEFAULT_OXIDATION_STATE_SET = "smact14"

_SMACT_METALS = frozenset(smact.metals)


def _smact_version() -> str:
    try:
        from importlib.metadata import version

        return version("smact")
    except Exception:  # pragma: no cover - smact is installed
        return "unknown"


def oxidation_state_set_description(name: str) -> str:
    """Describe an oxidation-state set for the metric definition.

    Parameters
    ----------
    name
        A key of :data:`OXIDATION_STATE_SETS`.

    Returns
    -------
    str
        Human-readable provenance of the set.
    """
    if name == "smact14":
        return (
            f"SMACT-14 (smact {_smact_version()} Element.oxidation_states_smact14, "
            "data/oxidation_states.txt; the default set of smact 2.2.1 pinned by CDVAE)"
        )
    return f"{name} (smact {_smact_version()} Element.{OXIDATION_STATE_SETS[name]})"


@lru_cache(maxsize=512)
def _element_data(symbol: str, ox_set: str) -> tuple[tuple[int, ...] | None, float | None]:
    """Oxidation states of the chosen set and the Pauling electronegativity of one element."""
    element = smact.Element(symbol)
    states = getattr(element, OXIDATION_STATE_SETS[ox_set])
    return (tuple(states) if states is not None else None, element.pauling_eneg)


def pauling_test_smact221(ox_states: Sequence[int], enegs: Sequence[float | None]) -> bool:
    """Pauling test with smact 2.2.1 semantics: cations must be less electronegative than anions.

    Pairs are visited in order and the first failing pair decides. A cation/anion pair with a
    missing electronegativity raises ``TypeError`` (as comparing ``None`` did in smact 2.2.1).

    Parameters
    ----------
    ox_states
        Oxidation state per element.
    enegs
        Pauling electronegativity per element (``None`` if unknown).

    Returns
    -------
    bool
        Whether the combination passes.

    Raises
    ------
    TypeError
        If a compared electronegativity is ``None``.
    """
    for (ox1, en1), (ox2, en2) in itertools.combinations(zip(ox_states, enegs, strict=True), 2):
        if ox1 > 0 and ox2 < 0:
            if en1 is None or en2 is None:
                raise TypeError("missing electronegativity")
            if en1 >= en2:
                return False
        elif ox1 < 0 and ox2 > 0:
            if en1 is None or en2 is None:
                raise TypeError("missing electronegativity")
            if en1 <= en2:
                return False
    return True


def smact_valid(
    symbols: Sequence[str],
    counts: Sequence[int],
    oxidation_states_set: str = DEFAULT_OXIDATION_STATE_SET,
    use_pauling_test: bool = True,
    include_alloys: bool = True,
) -> bool:
    """CDVAE's ``smact_validity`` on a composition.

    Parameters
    ----------
    symbols
        Element symbols, in the order CDVAE uses (sorted by atomic number).
    counts
        Atom count per element (reduced by their gcd here).
    oxidation_states_set
        Key of :data:`OXIDATION_STATE_SETS`.
    use_pauling_test, include_alloys
        As in CDVAE (both on).

    Returns
    -------
    bool
        Compositional validity.

    Raises
    ------
    ValueError
        If an element has no oxidation states in the chosen set (CDVAE would crash there).
    """
    if len(set(symbols)) == 1:
        return True
    if include_alloys and all(s in _SMACT_METALS for s in symbols):
        return True
    divisor = reduce(gcd, [int(c) for c in counts])
    reduced = [int(c) // divisor for c in counts]
    data = [_element_data(s, oxidation_states_set) for s in symbols]
    missing = [s for s, (states, _) in zip(symbols, data, strict=True) if not states]
    if missing:
        raise ValueError(f"no {oxidation_states_set} oxidation states for {missing}")
    ox_combos = [states for states, _ in data]
    enegs = [eneg for _, eneg in data]
    stoichs = [(c,) for c in reduced]
    threshold = max(reduced)
    for ox_states in itertools.product(*ox_combos):
        # fast pre-check of charge balance; smact.neutral_ratios then applies its own filters
        if sum(o * c for o, c in zip(ox_states, reduced, strict=True)) != 0:
            continue
        ratios = smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=threshold)
        if not ratios:
            continue
        if not use_pauling_test:
            return True
        try:
            if pauling_test_smact221(ox_states, enegs):
                return True
        except TypeError:
            return True
    return False


def composition_of(atomic_numbers: Sequence[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Element symbols sorted by atomic number and their counts, as CDVAE's ``get_composition``.

    Parameters
    ----------
    atomic_numbers
        Atomic number per site.

    Returns
    -------
    tuple
        ``(symbols, counts)``.
    """
    counter = Counter(int(z) for z in atomic_numbers)
    zs = sorted(counter)
    return tuple(Element.from_Z(z).symbol for z in zs), tuple(counter[z] for z in zs)


def shortest_distance(structure: Structure) -> float | None:
    """Smallest minimum-image distance between two different sites, Å (``None`` below 2 sites).

    Parameters
    ----------
    structure
        The crystal.

    Returns
    -------
    float or None
        The smallest off-diagonal entry of ``structure.distance_matrix``.
    """
    if len(structure) < 2:
        return None
    dist = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(dist, np.inf)
    return float(dist.min())


def structure_is_valid(structure: Structure, cutoff: float = STRUCTURE_CUTOFF) -> bool:
    """CDVAE's ``structure_validity``: all distances >= cutoff and volume >= 0.1 Å³.

    Parameters
    ----------
    structure
        The crystal.
    cutoff
        Minimum distance in Å.

    Returns
    -------
    bool
        Structural validity.
    """
    if structure.volume < MIN_VOLUME:
        return False
    closest = shortest_distance(structure)
    return closest is None or closest >= cutoff


@dataclass
class ValidityRecord:
    """Validity of one crystal.

    Parameters
    ----------
    id
        Item id.
    constructed
        Construction succeeded (§5.1).
    comp_valid, struct_valid, valid
        The CDVAE flags; ``valid = comp_valid and struct_valid``.
    reason
        Why the crystal is invalid (``None`` if valid).
    """

    id: str
    constructed: bool
    comp_valid: bool
    struct_valid: bool
    valid: bool
    reason: str | None = None


def _assess_one(args: tuple[CheckedStructure, float, str]) -> ValidityRecord:
    item, cutoff, ox_set = args
    reasons: list[str] = [] if item.constructed else [str(item.error)]
    comp_valid = False
    if item.atomic_numbers:
        try:
            symbols, counts = composition_of(item.atomic_numbers)
            comp_valid = smact_valid(symbols, counts, ox_set)
            if not comp_valid:
                reasons.append(
                    f"composition: no charge-neutral, Pauling-consistent {ox_set} states"
                )
        except Exception as exc:
            reasons.append(f"composition: {exc}")
    struct_valid = False
    if item.constructed and item.structure is not None:
        try:
            struct_valid = structure_is_valid(item.structure, cutoff)
            if not struct_valid:
                reasons.append(f"structure: an interatomic distance < {cutoff} Å")
        except Exception as exc:
            reasons.append(f"structure: {exc}")
    valid = comp_valid and struct_valid
    return ValidityRecord(
        id=item.id,
        constructed=item.constructed,
        comp_valid=comp_valid,
        struct_valid=struct_valid,
        valid=valid,
        reason=None if valid else "; ".join(reasons) or "invalid",
    )


def assess_validity(
    items: Sequence[Any],
    ids: Sequence[str] | None = None,
    cutoff: float = STRUCTURE_CUTOFF,
    oxidation_states_set: str = DEFAULT_OXIDATION_STATE_SET,
    n_jobs: int | None = None,
    progress: bool = False,
) -> list[ValidityRecord]:
    """Validity flags for a batch; bad items are flagged with a reason, never raised.

    Parameters
    ----------
    items
        Structures, dicts, CIF strings, ``None`` or :class:`CheckedStructure`.
    ids
        One id per item.
    cutoff
        Structural-validity distance cutoff (Å).
    oxidation_states_set
        SMACT oxidation-state set (default SMACT-14).
    n_jobs
        Worker processes (:func:`analysis.parallel.resolve_jobs`: ``None`` = ``DFTLOOP_JOBS`` or
        all cores, 1 = this process).
    progress
        Show a progress bar.

    Returns
    -------
    list[ValidityRecord]
        One per item.
    """
    checked = check_structures(items, ids)
    if oxidation_states_set not in OXIDATION_STATE_SETS:
        raise ValueError(
            f"unknown oxidation-state set {oxidation_states_set!r}; "
            f"choose from {sorted(OXIDATION_STATE_SETS)}"
        )
    jobs = [(c, cutoff, oxidation_states_set) for c in checked]
    return parallel_map(_assess_one, jobs, n_jobs=n_jobs, desc="validity", progress=progress)


def validity_definition(
    cutoff: float = STRUCTURE_CUTOFF, oxidation_states_set: str = DEFAULT_OXIDATION_STATE_SET
) -> dict[str, Any]:
    """The definition dict shared by the validity metrics.

    Parameters
    ----------
    cutoff
        Structural cutoff (Å).
    oxidation_states_set
        SMACT set name.

    Returns
    -------
    dict
        Definition entries.
    """
    return {
        "reference": "CDVAE scripts/eval_utils.py smact_validity/structure_validity (§5.2)",
        "structure_cutoff_angstrom": cutoff,
        "structure_rule": "min periodic distance >= cutoff (invalid if min < cutoff) and V >= 0.1",
        "min_volume_angstrom3": MIN_VOLUME,
        "smact_oxidation_states": oxidation_state_set_description(oxidation_states_set),
        "smact_semantics": (
            "smact 2.2.1: gcd-reduced counts, single element or all smact.metals -> valid; "
            "neutral_ratios(ox, stoichs=[(c,)...], threshold=max(count)); Pauling test with "
            "TypeError (missing electronegativity) counted as pass"
        ),
        "denominator": "all items, including those that failed construction",
    }


def validity_metrics(
    records: Sequence[ValidityRecord],
    definition: dict[str, Any] | None = None,
) -> dict[str, MetricResult]:
    """Turn validity records into the four validity metrics.

    Parameters
    ----------
    records
        Output of :func:`assess_validity`.
    definition
        Definition dict (default :func:`validity_definition`); extra keys may be added by callers.

    Returns
    -------
    dict[str, MetricResult]
        ``construction_validity``, ``struct_validity``, ``comp_validity``, ``validity``.
    """
    definition = dict(definition or validity_definition())
    n = len(records)
    counts = {
        "n_total": n,
        "n_constructed": sum(r.constructed for r in records),
        "n_struct_valid": sum(r.struct_valid for r in records),
        "n_comp_valid": sum(r.comp_valid for r in records),
        "n_valid": sum(r.valid for r in records),
    }
    not_built = [{"id": r.id, "reason": str(r.reason)} for r in records if not r.constructed]
    invalid = [{"id": r.id, "reason": str(r.reason)} for r in records if not r.valid]

    def frac(key: str) -> float | None:
        return counts[key] / n if n else None

    return {
        "construction_validity": MetricResult(
            "construction_validity",
            frac("n_constructed"),
            definition,
            counts,
            "Fraction of items that could be built into a crystal (§5.1).",
            not_built,
        ),
        "struct_validity": MetricResult(
            "struct_validity",
            frac("n_struct_valid"),
            definition,
            counts,
            "Fraction with all interatomic distances >= 0.5 Å and volume >= 0.1 Å³.",
            [{"id": r.id, "reason": str(r.reason)} for r in records if not r.struct_valid],
        ),
        "comp_validity": MetricResult(
            "comp_validity",
            frac("n_comp_valid"),
            definition,
            counts,
            "Fraction whose composition passes the SMACT charge-neutrality + Pauling screen.",
            [{"id": r.id, "reason": str(r.reason)} for r in records if not r.comp_valid],
        ),
        "validity": MetricResult(
            "validity",
            frac("n_valid"),
            definition,
            counts,
            "Fraction both structurally and compositionally valid.",
            invalid,
        ),
    }


def structure_validity(
    items: Sequence[Any],
    ids: Sequence[str] | None = None,
    cutoff: float = STRUCTURE_CUTOFF,
    n_jobs: int | None = None,
) -> MetricResult:
    """Structural validity of a batch (fraction of all items).

    Parameters
    ----------
    items
        Structures or other inputs accepted by :func:`assess_validity`.
    ids
        Item ids.
    cutoff
        Distance cutoff (Å).
    n_jobs
        Worker processes (:func:`analysis.parallel.resolve_jobs`).

    Returns
    -------
    MetricResult
        ``struct_validity``.
    """
    records = assess_validity(items, ids, cutoff=cutoff, n_jobs=n_jobs)
    return validity_metrics(records, validity_definition(cutoff))["struct_validity"]


def composition_validity(
    items: Sequence[Any],
    ids: Sequence[str] | None = None,
    oxidation_states_set: str = DEFAULT_OXIDATION_STATE_SET,
    n_jobs: int | None = None,
) -> MetricResult:
    """Compositional (SMACT) validity of a batch (fraction of all items).

    Parameters
    ----------
    items
        Structures or other inputs accepted by :func:`assess_validity`.
    ids
        Item ids.
    oxidation_states_set
        SMACT set (default SMACT-14, as smact 2.2.1).
    n_jobs
        Worker processes (:func:`analysis.parallel.resolve_jobs`).

    Returns
    -------
    MetricResult
        ``comp_validity``.
    """
    records = assess_validity(items, ids, oxidation_states_set=oxidation_states_set, n_jobs=n_jobs)
    definition = validity_definition(oxidation_states_set=oxidation_states_set)
    return validity_metrics(records, definition)["comp_validity"]
