"""Turn a CIF or POSCAR string into a preprocessed structure, the way the papers do.

CDVAE/DiffCSP preprocessing: parse the CIF, Niggli-reduce (``get_reduced_structure()``),
rebuild the lattice from its six parameters (``Lattice.from_parameters``, canonical
orientation), and wrap fractional coordinates to [0, 1). Problems (malformed text, NaN,
zero volume, unknown or partially occupied species) raise :class:`RowParseError` with a
reason that the loader records as a ``RowError``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pymatgen.core import Element, Lattice, Structure

TextFormat = Literal["cif", "poscar"]
MIN_VOLUME = 0.1  # Å^3, as the CDVAE crystal-construction check


@dataclass(frozen=True)
class PreprocessOptions:
    """Preprocessing switches; they are part of the cache key.

    Attributes
    ----------
    niggli
        Apply ``get_reduced_structure()`` (Niggli).
    canonical_lattice
        Rebuild the lattice with ``Lattice.from_parameters``.
    wrap
        Wrap fractional coordinates to [0, 1).
    """

    niggli: bool = True
    canonical_lattice: bool = True
    wrap: bool = True

    def key(self) -> str:
        """Return a short string that identifies these options (for cache keys)."""
        return f"niggli={self.niggli},canonical={self.canonical_lattice},wrap={self.wrap},v1"


class RowParseError(ValueError):
    """A row's structure text could not be turned into a valid structure."""


@dataclass(frozen=True)
class CompactStructure:
    """A structure as plain numbers (cheap to pickle between processes and to cache).

    Attributes
    ----------
    lattice
        3x3 lattice matrix, rows are vectors (Å).
    numbers
        Atomic numbers.
    frac_coords
        Fractional coordinates, one row per site.
    """

    lattice: list[list[float]]
    numbers: list[int]
    frac_coords: list[list[float]]

    def to_structure(self) -> Structure:
        """Build the pymatgen :class:`Structure`."""
        return Structure(
            Lattice(self.lattice), self.numbers, self.frac_coords, coords_are_cartesian=False
        )

    @classmethod
    def from_structure(cls, structure: Structure) -> CompactStructure:
        """Build from a pymatgen :class:`Structure`."""
        return cls(
            lattice=structure.lattice.matrix.tolist(),
            numbers=[int(site.specie.Z) for site in structure],
            frac_coords=structure.frac_coords.tolist(),
        )


def wrap_frac_coords(frac: np.ndarray) -> np.ndarray:
    """Wrap fractional coordinates to [0, 1) (values that round to 1.0 become 0.0).

    Parameters
    ----------
    frac
        Array of fractional coordinates.

    Returns
    -------
    numpy.ndarray
        Wrapped copy.
    """
    wrapped = frac - np.floor(frac)
    wrapped[wrapped >= 1.0] = 0.0
    return wrapped


def parse_structure_text(text: str, fmt: TextFormat) -> Structure:
    """Parse CIF or POSCAR text into a :class:`Structure`.

    Parameters
    ----------
    text
        The file content.
    fmt
        ``"cif"`` or ``"poscar"``.

    Returns
    -------
    Structure
        The structure as written (not yet preprocessed).

    Raises
    ------
    RowParseError
        If the text is empty or the parser fails.
    """
    if not isinstance(text, str) or not text.strip():
        raise RowParseError(f"empty {fmt} text")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = Structure.from_str(text, fmt=fmt)
        except Exception as exc:  # pymatgen raises many types for malformed input
            causes = [
                " ".join(str(w.message).split())
                for w in caught
                if "No structure parsed" in str(w.message)
            ]
            detail = f" ({causes[0]})" if causes else ""
            raise RowParseError(f"malformed {fmt}: {exc}{detail}") from None
    if len(structure) == 0:
        raise RowParseError(f"{fmt} has no atoms")
    return structure


def check_structure(structure: Structure) -> None:
    """Reject structures that no model can use.

    Parameters
    ----------
    structure
        A parsed structure.

    Raises
    ------
    RowParseError
        On NaN/inf lattice or coordinates, volume below ``MIN_VOLUME``, disordered sites,
        or a species that is not a known element.
    """
    if not structure.is_ordered:
        raise RowParseError("partially occupied (disordered) site")
    for site in structure:
        specie = site.specie
        if not isinstance(specie, Element):
            try:
                Element(specie.symbol)
            except (ValueError, AttributeError):
                raise RowParseError(f"unknown element {specie!s}") from None
    matrix = structure.lattice.matrix
    if not np.all(np.isfinite(matrix)) or not np.all(np.isfinite(structure.frac_coords)):
        raise RowParseError("NaN or infinite value in lattice or coordinates")
    volume = structure.lattice.volume
    if not math.isfinite(volume) or volume < MIN_VOLUME:
        raise RowParseError(f"zero or near-zero cell volume ({volume:.3g} Å^3)")


def preprocess_structure(structure: Structure, options: PreprocessOptions) -> Structure:
    """Niggli-reduce, rebuild the lattice from its parameters and wrap coordinates.

    Parameters
    ----------
    structure
        A checked structure.
    options
        Which steps to apply.

    Returns
    -------
    Structure
        A new structure with plain-element species.
    """
    check_structure(structure)
    if options.niggli:
        try:
            structure = structure.get_reduced_structure()
        except Exception as exc:
            raise RowParseError(f"Niggli reduction failed: {exc}") from None
    lattice = structure.lattice
    if options.canonical_lattice:
        lattice = Lattice.from_parameters(*lattice.parameters)
    frac = structure.frac_coords
    if options.wrap:
        frac = wrap_frac_coords(frac)
    numbers = [int(site.specie.Z) for site in structure]
    out = Structure(lattice, numbers, frac, coords_are_cartesian=False)
    check_structure(out)
    return out


def preprocess_text(text: str, fmt: TextFormat, options: PreprocessOptions) -> CompactStructure:
    """Parse and preprocess one structure text.

    Parameters
    ----------
    text
        CIF or POSCAR content.
    fmt
        Its format.
    options
        Preprocessing switches.

    Returns
    -------
    CompactStructure
        The preprocessed structure as plain numbers.
    """
    return CompactStructure.from_structure(
        preprocess_structure(parse_structure_text(text, fmt), options)
    )
