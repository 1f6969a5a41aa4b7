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


# ----------------------------------------------------------------------------- encoder graphs
CRYSTALNN_OPTIONS: dict[str, object] = {
    "distance_cutoffs": None,
    "x_diff_weight": -1,
    "porous_adjustment": False,
}
"""CDVAE's ``local_env.CrystalNN(distance_cutoffs=None, x_diff_weight=-1,
porous_adjustment=False)`` (``cdvae/common/data_utils.py``)."""

PARALLEL_GRAPHS = 200
"""Structures from which :func:`crystalnn_graphs` uses a process pool (when workers > 1)."""


class EncoderGraphError(ValueError):
    """pymatgen's CrystalNN failed on a structure."""


@dataclass(frozen=True)
class EncoderGraph:
    """Directed periodic edges j → i of one crystal, as the encoder consumes them.

    Edge e runs from site ``sources[e]`` in the image ``offsets[e]`` to site ``targets[e]`` in
    the home cell: its vector is x_j + n·L − x_i (``generators.graphs``' convention, and CDVAE's
    ``edge_index``/``to_jimages``).

    Attributes
    ----------
    sources, targets
        Site indices j and i.
    offsets
        Integer lattice translations n of the source, one triple per edge.
    """

    sources: list[int]
    targets: list[int]
    offsets: list[list[int]]

    def __len__(self) -> int:
        return len(self.sources)


def crystalnn_graph(structure: Structure, label: str | None = None) -> EncoderGraph:
    """The CrystalNN bonding graph of a structure, both directions of every bond.

    As CDVAE's preprocessing builds it: pymatgen's ``StructureGraph`` from CrystalNN with
    :data:`CRYSTALNN_OPTIONS` (which merges the neighbours each site finds into one set of
    bonds with their periodic images), then each bond u–v with image n as the two directed
    edges v(n) → u and u(−n) → v.

    Parameters
    ----------
    structure
        An ordered, preprocessed structure.
    label
        Name used in the error message (default: the formula).

    Returns
    -------
    EncoderGraph

    Raises
    ------
    EncoderGraphError
        If CrystalNN fails on the structure (naming it and pymatgen's message).
    """
    from pymatgen.analysis.graphs import StructureGraph
    from pymatgen.analysis.local_env import CrystalNN

    strategy = CrystalNN(**CRYSTALNN_OPTIONS)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            bonds = StructureGraph.from_local_env_strategy(structure, strategy)
        except Exception as exc:  # pymatgen raises many types on odd geometries
            name = label or structure.composition.reduced_formula
            raise EncoderGraphError(f"{name}: CrystalNN failed: {exc}") from None
    sources: list[int] = []
    targets: list[int] = []
    offsets: list[list[int]] = []
    for u, v, image in bonds.graph.edges(data="to_jimage"):
        n = [round(float(x)) for x in image]
        sources += [int(v), int(u)]
        targets += [int(u), int(v)]
        offsets += [n, [-x for x in n]]
    return EncoderGraph(sources, targets, offsets)


def _graph_task(item: tuple[Structure, str | None]) -> EncoderGraph | str:
    structure, label = item
    try:
        return crystalnn_graph(structure, label)
    except EncoderGraphError as exc:
        return str(exc)


def crystalnn_graphs(
    structures: list[Structure],
    labels: list[str | None] | None = None,
    workers: int = 1,
) -> list[EncoderGraph]:
    """:func:`crystalnn_graph` of many structures, in a process pool when there are many.

    Parameters
    ----------
    structures
        The structures.
    labels
        Names for error messages (default: formulas).
    workers
        Processes; a pool is used from :data:`PARALLEL_GRAPHS` structures on when > 1.

    Returns
    -------
    list[EncoderGraph]
        In the order of ``structures``.

    Raises
    ------
    EncoderGraphError
        For the first structure CrystalNN fails on.
    """
    items = list(zip(structures, labels or [None] * len(structures), strict=True))
    if workers > 1 and len(items) >= PARALLEL_GRAPHS:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork: the workers only run pymatgen/numpy, never torch
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        chunk = max(1, len(items) // (4 * workers))
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = list(pool.map(_graph_task, items, chunksize=chunk))
    else:
        results = [_graph_task(item) for item in items]
    for result in results:
        if isinstance(result, str):
            raise EncoderGraphError(result)
    return [r for r in results if isinstance(r, EncoderGraph)]
