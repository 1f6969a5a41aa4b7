"""pw.x parameters derived per structure: SSSP pseudopotentials and cutoffs, k-points, spin.

Nothing here runs pw.x; :mod:`relax.espresso_profile` holds the machine side (binary, MPI) and
:mod:`relax.espresso_relaxer` runs it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from pymatgen.core import Structure

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PSEUDO_DIR = REPO_ROOT.parent / "shared" / "pseudos" / "SSSP_1.3.0_PBE_efficiency"
"""Default pseudopotential folder: ``shared/pseudos/SSSP_1.3.0_PBE_efficiency`` beside the repo."""

PSEUDO_DIR_ENV = "DFTLOOP_PSEUDO_DIR"

MAGNETIC_ELEMENTS = frozenset(
    {"V", "Cr", "Mn", "Fe", "Co", "Ni"}
    | {"Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb"}
    | {"U", "Np", "Pu"}
)
"""Elements that get a starting magnetisation (spin-polarised run) by default."""


def resolve_pseudo_dir(pseudo_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the pseudopotential folder: argument, else ``$DFTLOOP_PSEUDO_DIR``, else the default.

    Parameters
    ----------
    pseudo_dir
        An explicit folder (relative paths are taken from the current directory).

    Returns
    -------
    Path
        The absolute folder path (not checked for existence here).
    """
    if pseudo_dir is None:
        pseudo_dir = os.environ.get(PSEUDO_DIR_ENV) or DEFAULT_PSEUDO_DIR
    return Path(pseudo_dir).expanduser().resolve()


@dataclass(frozen=True)
class PseudoEntry:
    """One element of an SSSP-style library.

    Attributes
    ----------
    element, filename
        Element symbol and UPF file name.
    cutoff_wfc, cutoff_rho
        Recommended wavefunction and charge-density cutoffs (Ry).
    """

    element: str
    filename: str
    cutoff_wfc: float
    cutoff_rho: float

    @property
    def dual(self) -> float:
        """``cutoff_rho / cutoff_wfc``."""
        return self.cutoff_rho / self.cutoff_wfc


@dataclass(frozen=True)
class PseudoLibrary:
    """An SSSP-style pseudopotential folder: UPF files plus one JSON of cutoffs per element.

    Attributes
    ----------
    directory
        The folder.
    entries
        Element symbol -> :class:`PseudoEntry`, only for elements whose UPF file exists.
    name
        The JSON file's stem (e.g. ``SSSP_1.3.0_PBE_efficiency``).
    """

    directory: Path
    entries: dict[str, PseudoEntry]
    name: str

    @classmethod
    def load(cls, directory: str | os.PathLike[str] | None = None) -> PseudoLibrary:
        """Read the library in ``directory`` (see :func:`resolve_pseudo_dir`).

        Raises
        ------
        FileNotFoundError
            If the folder or its JSON file is missing.
        """
        folder = resolve_pseudo_dir(directory)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"pseudopotential folder {folder} not found (set {PSEUDO_DIR_ENV})"
            )
        candidates = sorted(folder.glob("SSSP*.json")) or sorted(folder.glob("*.json"))
        if not candidates:
            raise FileNotFoundError(f"no SSSP JSON (cutoffs per element) in {folder}")
        path = candidates[0]
        raw = json.loads(path.read_text())
        entries = {}
        for element, info in raw.items():
            if not (folder / info["filename"]).is_file():
                continue
            entries[element] = PseudoEntry(
                element=element,
                filename=info["filename"],
                cutoff_wfc=float(info["cutoff_wfc"]),
                cutoff_rho=float(info["cutoff_rho"]),
            )
        return cls(directory=folder, entries=entries, name=path.stem)

    def missing(self, structure: Structure) -> list[str]:
        """Return the elements of ``structure`` that have no pseudopotential here."""
        species = {el.symbol for el in structure.composition.elements}
        return sorted(species - set(self.entries))

    def pseudopotentials(self, structure: Structure) -> dict[str, str]:
        """Return ``{element: UPF filename}`` for the species of ``structure``."""
        return {
            el.symbol: self.entries[el.symbol].filename for el in structure.composition.elements
        }

    def cutoffs(self, structure: Structure) -> tuple[float, float]:
        """Return ``(ecutwfc, ecutrho)`` in Ry for ``structure``.

        ``ecutwfc`` is the largest recommended wavefunction cutoff over the species;
        ``ecutrho`` is the largest of (a) the species' recommended density cutoffs and
        (b) the largest dual (``cutoff_rho / cutoff_wfc``) times ``ecutwfc``, so that an
        ultrasoft/PAW species keeps its dual when a harder norm-conserving species raises
        ``ecutwfc``.
        """
        entries = [self.entries[el.symbol] for el in structure.composition.elements]
        ecutwfc = max(e.cutoff_wfc for e in entries)
        ecutrho = max(max(e.cutoff_rho for e in entries), max(e.dual for e in entries) * ecutwfc)
        return ecutwfc, ecutrho


def kpoint_grid(structure: Structure, kspacing: float) -> tuple[int, int, int]:
    """Monkhorst-Pack grid with at most ``kspacing`` (Å⁻¹, 2π included) between k-points.

    ``N_i = max(1, ceil(2π |b_i| / kspacing))`` with ``b_i`` the reciprocal vectors without 2π,
    i.e. ``|b_i|`` of pymatgen's ``lattice.reciprocal_lattice`` (which includes 2π) divided by
    ``kspacing``. This is the VASP/pymatgen convention; ASE's own ``kspacing=`` lacks the 2π.

    Parameters
    ----------
    structure
        The structure.
    kspacing
        Largest distance between k-points in Å⁻¹.

    Returns
    -------
    tuple of int
        The grid.
    """
    if kspacing <= 0:
        raise ValueError(f"kspacing must be positive, got {kspacing}")
    lengths = structure.lattice.reciprocal_lattice.abc  # 2π/a-type lengths, Å⁻¹
    return tuple(max(1, math.ceil(b / kspacing - 1e-9)) for b in lengths)  # type: ignore[return-value]


def starting_magnetisation(
    structure: Structure, magnetic_elements: frozenset[str], value: float
) -> list[float] | None:
    """Per-site starting magnetisation (fraction of valence charge), or ``None`` if non-magnetic.

    Parameters
    ----------
    structure
        The structure.
    magnetic_elements
        Elements that start magnetised.
    value
        pw.x ``starting_magnetization`` for those elements (between -1 and 1).

    Returns
    -------
    list of float or None
        ``None`` when no site is magnetic (a spin-unpolarised run).
    """
    moments = [value if site.specie.symbol in magnetic_elements else 0.0 for site in structure]
    return moments if any(moments) else None
