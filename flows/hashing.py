"""Content hashes that key the store: the one place a structure or a settings dict is hashed.

A *structure hash* identifies one concrete structure (the same lattice, the same atoms at the same
fractional positions, in any site order). It is not a symmetry-aware fingerprint: a rotated or
shifted copy of a crystal has a different hash. That is what the store needs: a rerun of a flow on
the same samples gives the same hashes, so finished relaxations are found and skipped.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from pymatgen.core import Structure

LATTICE_DECIMALS = 4
"""Lattice matrix entries (Å) are rounded to this many decimals before hashing."""

FRAC_DECIMALS = 4
"""Fractional coordinates are wrapped to [0, 1) and rounded to this many decimals."""


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` to canonical JSON (sorted keys, no spaces).

    Parameters
    ----------
    obj
        A JSON-serialisable object; unknown types are written with ``str``.

    Returns
    -------
    str
        Equal objects give equal text.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def dict_hash(obj: Any) -> str:
    """Return the sha256 hex digest of the canonical JSON of ``obj``.

    This is the same definition as ``relax.base.settings_hash``, so a relaxer's
    ``settings_hash`` and ``dict_hash(relaxer.settings())`` agree.

    Parameters
    ----------
    obj
        A JSON-serialisable object.

    Returns
    -------
    str
        64 hex characters.
    """
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def structure_hash(structure: Structure) -> str:
    """Return a canonical sha256 of a structure (independent of site order).

    The hashed content is the lattice matrix rounded to :data:`LATTICE_DECIMALS` and the sorted
    list of ``(species, frac coords)`` with coordinates wrapped to [0, 1) and rounded to
    :data:`FRAC_DECIMALS` (a coordinate that rounds to 1.0 becomes 0.0).

    Parameters
    ----------
    structure
        An ordered or disordered pymatgen structure.

    Returns
    -------
    str
        64 hex characters.

    Raises
    ------
    ValueError
        If the lattice or the coordinates are not finite.
    """
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float).reshape(-1, 3)
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(frac))):
        raise ValueError(f"cannot hash structure {structure.formula!r}: non-finite lattice/coords")
    lattice = np.round(matrix, LATTICE_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    wrapped = np.round(np.mod(frac, 1.0), FRAC_DECIMALS)
    wrapped[wrapped >= 1.0] = 0.0
    wrapped = wrapped + 0.0
    sites = sorted(
        (str(site.species), *(f"{x:.{FRAC_DECIMALS}f}" for x in coords))
        for site, coords in zip(structure, wrapped, strict=True)
    )
    payload = {
        "lattice": [[f"{x:.{LATTICE_DECIMALS}f}" for x in row] for row in lattice],
        "sites": sites,
    }
    return dict_hash(payload)
