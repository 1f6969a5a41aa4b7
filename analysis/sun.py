"""S.U.N.: the fraction of generated structures that are stable, unique and novel.

Definition (MatterGen, Zeni et al., Nature 639, 624 (2025); evaluation code
``mattergen/evaluation``), applied here with the reference hull and training split of this
project:

``stable``
    ``E_hull < 0.1 eV/atom`` against the reference hull (:mod:`analysis.hull`; energies from
    the same method). Also reported: ``stable_strict``, ``E_hull <= 0`` (within
    :data:`STRICT_TOLERANCE_EV` = 1e-6 eV/atom of numerical noise), and ``sun_strict``.
``unique``
    the structure does not match any *earlier* structure of the same batch (the first of a
    group of duplicates is unique, the later ones are not).
``novel``
    the structure does not match any structure of the training split.
``sun``
    stable AND unique AND novel. ``rate = n_sun / n`` over all structures of the batch
    (structures with a missing energy or a failed comparison count as not S.U.N.).

Matching uses pymatgen's ``StructureMatcher`` with its defaults, as MatterGen's
``OrderedStructureMatcher`` does: ``ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True,
scale=True, attempt_supercell=False, allow_subset=False`` (pass ``matcher=`` for others, e.g. the
CSP tolerances of :mod:`analysis.matching`).

Speed (6,091 carbon_24 training structures): every structure is reduced once (Niggli +
primitive, as ``StructureMatcher.group_structures`` does) and compared with
``fit(..., skip_structure_reduction=True)``. Before a pair is handed to the matcher, two exact
necessary conditions are checked (they hold for ``attempt_supercell=False, allow_subset=False``;
otherwise only the composition hash is used):

* same comparator hash of the composition (the reduced composition for the default
  ``SpeciesComparator``) and the same number of sites in the reduced cell (the matcher returns no
  match otherwise);
* the shortest lattice vector of the first structure is shorter than ``(1 + ltol)`` times the
  shortest cell edge of the second, both after the matcher's volume scaling
  (``Lattice.find_all_mappings`` needs a vector of the first lattice within that factor of each
  edge of the second).

Density is *not* used as a filter with the default matcher: ``scale=True`` rescales both
structures to the same volume, so a compressed copy still matches.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from analysis.parallel import parallel_map

STABILITY_THRESHOLD_EV = 0.1
"""MatterGen's stability threshold: ``E_hull < 0.1 eV/atom``."""

STRICT_TOLERANCE_EV = 1e-6
"""Numerical tolerance of the strict variant ``E_hull <= 0`` (eV/atom)."""

_LENGTH_SLACK = 1e-6
"""Relative slack on the lattice-length prefilter, so that round-off never rejects a match."""


@dataclass(frozen=True)
class ReducedStructure:
    """A structure reduced once for repeated matching, with its prefilter keys.

    Parameters
    ----------
    reduced
        The structure after species processing, Niggli reduction and primitive cell.
    key
        Comparator hash of the composition and (when exact for the matcher) the site count.
    shortest_vector
        Shortest lattice vector of ``reduced`` divided by the matcher's length scale.
    shortest_edge
        Shortest cell edge of ``reduced`` divided by the same scale.
    """

    reduced: Structure
    key: tuple[Any, ...]
    shortest_vector: float
    shortest_edge: float


def matcher_settings(matcher: StructureMatcher) -> dict[str, Any]:
    """Return the tolerances and switches of a StructureMatcher, for writing beside a result.

    Parameters
    ----------
    matcher
        The matcher.

    Returns
    -------
    dict
        ``ltol``, ``stol``, ``angle_tol``, ``primitive_cell``, ``scale``, ``attempt_supercell``,
        ``allow_subset`` and the comparator's class name.
    """
    return {
        "ltol": matcher.ltol,
        "stol": matcher.stol,
        "angle_tol": matcher.angle_tol,
        "primitive_cell": matcher._primitive_cell,
        "scale": matcher._scale,
        "attempt_supercell": matcher._supercell,
        "allow_subset": matcher._subset,
        "comparator": type(matcher._comparator).__name__,
    }


def _exact_prefilter(matcher: StructureMatcher) -> bool:
    return not matcher._supercell and not matcher._subset


