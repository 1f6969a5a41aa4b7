"""Energy or enthalpy per atom of a relaxation result, read defensively.

A structure relaxed under a pressure ``p`` is at a minimum of the enthalpy ``H = E + pV``, not of
the energy, so energy differences and hulls compare ``H`` per atom wherever ``p ≠ 0``; at
``p = 0`` the two are the same and the quantity is named ``E``.

Relaxation documents of different relaxers and versions carry the pressure and enthalpies in
different places or not at all; :func:`pressure_gpa` and :func:`energy_pair` read what is there
and fall back to ``p = 0`` and to ``E + pV`` computed from the structures' volumes.

Units: energies in eV, volumes in Å³, pressures in GPa; ``1 GPa · Å³ = 6.241509e-3 eV``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ase.units import GPa
from pymatgen.core import Structure

EV_PER_GPA_A3: float = GPa
"""``1 GPa · Å³`` in eV (6.241509e-3 eV; ASE's unit, the one the relaxers use)."""

PRESSURE_KEYS: tuple[str, ...] = ("pressure_gpa", "pressure_GPa", "pressure")
"""Keys that hold a pressure in GPa (pw.x's ``press`` is in kbar and is not read)."""

PRESSURE_PLACES: tuple[tuple[str, ...], ...] = (
    (),
    ("extra",),
    ("protocol",),
    ("settings",),
    ("settings", "protocol"),
    ("settings", "final"),
    ("settings", "final", "protocol"),
    ("settings", "pre"),
    ("settings", "pre", "protocol"),
)
"""Where :func:`pressure_gpa` looks for a pressure in a document, in this order."""

PRESSURE_TOLERANCE_GPA = 1e-9
"""Pressures smaller than this (GPa) count as zero."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def pressure_gpa(doc: Mapping[str, Any] | None) -> float:
    """Target pressure of a relaxation document in GPa (0 when it records none).

    Parameters
    ----------
    doc
        A relaxation document (``RelaxResult.model_dump()`` or a stored copy), or ``None``.

    Returns
    -------
    float
        The first pressure found at :data:`PRESSURE_PLACES` under :data:`PRESSURE_KEYS`.
    """
    if not doc:
        return 0.0
    for place in PRESSURE_PLACES:
        node: Any = doc
        for key in place:
            node = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping):
            continue
        for key in PRESSURE_KEYS:
            value = _number(node.get(key))
            if value is not None:
                return value
    return 0.0


def enthalpy_per_atom(energy_per_atom_eV: float, volume_per_atom_A3: float, p_gpa: float) -> float:
    """``H/N = E/N + p V/N`` in eV/atom.

    Parameters
    ----------
    energy_per_atom_eV
        Energy per atom, eV.
    volume_per_atom_A3
        Volume per atom, Å³.
    p_gpa
        Pressure, GPa.

    Returns
    -------
    float
        Enthalpy per atom, eV.
    """
    return float(energy_per_atom_eV) + float(p_gpa) * float(volume_per_atom_A3) * EV_PER_GPA_A3


def quantity_symbol(p_gpa: float) -> str:
    """``"H"`` where the pressure is not zero, else ``"E"`` (for column names: ΔH or ΔE)."""
    return "H" if abs(p_gpa) > PRESSURE_TOLERANCE_GPA else "E"


@dataclass(frozen=True)
class EnergyPair:
    """Initial and final energy (or enthalpy) per atom of one relaxation, same method.

    Attributes
    ----------
    initial_per_atom_eV, final_per_atom_eV
        ``E/N`` (``p = 0``) or ``H/N`` (``p ≠ 0``) of the structure as given and as relaxed;
        ``None`` when unknown.
    pressure_gpa
        The relaxation's target pressure.
    quantity
        ``"E"`` or ``"H"``.
    source
        ``"energy"`` (``p = 0``), ``"document"`` (enthalpies stored in the document) or
        ``"E + pV"`` (computed here from the energies and the structures' volumes).
    """

    initial_per_atom_eV: float | None
    final_per_atom_eV: float | None
    pressure_gpa: float
    quantity: str
    source: str


def energy_pair(doc: Mapping[str, Any] | None, initial: Structure | None) -> EnergyPair:
    """Initial and final ``E/N`` or ``H/N`` of a relaxation document.

    Parameters
    ----------
    doc
        A relaxation document; ``None`` gives an empty pair.
    initial
        The structure as given to the relaxer (its volume enters ``H`` of the initial energy
        when the document has no initial enthalpy).

    Returns
    -------
    EnergyPair
        At ``p = 0`` the document's ``initial_/final_energy_per_atom_eV``. At ``p ≠ 0`` its
        ``initial_/final_enthalpy_per_atom_eV`` when present, else ``E/N + p V/N`` with the
        initial structure's and the final structure's volumes (``None`` where a volume or an
        energy is missing).
    """
    if not doc:
        return EnergyPair(None, None, 0.0, "E", "energy")
    p = pressure_gpa(doc)
    e0 = _number(doc.get("initial_energy_per_atom_eV"))
    e1 = _number(doc.get("final_energy_per_atom_eV"))
    if quantity_symbol(p) == "E":
        return EnergyPair(e0, e1, p, "E", "energy")
    h0 = _number(doc.get("initial_enthalpy_per_atom_eV"))
    h1 = _number(doc.get("final_enthalpy_per_atom_eV"))
    if h0 is not None or h1 is not None:
        return EnergyPair(h0, h1, p, "H", "document")
    if e0 is not None and initial is not None and len(initial):
        h0 = enthalpy_per_atom(e0, initial.volume / len(initial), p)
    final = doc.get("final_structure")
    if e1 is not None and final:
        relaxed = Structure.from_dict(final) if isinstance(final, Mapping) else final
        h1 = enthalpy_per_atom(e1, relaxed.volume / len(relaxed), p)
    return EnergyPair(h0, h1, p, "H", "E + pV")
