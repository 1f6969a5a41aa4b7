"""CHGNet crystal graphs rebuilt cheaply during a relaxation (Verlet-skin neighbour lists).

CHGNet's own ``CrystalGraphConverter`` runs a periodic neighbour search (6 Å) and then builds the
bond graph (pairs of bonds shorter than 3 Å at the same atom) with a Python loop over every bond,
on every call. During a relaxation the atoms move little between steps, so
:class:`GraphCache` keeps, per structure, the candidate pairs within ``cutoff + skin`` of the last
neighbour search and, at each step, only recomputes their distances and filters them with numpy.
It searches again when atoms or the cell have moved enough that a pair outside the candidate
list could have come within the cutoff (the usual Verlet criterion, with the cell strain bound).

The graph has the same edges and angles as CHGNet's converter gives (same cutoffs, same
``<=``/``<`` tests); only the order of edges and angles differs (here sorted by centre atom,
neighbour and image), which changes float32 sums by round-off only. With or without reuse the
graph of a geometry is identical, because the candidates are filtered and sorted the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pymatgen.core import Lattice, Structure

if TYPE_CHECKING:
    from chgnet.graph import CrystalGraph

DEFAULT_SKIN = 1.0
"""Verlet skin in Å added to the 6 Å atom-graph cutoff of the candidate lists."""


class IsolatedAtomError(ValueError):
    """A structure has an atom without any neighbour within the atom-graph cutoff."""


@dataclass
class _Candidates:
    """Pairs within ``cutoff + skin`` of one structure at the geometry of the last search."""

    center: np.ndarray  # (E,) int
    neighbor: np.ndarray  # (E,) int
    image: np.ndarray  # (E, 3) float (integer values)
    reverse: np.ndarray  # (E,) index of the pair (neighbor, center, -image)
    frac: np.ndarray  # (n, 3) fractional coordinates at the search
    cell: np.ndarray  # (3, 3) cell at the search


class GraphCache:
    """Build CHGNet crystal graphs, reusing each structure's neighbour candidates between calls.

    Parameters
    ----------
    atomic_numbers
        Atomic numbers of each structure (the key of a structure is its index here).
    atom_cutoff, bond_cutoff
        CHGNet's atom-graph and bond-graph cutoffs, Å (``model.graph_converter`` values).
    skin
        Verlet skin, Å; ``0`` searches again on every call.

    Attributes
    ----------
    n_searches
        Neighbour searches done so far (one per structure at least).
    n_builds
        Graphs built so far.
    """

    def __init__(
        self,
        atomic_numbers: Sequence[Sequence[int]],
        *,
        atom_cutoff: float = 6.0,
        bond_cutoff: float = 3.0,
        skin: float = DEFAULT_SKIN,
    ) -> None:
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.atomic_numbers = [np.asarray(z, dtype=np.int32) for z in atomic_numbers]
        self.atom_cutoff = float(atom_cutoff)
        self.bond_cutoff = float(bond_cutoff)
        self.skin = float(skin)
        self._candidates: dict[int, _Candidates] = {}
        self.n_searches = 0
        self.n_builds = 0

    def graph(
        self, index: int, positions: np.ndarray, cell: np.ndarray, graph_id: str | None = None
    ) -> CrystalGraph:
        """Return the CHGNet graph of structure ``index`` at Cartesian ``positions`` in ``cell``.

        Parameters
        ----------
        index
            Which structure (position in ``atomic_numbers``).
        positions
            Cartesian positions, Å, shape ``(n, 3)`` (need not be wrapped into the cell).
        cell
            Lattice vectors as rows, Å.
        graph_id
            Id stored in the graph (error messages).

        Returns
        -------
        CrystalGraph
            Ready for ``BatchedGraph.from_graphs``.

        Raises
        ------
        IsolatedAtomError
            If an atom has no neighbour within the atom-graph cutoff (CHGNet's converter refuses
            such structures too).
        """
        cell = np.asarray(cell, dtype=float)
        frac = np.asarray(positions, dtype=float) @ np.linalg.inv(cell)
        cand = self._candidates.get(index)
        if cand is None or self._moved_too_far(cand, frac, cell):
            cand = self._search(index, frac, cell)
        self.n_builds += 1
        return self._build(index, cand, frac, cell, graph_id)

    # -- neighbour candidates ------------------------------------------------------------------
    def _moved_too_far(self, cand: _Candidates, frac: np.ndarray, cell: np.ndarray) -> bool:
        """Return whether a pair outside the candidates could now be within the cutoff.

        A pair vector is ``(f_j + n - f_i) @ L``. Its length changes by at most
        ``|Δf_i @ L'| + |Δf_j @ L'| + |v| ||L^-1 (L' - L)||_2``, so the candidates stay complete
        while ``2 max_i |Δf_i @ L'| + (cutoff + skin) ε < skin``.
        """
        if self.skin == 0.0 or frac.shape != cand.frac.shape:
            return True
        disp = np.linalg.norm((frac - cand.frac) @ cell, axis=1).max(initial=0.0)
        # row-vector convention: v' = s @ L' = v @ L^-1 L', so v' - v = v @ L^-1 (L' - L) (+ moves)
        strain = np.linalg.norm(np.linalg.solve(cand.cell, cell - cand.cell), ord=2)
        return 2.0 * disp + (self.atom_cutoff + self.skin) * strain >= self.skin

    def _search(self, index: int, frac: np.ndarray, cell: np.ndarray) -> _Candidates:
        z = self.atomic_numbers[index]
        structure = Structure(Lattice(cell), z.tolist(), frac, coords_are_cartesian=False)
        center, neighbor, image, _ = structure.get_neighbor_list(
            r=self.atom_cutoff + self.skin, numerical_tol=1e-8, exclude_self=True
        )
        image = np.rint(image).astype(np.int64)
        keep = ~((center == neighbor) & np.all(image == 0, axis=1))
        center, neighbor, image = center[keep], neighbor[keep], image[keep]
        order = np.lexsort((image[:, 2], image[:, 1], image[:, 0], neighbor, center))
        center, neighbor, image = center[order], neighbor[order], image[order]
        keys = _pair_keys(center, neighbor, image, len(z))
        reverse_keys = _pair_keys(neighbor, center, -image, len(z))
        reverse = np.minimum(np.searchsorted(keys, reverse_keys), max(len(keys) - 1, 0))
        if len(keys) and np.any(keys[reverse] != reverse_keys):
            raise RuntimeError("neighbour list is not symmetric (a pair without its reverse)")
        cand = _Candidates(
            center=center.astype(np.int64),
            neighbor=neighbor.astype(np.int64),
            image=image.astype(float),
            reverse=reverse.astype(np.int64),
            frac=frac.copy(),
            cell=cell.copy(),
        )
        self._candidates[index] = cand
        self.n_searches += 1
        return cand

    # -- graph ---------------------------------------------------------------------------------
    def _build(
        self,
        index: int,
        cand: _Candidates,
        frac: np.ndarray,
        cell: np.ndarray,
        graph_id: str | None,
    ) -> CrystalGraph:
        import torch
        from chgnet.graph import CrystalGraph

        z = self.atomic_numbers[index]
        n_atoms = len(z)
        # one distance per unordered pair, so a pair and its reverse are kept or dropped together
        rep = np.minimum(np.arange(len(cand.center)), cand.reverse)
        vec = (frac[cand.neighbor] + cand.image - frac[cand.center]) @ cell
        dist = np.sqrt(np.einsum("ij,ij->i", vec, vec))[rep]
        kept = np.flatnonzero(dist <= self.atom_cutoff)
        center, neighbor = cand.center[kept], cand.neighbor[kept]
        isolated = n_atoms - len(np.unique(center))
        if isolated:
            raise IsolatedAtomError(
                f"Structure graph_id={graph_id!r} has {isolated} isolated atom(s) with "
                f"atom_graph_cutoff={self.atom_cutoff}"
            )
        new_index = np.full(len(cand.center), -1, dtype=np.int64)
        new_index[kept] = np.arange(len(kept))
        rep_new = new_index[rep[kept]]  # directed index of each kept edge's representative
        is_rep = rep_new == np.arange(len(kept))
        undirected_of_rep = np.cumsum(is_rep) - 1
        directed2undirected = undirected_of_rep[rep_new]
        undirected2directed = np.flatnonzero(is_rep)
        bond_graph = _angles(center, dist[kept], directed2undirected, self.bond_cutoff)

        def t(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

        return CrystalGraph(
            atomic_number=t(z, torch.int32),
            atom_frac_coord=torch.tensor(frac, dtype=torch.float32, requires_grad=True),
            atom_graph=t(np.stack([center, neighbor], axis=1), torch.int32),
            neighbor_image=t(cand.image[kept], torch.float32),
            directed2undirected=t(directed2undirected, torch.int32),
            undirected2directed=t(undirected2directed, torch.int32),
            bond_graph=t(bond_graph, torch.int32),
            lattice=torch.tensor(cell, dtype=torch.float32, requires_grad=True),
            graph_id=graph_id,
            atom_graph_cutoff=self.atom_cutoff,
            bond_graph_cutoff=self.bond_cutoff,
        )


def _pair_keys(center: np.ndarray, neighbor: np.ndarray, image: np.ndarray, n: int) -> np.ndarray:
    """Integer keys ordered like ``(center, neighbor, image)`` lexicographically."""
    span = 2 * 1024 + 1  # images up to ±1024 cells
    img = image.astype(np.int64) + 1024
    return (
        ((center.astype(np.int64) * n + neighbor.astype(np.int64)) * span + img[:, 0]) * span * span
        + img[:, 1] * span
        + img[:, 2]
    )


def _angles(
    center: np.ndarray, dist: np.ndarray, directed2undirected: np.ndarray, cutoff: float
) -> np.ndarray:
    """CHGNet's bond graph: ordered pairs of distinct bonds (< ``cutoff``) at the same atom.

    Rows are ``[atom, undirected(b1), b1, undirected(b2), b2]`` as in
    ``chgnet.graph.Graph.line_graph_adjacency_list``.
    """
    bonds = np.flatnonzero(dist < cutoff)  # sorted by centre atom (edges are)
    if len(bonds) == 0:
        return np.zeros((0, 5), dtype=np.int64)
    atoms = center[bonds]
    starts = np.flatnonzero(np.r_[True, atoms[1:] != atoms[:-1]])
    sizes = np.diff(np.r_[starts, len(bonds)])
    group = np.repeat(np.arange(len(starts)), sizes)  # group of each bond
    per_bond = sizes[group]  # partners (incl. itself) of each bond
    first = np.repeat(np.arange(len(bonds)), per_bond)
    offset = np.arange(per_bond.sum()) - np.repeat(np.cumsum(per_bond) - per_bond, per_bond)
    second = starts[group[first]] + offset
    keep = first != second
    b1, b2 = bonds[first[keep]], bonds[second[keep]]
    return np.stack(
        [center[b1], directed2undirected[b1], b1, directed2undirected[b2], b2], axis=1
    ).astype(np.int64)