def reduce_for_matching(structure: Structure, matcher: StructureMatcher) -> ReducedStructure:
    """Reduce a structure the way ``StructureMatcher.fit`` would, and compute its filter keys.

    Parameters
    ----------
    structure
        The structure.
    matcher
        The matcher that will compare it.

    Returns
    -------
    ReducedStructure
        The reduced structure and its prefilter keys.
    """
    processed = matcher._process_species([structure])[0]
    reduced = matcher._get_reduced_structure(processed, matcher._primitive_cell, niggli=True)
    comp_hash = matcher._comparator.get_hash(reduced.composition)
    exact = _exact_prefilter(matcher)
    key: tuple[Any, ...] = (comp_hash, len(reduced)) if exact else (comp_hash,)
    lattice = reduced.lattice
    scale = (lattice.volume / len(reduced)) ** (1 / 3) if matcher._scale else 1.0
    shortest_vector = lattice.get_niggli_reduced_lattice().abc[0]
    return ReducedStructure(
        reduced=reduced,
        key=key,
        shortest_vector=shortest_vector / scale,
        shortest_edge=min(lattice.abc) / scale,
    )


def _reduce_job(
    job: tuple[Structure, StructureMatcher],
) -> tuple[ReducedStructure | None, str | None]:
    """Process-pool worker: :func:`reduce_for_matching` that returns an error instead of raising."""
    structure, matcher = job
    try:
        if not isinstance(structure, Structure):
            raise TypeError(f"not a Structure ({type(structure).__name__})")
        return reduce_for_matching(structure, matcher), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _may_match(
    first: ReducedStructure, second: ReducedStructure, matcher: StructureMatcher
) -> bool:
    """Necessary condition for ``matcher.fit(first, second)`` (see the module docstring)."""
    if first.key != second.key:
        return False
    if not _exact_prefilter(matcher):
        return True
    bound = (1.0 + matcher.ltol) * second.shortest_edge * (1.0 + _LENGTH_SLACK)
    return first.shortest_vector < bound


def _fit(first: ReducedStructure, second: ReducedStructure, matcher: StructureMatcher) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(matcher.fit(first.reduced, second.reduced, skip_structure_reduction=True))


class NoveltyReference:
    """Training structures reduced once, indexed by prefilter key, for novelty checks.

    Building it costs one Niggli + primitive reduction per training structure (minutes for the
    6,091 carbon_24 training structures on one loaded core, see docs/metrics.md); build it
    once and pass it to :func:`sun_flags` for every model.

    Parameters
    ----------
    structures
        The training structures.
    ids
        Their ids (default: the index as a string), reported as ``novel_match``.
    matcher
        The matcher (default: pymatgen defaults, see the module docstring).
    n_jobs
        Processes for the one-off reduction (:func:`analysis.parallel.resolve_jobs`: ``None``
        = ``DFTLOOP_JOBS`` or all cores, 1 = this process).
    progress
        Show a progress bar while reducing.
    """

    def __init__(
        self,
        structures: Sequence[Structure],
        ids: Sequence[str] | None = None,
        matcher: StructureMatcher | None = None,
        *,
        n_jobs: int | None = None,
        progress: bool = False,
    ) -> None:
        self.matcher = matcher or StructureMatcher()
        self.ids = (
            [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(structures))]
        )
        if len(self.ids) != len(structures):
            raise ValueError(f"{len(self.ids)} ids for {len(structures)} training structures")
        self.errors: list[dict[str, str]] = []
        self._by_key: dict[tuple[Any, ...], list[tuple[str, ReducedStructure]]] = {}
        jobs = [(structure, self.matcher) for structure in structures]
        reduced = parallel_map(
            _reduce_job, jobs, n_jobs=n_jobs, desc="reduce training structures", progress=progress
        )
        for sid, (item, error) in zip(self.ids, reduced, strict=True):
            if item is None:
                self.errors.append({"id": sid, "reason": str(error)})
                continue
            self._by_key.setdefault(item.key, []).append((sid, item))
        self.n_structures = len(structures)

    def candidates(self, item: ReducedStructure) -> list[tuple[str, ReducedStructure]]:
        """Training structures that pass the exact prefilter against ``item``.

        Parameters
        ----------
        item
            A reduced generated structure (the first argument of the fit).

        Returns
        -------
        list
            ``(id, reduced)`` pairs, closest shortest-edge first.
        """
        group = self._by_key.get(item.key, [])
        kept = [(sid, ref) for sid, ref in group if _may_match(item, ref, self.matcher)]
        kept.sort(key=lambda pair: abs(pair[1].shortest_edge - item.shortest_edge))
        return kept

    def match(self, item: ReducedStructure) -> tuple[str | None, int]:
        """Id of the first training structure that matches ``item``, and the fits it took.

        Parameters
        ----------
        item
            A reduced generated structure.

        Returns
        -------
        tuple
            ``(id or None, number of StructureMatcher fits)``.
        """
        n_fits = 0
        for sid, ref in self.candidates(item):
            n_fits += 1
            if _fit(item, ref, self.matcher):
                return sid, n_fits
        return None, n_fits


