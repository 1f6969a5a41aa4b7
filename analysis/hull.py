"""Energy above the convex hull against a reference hull computed with the same method.

A hull is only meaningful when the reference energies and the energy of the structure under
test come from the same method (the same force field, or the same DFT settings). The usual
reference here is the dataset's structures relaxed with the relaxer that relaxed the generated
ones (issue 8); Materials Project entries are a valid reference only for MP-compatible DFT
energies.

Definitions
-----------
``reference_entries``
    One :class:`~pymatgen.entries.computed_entries.ComputedStructureEntry` per reference
    structure, total energy ``energy_per_atom * n_sites`` (eV), no energy corrections.
``build_hull``
    :class:`~pymatgen.analysis.phase_diagram.PhaseDiagram` of the entries; every element that
    occurs must have an elemental reference entry.
``energy_above_hull``
    ``E_hull = E_per_atom - E_hull_per_atom(composition)`` (eV/atom), the distance to the
    lower convex envelope at that composition; **negative** when the structure lies below the
    reference hull (it would be a new ground state). For a single-element system (carbon) this
    is ``E_per_atom - min(E_ref_per_atom)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry

log = logging.getLogger(__name__)


def reference_entries(
    structures: Sequence[Structure],
    energies_per_atom_eV: Sequence[float | None],
    *,
    ids: Sequence[str] | None = None,
    on_error: Literal["skip", "raise"] = "skip",
) -> list[ComputedStructureEntry]:
    """Build hull reference entries from structures and their energies per atom.

    Parameters
    ----------
    structures
        Reference structures (e.g. dataset structures relaxed with the same relaxer).
    energies_per_atom_eV
        Their energies per atom (eV), from the same method as the structures to be tested.
    ids
        Entry ids (default ``"ref-<index>"``), used in error messages and as ``entry_id``.
    on_error
        ``"skip"`` (default): a reference without a finite energy, or that is not a Structure,
        is left out with a logged warning naming it; ``"raise"``: raise ``ValueError``.

    Returns
    -------
    list of ComputedStructureEntry
        One entry per usable reference, in input order.

    Raises
    ------
    ValueError
        Lengths differ, or a bad reference with ``on_error="raise"``.
    """
    if len(structures) != len(energies_per_atom_eV):
        raise ValueError(
            f"{len(structures)} structures but {len(energies_per_atom_eV)} energies per atom"
        )
    names = (
        [str(i) for i in ids] if ids is not None else [f"ref-{i}" for i in range(len(structures))]
    )
    if len(names) != len(structures):
        raise ValueError(f"{len(names)} ids for {len(structures)} structures")
    entries: list[ComputedStructureEntry] = []
    for name, structure, energy in zip(names, structures, energies_per_atom_eV, strict=True):
        problem = None
        if not isinstance(structure, Structure):
            problem = f"not a Structure ({type(structure).__name__})"
        elif energy is None or not math.isfinite(float(energy)):
            problem = f"energy per atom is not a finite number ({energy!r})"
        if problem:
            message = f"reference {name}: {problem}"
            if on_error == "raise":
                raise ValueError(message)
            log.warning("%s; left out of the hull", message)
            continue
        entries.append(
            ComputedStructureEntry(structure, float(energy) * len(structure), entry_id=name)
        )
    return entries


def build_hull(entries: Sequence[PDEntry | ComputedStructureEntry]) -> PhaseDiagram:
    """Build the convex hull (phase diagram) of reference entries.

    Parameters
    ----------
    entries
        Reference entries (all from the same method).

    Returns
    -------
    PhaseDiagram
        The hull over every element that occurs in the entries.

    Raises
    ------
    ValueError
        No entries, or an element that occurs in some entry has no elemental entry (the message
        names the element(s) and an entry that contains them).
    """
    entries = list(entries)
    if not entries:
        raise ValueError("build_hull: no reference entries")
    elements = sorted({el for e in entries for el in e.composition.elements})
    terminal = {e.composition.elements[0] for e in entries if len(e.composition.elements) == 1}
    missing = [el for el in elements if el not in terminal]
    if missing:
        example = next(e for e in entries if any(el in e.composition.elements for el in missing))
        raise ValueError(
            "build_hull: no elemental reference for "
            + ", ".join(str(el) for el in missing)
            + f" (it occurs e.g. in {example.composition.reduced_formula}, entry "
            f"{getattr(example, 'entry_id', None)!r}); add a relaxed elemental structure of "
            "each element computed with the same method"
        )
    return PhaseDiagram(entries)


def energy_above_hull(
    structure_or_composition: Structure | Composition | str,
    energy_per_atom_eV: float,
    hull: PhaseDiagram,
) -> float:
    """Energy above the reference hull, eV/atom (negative below the hull).

    Parameters
    ----------
    structure_or_composition
        The structure, its composition, or a formula.
    energy_per_atom_eV
        Its energy per atom (eV), from the same method as the hull's entries.
    hull
        The reference hull from :func:`build_hull`.

    Returns
    -------
    float
        ``E_per_atom - E_hull(composition)`` in eV/atom.

    Raises
    ------
    ValueError
        Non-finite energy, or a composition with an element outside the hull's chemical system
        (the message names the formula and the elements).
    """
    if isinstance(structure_or_composition, Structure):
        composition = structure_or_composition.composition
    else:
        composition = Composition(structure_or_composition)
    formula = composition.reduced_formula
    if energy_per_atom_eV is None or not math.isfinite(float(energy_per_atom_eV)):
        raise ValueError(f"{formula}: energy per atom is not finite ({energy_per_atom_eV!r})")
    outside = sorted(str(el) for el in composition.elements if el not in hull.elements)
    if outside:
        system = "-".join(sorted(str(el) for el in hull.elements))
        raise ValueError(
            f"{formula}: element(s) {', '.join(outside)} outside the hull's chemical system "
            f"{system}"
        )
    entry = PDEntry(composition, float(energy_per_atom_eV) * composition.num_atoms)
    _, e_above = hull.get_decomp_and_e_above_hull(entry, allow_negative=True)
    return float(e_above)
