"""Crystal tensors: the one place where pymatgen structures become PyG batches and back.

A crystal inside :mod:`generators` is a :class:`torch_geometric.data.Data` with the fields
documented in ``docs/architecture.md`` (``frac_coords``, ``atom_types``, ``lattice``,
``num_atoms``, ``material_id``); a batch of crystals is a :class:`torch_geometric.data.Batch`.
Lattice matrices hold the lattice vectors as rows, in Å, as in pymatgen.

The lattice helpers follow pymatgen's ``Lattice.from_parameters`` convention (``vesta=False``),
so that ``lattice_from_params(*lattice_to_params(L))`` gives the canonical orientation that the
dataset preprocessing uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pymatgen.core import Lattice, Structure
from torch import Tensor
from torch_geometric.data import Batch, Data

MAX_ATOMIC_NUMBER = 100
"""Atom types are atomic numbers 1..MAX_ATOMIC_NUMBER (the papers' 100-way type heads)."""


def structure_to_data(structure: Structure, material_id: str | None = None) -> Data:
    """Convert one pymatgen structure into a crystal ``Data`` object.

    Parameters
    ----------
    structure
        An ordered structure (every site one element).
    material_id
        Identifier kept with the crystal through batching and sampling.

    Returns
    -------
    Data
        With ``frac_coords`` [N, 3] wrapped to [0, 1), ``atom_types`` [N] (atomic numbers),
        ``lattice`` [1, 3, 3], ``num_atoms`` [1] and ``material_id``.

    Raises
    ------
    ValueError
        If the structure is disordered or has an element beyond ``MAX_ATOMIC_NUMBER``.
    """
    label = material_id or structure.formula
    if not structure.is_ordered:
        raise ValueError(f"{label}: disordered structures cannot be converted to crystal tensors")
    numbers = [site.specie.Z for site in structure]
    if max(numbers, default=0) > MAX_ATOMIC_NUMBER:
        raise ValueError(f"{label}: atomic number above {MAX_ATOMIC_NUMBER}")
    frac = np.mod(structure.frac_coords, 1.0)
    n = len(structure)
    return Data(
        frac_coords=torch.tensor(frac, dtype=torch.float32),
        atom_types=torch.tensor(numbers, dtype=torch.long),
        lattice=torch.tensor(structure.lattice.matrix, dtype=torch.float32).unsqueeze(0),
        num_atoms=torch.tensor([n], dtype=torch.long),
        num_nodes=n,
        material_id=label,
    )


def data_list_to_batch(data_list: Sequence[Data]) -> Batch:
    """Collate crystal ``Data`` objects into one ``Batch``.

    Raises
    ------
    ValueError
        If the list is empty.
    """
    if len(data_list) == 0:
        raise ValueError("cannot build a crystal batch from an empty list")
    return Batch.from_data_list(list(data_list))


def structures_to_batch(
    structures: Sequence[Structure], material_ids: Sequence[str] | None = None
) -> Batch:
    """Convert structures into a crystal batch (``structure_to_data`` + ``data_list_to_batch``)."""
    ids = list(material_ids) if material_ids is not None else [None] * len(structures)
    return data_list_to_batch(
        [structure_to_data(s, mid) for s, mid in zip(structures, ids, strict=True)]
    )


def batch_to_structures(batch: Batch) -> tuple[list[Structure | None], list[str | None]]:
    """Convert a crystal batch back into pymatgen structures, one per crystal.

    A crystal that cannot be built (non-finite values, a cell with volume < 0.1 Å^3, an atom
    type outside 1..100) gives ``None`` and a reason instead of raising, so that one bad sample
    does not stop a batch.

    Returns
    -------
    tuple[list[Structure | None], list[str | None]]
        The structures and, at the same index, ``None`` or the reason the crystal is missing.
    """
    frac = batch.frac_coords.detach().cpu().double().numpy()
    types = batch.atom_types.detach().cpu().numpy()
    lattices = batch.lattice.detach().cpu().double().numpy().reshape(-1, 3, 3)
    counts = batch.num_atoms.detach().cpu().numpy().reshape(-1)
    structures: list[Structure | None] = []
    errors: list[str | None] = []
    start = 0
    for b, n in enumerate(counts):
        stop = start + int(n)
        structure, error = _build_structure(lattices[b], types[start:stop], frac[start:stop])
        structures.append(structure)
        errors.append(error)
        start = stop
    return structures, errors


def _build_structure(
    lattice: np.ndarray, numbers: np.ndarray, frac: np.ndarray
) -> tuple[Structure | None, str | None]:
    if len(numbers) == 0:
        return None, "crystal has no atoms"
    if not (np.isfinite(lattice).all() and np.isfinite(frac).all()):
        return None, "non-finite lattice or coordinates"
    if numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER:
        return None, f"atom type outside 1..{MAX_ATOMIC_NUMBER}"
    volume = abs(float(np.linalg.det(lattice)))
    if volume < 0.1:
        return None, f"cell volume {volume:.3g} A^3 below 0.1"
    try:
        structure = Structure(Lattice(lattice), numbers.tolist(), np.mod(frac, 1.0))
    except Exception as exc:  # pymatgen raises several types on degenerate input
        return None, f"structure construction failed: {exc}"
    return structure, None


def lattice_from_params(lengths: Tensor, angles: Tensor) -> Tensor:
    """Lattice matrices from lengths (Å) and angles (degrees), pymatgen's orientation.

    Parameters
    ----------
    lengths, angles
        [B, 3] tensors (a, b, c) and (alpha, beta, gamma).

    Returns
    -------
    Tensor
        [B, 3, 3] lattice matrices, rows are the vectors a, b, c.
    """
    a, b, c = lengths.unbind(-1)
    alpha, beta, gamma = torch.deg2rad(angles).unbind(-1)
    cos_a, cos_b, cos_g = torch.cos(alpha), torch.cos(beta), torch.cos(gamma)
    sin_a, sin_b = torch.sin(alpha), torch.sin(beta)
    val = ((cos_a * cos_b - cos_g) / (sin_a * sin_b)).clamp(-1.0, 1.0)
    gamma_star = torch.arccos(val)
    zeros = torch.zeros_like(a)
    vec_a = torch.stack([a * sin_b, zeros, a * cos_b], dim=-1)
    vec_b = torch.stack(
        [-b * sin_a * torch.cos(gamma_star), b * sin_a * torch.sin(gamma_star), b * cos_a], dim=-1
    )
    vec_c = torch.stack([zeros, zeros, c], dim=-1)
    return torch.stack([vec_a, vec_b, vec_c], dim=-2)


def lattice_to_params(lattice: Tensor) -> tuple[Tensor, Tensor]:
    """Lengths (Å) and angles (degrees) of [B, 3, 3] lattice matrices."""
    lengths = lattice.norm(dim=-1)
    angles = []
    for i, j in ((1, 2), (0, 2), (0, 1)):
        cos = (lattice[:, i] * lattice[:, j]).sum(-1) / (lengths[:, i] * lengths[:, j])
        angles.append(torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))))
    return lengths, torch.stack(angles, dim=-1)