_REFERENCE_CACHE: list[tuple[str, NoveltyReference]] = []
"""The last two references built inside :func:`sun_flags`, keyed by content and matcher."""


def _content_key(structures: Sequence[Structure], matcher: StructureMatcher) -> str:
    """Digest of the structures' species, lattices and coordinates and of the matcher settings."""
    digest = hashlib.sha256(json.dumps(matcher_settings(matcher), sort_keys=True).encode())
    for structure in structures:
        if isinstance(structure, Structure):
            digest.update(np.asarray(structure.atomic_numbers, dtype=np.int64).tobytes())
            digest.update(np.ascontiguousarray(structure.lattice.matrix, dtype=float).tobytes())
            digest.update(np.ascontiguousarray(structure.frac_coords, dtype=float).tobytes())
        else:
            digest.update(f"<{type(structure).__name__}>".encode())
    return digest.hexdigest()


def _novelty_reference(
    train: Sequence[Structure] | NoveltyReference, matcher: StructureMatcher | None
) -> NoveltyReference:
    """Return a NoveltyReference, reusing one built from identical structures and matcher."""
    if isinstance(train, NoveltyReference):
        return train
    matcher = matcher or StructureMatcher()
    key = _content_key(train, matcher)
    for cached_key, reference in _REFERENCE_CACHE:
        if cached_key == key:
            return reference
    reference = NoveltyReference(train, matcher=matcher)
    _REFERENCE_CACHE.append((key, reference))
    del _REFERENCE_CACHE[:-2]
    return reference


