"""Crystal construction checks (metrics.md §5.1): turn raw input into a structure or a reason.

Every metric in :mod:`analysis` first passes its inputs through :func:`check_structure`, so a
malformed CIF, a NaN coordinate, a zero-volume cell or an unknown element becomes one
:class:`CheckedStructure` with ``structure=None`` (or a flagged structure) and a reason, instead
of an exception that stops the whole batch.

Reasons (the first word is a stable code, the rest a human-readable detail):

- ``missing_structure`` — the sample has no structure (``None``; e.g. the sampler failed);
- ``malformed_input`` — a CIF/dict that cannot be parsed into a structure;
- ``construction_error`` — ``Lattice.from_parameters``/``Structure`` raised;
- ``nan_value`` — a NaN/inf lattice parameter or coordinate (DiffCSP's ``nan_value``);
- ``non_positive_lattice`` — a negative lattice length (CDVAE/DiffCSP);
- ``unrealistically_small_lattice`` — volume < 0.1 Å³ (CDVAE/DiffCSP);
- ``unknown_element`` — a species that is not a chemical element;
- ``empty_structure`` — a structure with no sites.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Element, Lattice, Structure

MIN_VOLUME = 0.1
"""Cells with volume below this (Å³) are not constructed (CDVAE ``get_structure``)."""


@dataclass
class CheckedStructure:
    """One input item after the construction checks.

    Parameters
    ----------
    id
        The item's id (sample id or material id).
    structure
        The pymatgen structure, or ``None`` when it could not be built.
    error
        ``None`` when constructed, else the reason (see the module docstring).
    atomic_numbers
        Atomic numbers when known, even for a crystal that failed construction (CDVAE still
        computes compositional validity for those).
    """

    id: str
    structure: Structure | None
    error: str | None = None
    atomic_numbers: tuple[int, ...] | None = None

    @property
    def constructed(self) -> bool:
        """Whether a usable structure exists."""
        return self.structure is not None and self.error is None


def _finite(values: Any) -> bool:
    return bool(np.all(np.isfinite(np.asarray(values, dtype=float))))


def structure_from_params(
    lengths: Sequence[float],
    angles: Sequence[float],
    atomic_numbers: Sequence[int],
    frac_coords: Sequence[Sequence[float]],
    item_id: str = "?",
) -> CheckedStructure:
    """Build a crystal from lattice parameters as CDVAE/DiffCSP do (metrics.md §5.1).

    Parameters
    ----------
    lengths, angles
        Lattice lengths (Å) and angles (degrees).
    atomic_numbers
        Atomic number per site.
    frac_coords
        Fractional coordinates, shape ``[N, 3]``.
    item_id
        Id used in the error reason.

    Returns
    -------
    CheckedStructure
        Constructed, or with the reason it is not.
    """
    zs = tuple(int(z) for z in atomic_numbers)
    if not (_finite(lengths) and _finite(angles) and _finite(frac_coords)):
        return CheckedStructure(item_id, None, "nan_value: NaN/inf lattice or coordinate", zs)
    if min(float(x) for x in lengths) < 0:
        return CheckedStructure(item_id, None, f"non_positive_lattice: lengths {list(lengths)}", zs)
    bad = [z for z in zs if not 1 <= z <= 118]
    if bad:
        return CheckedStructure(item_id, None, f"unknown_element: atomic numbers {bad}", zs)
    try:
        lattice = Lattice.from_parameters(*[float(x) for x in lengths], *[float(x) for x in angles])
        structure = Structure(lattice, list(zs), np.asarray(frac_coords, dtype=float))
    except Exception as exc:
        return CheckedStructure(item_id, None, f"construction_error: {exc}", zs)
    return _check_built(structure, item_id, zs)


def _check_built(
    structure: Structure, item_id: str, zs: tuple[int, ...] | None = None
) -> CheckedStructure:
    """Apply the NaN / volume / element checks to an existing structure."""
    if len(structure) == 0:
        return CheckedStructure(item_id, None, "empty_structure: no sites", ())
    unknown = [str(sp) for sp in structure.species if not isinstance(sp, Element)]
    if unknown:
        return CheckedStructure(item_id, None, f"unknown_element: {sorted(set(unknown))}", None)
    zs = zs if zs is not None else tuple(int(sp.Z) for sp in structure.species)
    if not (_finite(structure.lattice.matrix) and _finite(structure.frac_coords)):
        return CheckedStructure(item_id, None, "nan_value: NaN/inf lattice or coordinate", zs)
    volume = abs(float(np.linalg.det(structure.lattice.matrix)))
    if not volume >= MIN_VOLUME:
        return CheckedStructure(
            item_id,
            None,
            f"unrealistically_small_lattice: volume {volume:.3g} Å^3 < {MIN_VOLUME}",
            zs,
        )
    return CheckedStructure(item_id, structure, None, zs)


def check_structure(item: Any, item_id: str = "?") -> CheckedStructure:
    """Check one input item: a Structure, a ``Structure.as_dict()`` dict, a CIF string or None.

    Parameters
    ----------
    item
        The input. A :class:`CheckedStructure` is returned unchanged.
    item_id
        Id used in the result and in the reason.

    Returns
    -------
    CheckedStructure
        Never raises for bad input.
    """
    if isinstance(item, CheckedStructure):
        return item
    if item is None:
        return CheckedStructure(item_id, None, "missing_structure: no structure was produced")
    if isinstance(item, Structure):
        return _check_built(item, item_id)
    if isinstance(item, dict):
        try:
            structure = Structure.from_dict(item)
        except Exception as exc:
            return CheckedStructure(item_id, None, f"{_classify(exc)}: {exc}")
        return _check_built(structure, item_id)
    if isinstance(item, str):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = Structure.from_str(item, fmt="cif")
        except Exception as exc:
            return CheckedStructure(item_id, None, f"{_classify(exc)}: malformed CIF ({exc})")
        return _check_built(structure, item_id)
    return CheckedStructure(
        item_id, None, f"malformed_input: unsupported type {type(item).__name__}"
    )


def _classify(exc: Exception) -> str:
    return classify_reason(str(exc))


def classify_reason(text: str) -> str:
    """Category of a failure to build a structure from its description.

    Parameters
    ----------
    text
        The error message.

    Returns
    -------
    str
        ``"unknown_element"`` when the message is about an element, species or symbol, else
        ``"malformed_input"``.
    """
    lowered = text.lower()
    if "element" in lowered or "species" in lowered or "symbol" in lowered:
        return "unknown_element"
    return "malformed_input"


def check_structures(
    items: Sequence[Any], ids: Sequence[str] | None = None
) -> list[CheckedStructure]:
    """Check a batch of input items; bad items are reported, the rest go on.

    Parameters
    ----------
    items
        Structures, dicts, CIF strings, ``None`` or already checked items.
    ids
        One id per item; default ``"0"``, ``"1"``...

    Returns
    -------
    list[CheckedStructure]
        One per item, in order.
    """
    if ids is None:
        ids = [
            item.id if isinstance(item, CheckedStructure) else str(i)
            for i, item in enumerate(items)
        ]
    if len(ids) != len(items):
        raise ValueError(f"{len(ids)} ids for {len(items)} items")
    return [check_structure(item, str(item_id)) for item, item_id in zip(items, ids, strict=True)]


def construction_errors(checked: Sequence[CheckedStructure]) -> list[dict[str, str]]:
    """List ``{"id", "reason"}`` for every item that was not constructed.

    Parameters
    ----------
    checked
        Checked items.

    Returns
    -------
    list[dict[str, str]]
        The failures, in input order.
    """
    return [{"id": c.id, "reason": str(c.error)} for c in checked if not c.constructed]