def per_atom_lattice(lattice: Tensor, num_atoms: Tensor) -> Tensor:
    """Repeat each crystal's [3, 3] lattice for each of its atoms: [N, 3, 3]."""
    return lattice.repeat_interleave(num_atoms, dim=0)


def frac_to_cart(frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor) -> Tensor:
    """Cartesian coordinates (Å) of fractional coordinates, batched: x = f · L."""
    return torch.einsum("ni,nij->nj", frac_coords, per_atom_lattice(lattice, num_atoms))


def cart_to_frac(cart_coords: Tensor, lattice: Tensor, num_atoms: Tensor) -> Tensor:
    """Fractional coordinates of Cartesian coordinates, batched: f = x · L⁻¹ (not wrapped)."""
    inverse = torch.linalg.inv(lattice)
    return torch.einsum("ni,nij->nj", cart_coords, per_atom_lattice(inverse, num_atoms))


def volume(lattice: Tensor) -> Tensor:
    """Absolute cell volumes (Å^3) of [B, 3, 3] lattices."""
    return torch.linalg.det(lattice).abs()


def scaled_lattice_features(lattice: Tensor, num_atoms: Tensor) -> Tensor:
    """CDVAE's lattice target: lengths / N^(1/3) and the three angles (degrees), [B, 6]."""
    lengths, angles = lattice_to_params(lattice)
    scale = num_atoms.to(lengths.dtype).pow(1.0 / 3.0).unsqueeze(-1)
    return torch.cat([lengths / scale, angles], dim=-1)


def lattice_from_scaled_features(features: Tensor, num_atoms: Tensor) -> Tensor:
    """Inverse of :func:`scaled_lattice_features`: [B, 6] -> [B, 3, 3]."""
    scale = num_atoms.to(features.dtype).pow(1.0 / 3.0).unsqueeze(-1)
    return lattice_from_params(features[:, :3] * scale, features[:, 3:])


def random_rotation(generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random proper rotation matrix [3, 3] (for invariance tests)."""
    q = torch.randn(4, generator=generator, dtype=torch.float64)
    q = q / q.norm()
    w, x, y, z = q.tolist()
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float32,
    )


def cubic_root_volume_per_atom(lattice: Tensor, num_atoms: Tensor) -> Tensor:
    """(V/N)^(1/3) per crystal, the length scale of StructureMatcher's RMS normalisation."""
    return (volume(lattice) / num_atoms.to(lattice.dtype)).pow(1.0 / 3.0)


__all__ = [
    "MAX_ATOMIC_NUMBER",
    "batch_to_structures",
    "cart_to_frac",
    "cubic_root_volume_per_atom",
    "data_list_to_batch",
    "frac_to_cart",
    "lattice_from_params",
    "lattice_from_scaled_features",
    "lattice_to_params",
    "per_atom_lattice",
    "random_rotation",
    "scaled_lattice_features",
    "structure_to_data",
    "structures_to_batch",
    "volume",
]
