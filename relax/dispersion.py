"""DFT-D3(BJ) for the force-field stage, through simple-DFT-D3 (the ``dftd3`` package).

CHGNet is fitted to PBE(+U) energies without a dispersion correction; the DFT stage adds
Grimme's D3 with Becke-Johnson damping (pw.x ``vdw_corr='dft-d3'``, VASP ``IVDW = 12``). The
force-field stage adds the same correction -- PBE parameters, two-body only
(:data:`relax.protocol.D3BJ_PBE`) -- so that both stages relax towards the same kind of minimum.

simple-DFT-D3 is the D3 reference implementation of Grimme's group, maintained, installed from
PyPI as a wheel with its compiled library (no network at run time), and ships an ASE calculator
(:func:`d3_calculator`) for ``SumCalculator``. :func:`d3_terms` gives energy, forces and stress
of one structure for the batched relaxation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from relax.protocol import D3BJ_PBE


def _require_dftd3() -> None:
    try:
        import dftd3.ase  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise ImportError(
            "dispersion='d3bj' needs the 'dftd3' package (simple-DFT-D3): pip install dftd3"
        ) from exc


def d3_calculator() -> object:
    """Return the ASE calculator of D3(BJ) with the PBE parameters, two-body only.

    Returns
    -------
    dftd3.ase.DFTD3
        Energy (eV), forces (eV/Å) and stress (eV/Å³, ASE convention).
    """
    _require_dftd3()
    from dftd3.ase import DFTD3

    return DFTD3(damping="d3bj", params_tweaks=dict(D3BJ_PBE))


@dataclass
class D3Terms:
    """The D3 contribution of one structure.

    Attributes
    ----------
    energy
        eV.
    forces
        eV/Å, ``(n_atoms, 3)``.
    stress
        eV/Å³, 3x3, ASE sign convention.
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray


def d3_terms(numbers: Sequence[int], positions: np.ndarray, cell: np.ndarray) -> D3Terms:
    """Return the D3(BJ) energy, forces and stress of one periodic structure.

    Parameters
    ----------
    numbers
        Atomic numbers.
    positions
        Cartesian positions, Å.
    cell
        Lattice vectors as rows, Å.

    Returns
    -------
    D3Terms
        The correction to add to the force field's energy, forces and stress.
    """
    from ase import Atoms

    atoms = Atoms(numbers=list(numbers), positions=positions, cell=cell, pbc=True)
    atoms.calc = d3_calculator()
    return D3Terms(
        energy=float(atoms.get_potential_energy()),
        forces=np.asarray(atoms.get_forces(), float),
        stress=np.asarray(atoms.get_stress(voigt=False), float),
    )