def sun_flags(
    structures: Sequence[Structure],
    e_above_hull_eV: Sequence[float | None],
    train_structures: Sequence[Structure] | NoveltyReference,
    *,
    stability_threshold_eV: float = STABILITY_THRESHOLD_EV,
    matcher: StructureMatcher | None = None,
    ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Stable / unique / novel flags of each generated structure.

    Parameters
    ----------
    structures
        Generated structures (MatterGen evaluates the relaxed ones).
    e_above_hull_eV
        Energy above the reference hull of each (eV/atom), ``None`` when unknown.
    train_structures
        The training split, or a prebuilt :class:`NoveltyReference` (faster when several
        models are compared against the same split). A list is reduced once and kept for the
        next calls with identical structures (species, lattice and coordinates; the last two
        such references are kept).
    stability_threshold_eV
        ``stable`` means ``E_hull < stability_threshold_eV``.
    matcher
        StructureMatcher for uniqueness and novelty (default: pymatgen defaults). Ignored for
        novelty when ``train_structures`` is a NoveltyReference (its own matcher is used).
    ids
        Structure ids for the output and error messages (default: the index).

    Returns
    -------
    list of dict
        Per structure: ``id``, ``e_above_hull_eV``, ``stable``, ``stable_strict``, ``unique``,
        ``duplicate_of`` (id of the earlier match or ``None``), ``novel``, ``novel_match``
        (matching training id or ``None``), ``sun``, ``sun_strict``, ``n_fits`` (matcher calls
        spent), ``error`` (``None`` or the problem) and ``thresholds`` (the definition).
        A structure that cannot be compared is neither unique nor novel, and ``error`` says why;
        the rest of the batch goes on.
    """
    n = len(structures)
    if len(e_above_hull_eV) != n:
        raise ValueError(f"{n} structures but {len(e_above_hull_eV)} E_hull values")
    names = [str(i) for i in ids] if ids is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} ids for {n} structures")
    reference = _novelty_reference(train_structures, matcher)
    matcher = matcher or reference.matcher
    same_matcher = matcher_settings(matcher) == matcher_settings(reference.matcher)
    thresholds = {
        "stable": f"E_hull < {stability_threshold_eV} eV/atom",
        "stable_strict": f"E_hull <= 0 eV/atom (tolerance {STRICT_TOLERANCE_EV})",
        "stability_threshold_eV": stability_threshold_eV,
        "strict_tolerance_eV": STRICT_TOLERANCE_EV,
        "unique": "does not match an earlier structure of the batch",
        "novel": f"does not match any of {reference.n_structures} training structures",
        "matcher": matcher_settings(matcher),
        "novelty_matcher": matcher_settings(reference.matcher),
        "definition": "MatterGen (Zeni et al., Nature 2025) S.U.N.",
    }
    flags: list[dict[str, Any]] = []
    reduced: list[ReducedStructure | None] = []
    for name, structure, e_hull in zip(names, structures, e_above_hull_eV, strict=True):
        errors: list[str] = []
        value = None if e_hull is None else float(e_hull)
        if value is not None and not math.isfinite(value):
            value = None
        if value is None:
            errors.append(f"{name}: no finite energy above hull ({e_hull!r})")
        item = None
        try:
            if not isinstance(structure, Structure):
                raise TypeError(f"not a Structure ({type(structure).__name__})")
            item = reduce_for_matching(structure, matcher)
        except Exception as exc:
            errors.append(f"{name}: cannot be matched ({type(exc).__name__}: {exc})")
        reduced.append(item)
        flags.append(
            {
                "id": name,
                "e_above_hull_eV": value,
                "stable": value is not None and value < stability_threshold_eV,
                "stable_strict": value is not None and value <= STRICT_TOLERANCE_EV,
                "unique": False,
                "duplicate_of": None,
                "novel": False,
                "novel_match": None,
                "n_fits": 0,
                "error": "; ".join(errors) or None,
                "thresholds": thresholds,
            }
        )

    for i, item in enumerate(reduced):
        if item is None:
            continue
        flag = flags[i]
        try:
            for j in range(i):
                earlier = reduced[j]
                if earlier is None or not _may_match(earlier, item, matcher):
                    continue
                flag["n_fits"] += 1
                if _fit(earlier, item, matcher):
                    flag["duplicate_of"] = names[j]
                    break
            flag["unique"] = flag["duplicate_of"] is None
            novel_item = (
                item if same_matcher else reduce_for_matching(structures[i], reference.matcher)
            )
            match, n_fits = reference.match(novel_item)
            flag["n_fits"] += n_fits
            flag["novel_match"] = match
            flag["novel"] = match is None
        except Exception as exc:
            flag["unique"] = flag["novel"] = False
            message = f"{names[i]}: matching failed ({type(exc).__name__}: {exc})"
            flag["error"] = f"{flag['error']}; {message}" if flag["error"] else message
    for flag in flags:
        flag["sun"] = bool(flag["stable"] and flag["unique"] and flag["novel"])
        flag["sun_strict"] = bool(flag["stable_strict"] and flag["unique"] and flag["novel"])
    return flags


def sun_rate(flags: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """S.U.N. rate of a batch, with the counts and the thresholds used.

    Parameters
    ----------
    flags
        Output of :func:`sun_flags`.

    Returns
    -------
    dict
        ``rate`` (``n_sun / n``; ``None`` for an empty batch), ``n``, ``n_sun``,
        ``rate_strict``/``n_sun_strict`` (E_hull <= 0), ``n_stable``, ``n_stable_strict``,
        ``n_unique``, ``n_novel``, ``n_errors`` and ``thresholds``.
    """
    n = len(flags)

    def count(key: str) -> int:
        return sum(1 for f in flags if f.get(key))

    n_sun, n_strict = count("sun"), count("sun_strict")
    thresholds = (
        dict(flags[0]["thresholds"])
        if flags
        else {
            "stability_threshold_eV": STABILITY_THRESHOLD_EV,
            "strict_tolerance_eV": STRICT_TOLERANCE_EV,
        }
    )
    return {
        "rate": n_sun / n if n else None,
        "n": n,
        "n_sun": n_sun,
        "rate_strict": n_strict / n if n else None,
        "n_sun_strict": n_strict,
        "n_stable": count("stable"),
        "n_stable_strict": count("stable_strict"),
        "n_unique": count("unique"),
        "n_novel": count("novel"),
        "n_errors": count("error"),
        "thresholds": thresholds,
    }
