"""Periodic DimeNet++: the CDVAE-family encoder, built from PyG's DimeNet++ blocks.

PyG's :class:`~torch_geometric.nn.models.DimeNetPlusPlus` builds a molecular radius graph and its
triplets with ``torch_cluster`` / ``torch_sparse``, which are not installed here. This module keeps
PyG's building blocks (``BesselBasisLayer``, the spherical basis functions of
``SphericalBasisLayer``, ``EmbeddingBlock``, ``InteractionPPBlock``, ``OutputPPBlock``) and feeds
them with

* periodic edges: CDVAE's precomputed CrystalNN bonding graph (``graph="crystalnn"``, the
  ``paper`` configs; :func:`generators.data.preprocessing.crystalnn_graph`, cached by
  :class:`generators.data.cache.EncoderGraphStore`), or the radius graph of
  :func:`generators.graphs.radius_graph_pbc` (7 Å) capped to the 20 nearest neighbours by
  :func:`generators.graphs.cap_neighbors`, which keeps exact ties with the 20th, and
* :func:`periodic_triplets`, a pure-torch triplet builder over periodic images: a triplet is
  k → j → i with (k, image) ≠ (i, image), so an atom does interact with its own periodic images.

The spherical basis is built by sympy, which takes 17–52 s for ``num_spherical`` 7 and
``num_radial`` 6. :func:`spherical_basis_functions` builds it once per process and per
(num_spherical, num_radial) and every :class:`PeriodicSphericalBasis` reuses it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.nn.models.dimenet import (
    BesselBasisLayer,
    EmbeddingBlock,
    Envelope,
    InteractionPPBlock,
    OutputPPBlock,
    SphericalBasisLayer,
)
from torch_geometric.utils import scatter

from generators.crystal import MAX_ATOMIC_NUMBER, frac_to_cart
from generators.graphs import PeriodicGraph, cap_neighbors, radius_graph_pbc

ENCODER_GRAPHS = ("radius", "crystalnn")
"""The encoder's graph (``model.encoder.graph``)."""


@dataclass
class Triplets:
    """Triplets k → j → i of a periodic graph (indices into atoms and edges).

    Attributes
    ----------
    idx_i, idx_j, idx_k
        [T] atom indices of the centre i, the middle atom j and the far atom k.
    idx_kj, idx_ji
        [T] edge indices of the edges k → j and j → i.
    """

    idx_i: Tensor
    idx_j: Tensor
    idx_k: Tensor
    idx_kj: Tensor
    idx_ji: Tensor


def periodic_triplets(edge_index: Tensor, cell_offsets: Tensor, num_nodes: int) -> Triplets:
    """All triplets k → j → i of a periodic graph, in plain torch.

    For every edge j → i, each edge k → j into its source j forms a triplet, except when k is
    the centre i itself *in the same periodic image* (k == i and the two image offsets cancel).
    A triplet whose k is another image of i is kept: in a crystal it is a different point.

    Parameters
    ----------
    edge_index
        [2, E] (source j, target i), the convention of :mod:`generators.graphs`.
    cell_offsets
        [E, 3] lattice translations of each edge's source relative to its target.
    num_nodes
        Number of atoms.

    Returns
    -------
    Triplets
    """
    source, target = edge_index
    device = source.device
    grouped = bool((target[1:] >= target[:-1]).all())  # radius graphs come grouped
    order = None if grouped else torch.argsort(target, stable=True)  # edges grouped by target
    counts = torch.bincount(target, minlength=num_nodes)
    first = torch.cumsum(counts, 0) - counts
    per_edge = counts.index_select(0, source)  # edges k -> j for each edge j -> i
    idx_ji = torch.repeat_interleave(torch.arange(len(source), device=device), per_edge)
    start = torch.cumsum(per_edge, 0) - per_edge
    rank = torch.arange(len(idx_ji), device=device) - start.index_select(0, idx_ji)
    idx_kj = first.index_select(0, source.index_select(0, idx_ji)) + rank
    if order is not None:
        idx_kj = order.index_select(0, idx_kj)
    # k == i in the same image: the offsets of k -> j and j -> i cancel (checked only where
    # k == i, a small part of the triplets)
    returning = (source.index_select(0, idx_kj) == target.index_select(0, idx_ji)).nonzero()
    returning = returning.view(-1)
    back = cell_offsets[idx_kj[returning]] + cell_offsets[idx_ji[returning]]
    keep = torch.ones(len(idx_ji), dtype=torch.bool, device=device)
    keep[returning[back.abs().sum(-1) < 0.5]] = False
    kept = keep.nonzero().view(-1)
    idx_kj, idx_ji = idx_kj.index_select(0, kept), idx_ji.index_select(0, kept)
    return Triplets(
        target.index_select(0, idx_ji),
        source.index_select(0, idx_ji),
        source.index_select(0, idx_kj),
        idx_kj,
        idx_ji,
    )


def triplet_angles(edge_vectors: Tensor, triplets: Triplets) -> Tensor:
    """Angle (radians) at j between j → i and j → k, as DimeNet++ defines it.

    With ``edge_vectors`` v_ji = x_j − x_i, DimeNet++'s vectors are x_i − x_j = −v_ji and
    x_j − x_k = −v_kj; the angle between them equals the angle between v_ji and v_kj.
    """
    v_ji = edge_vectors.index_select(0, triplets.idx_ji)
    v_kj = edge_vectors.index_select(0, triplets.idx_kj)
    cos_part = (v_ji * v_kj).sum(-1)
    sin_part = torch.linalg.cross(v_ji, v_kj).norm(dim=-1)
    return torch.atan2(sin_part, cos_part)


@functools.lru_cache(maxsize=4)
def spherical_basis_functions(
    num_spherical: int, num_radial: int
) -> tuple[tuple[Callable[[Tensor], Tensor], ...], tuple[Callable[[Tensor], Tensor], ...]]:
    """The sympy-built spherical-harmonic and spherical-Bessel functions, once per process.

    Returns
    -------
    tuple
        (``sph_funcs`` of length num_spherical, ``bessel_funcs`` of length
        num_spherical·num_radial), PyG's lambdified functions of ``SphericalBasisLayer``.
    """
    layer = SphericalBasisLayer(num_spherical, num_radial, cutoff=1.0, envelope_exponent=5)
    return tuple(layer.sph_funcs), tuple(layer.bessel_funcs)


class PeriodicSphericalBasis(nn.Module):
    """DimeNet's 2D spherical Fourier–Bessel basis with the process-wide cached functions.

    Same values as PyG's ``SphericalBasisLayer(num_spherical, num_radial, cutoff, exponent)``,
    without re-running sympy for each instance.
    """

    def __init__(
        self, num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int = 5
    ) -> None:
        super().__init__()
        self.num_spherical = num_spherical
        self.num_radial = num_radial
        self.cutoff = cutoff
        self.envelope = Envelope(envelope_exponent)
        self._sph, self._bessel = spherical_basis_functions(num_spherical, num_radial)

    def forward(self, dist: Tensor, angle: Tensor, idx_kj: Tensor) -> Tensor:
        """Basis values [T, num_spherical·num_radial] for the triplets' k → j distance."""
        scaled = dist / self.cutoff
        radial = torch.stack([f(scaled) for f in self._bessel], dim=1)
        radial = self.envelope(scaled).unsqueeze(-1) * radial
        angular = torch.stack([f(angle) for f in self._sph], dim=1)
        n, k = self.num_spherical, self.num_radial
        gathered = radial.index_select(0, idx_kj).view(-1, n, k)
        return (gathered * angular.view(-1, n, 1)).view(-1, n * k)


@dataclass
class PeriodicGeometry:
    """A periodic radius graph with its triplets, angles and basis inputs."""

    graph: PeriodicGraph
    triplets: Triplets
    angles: Tensor


def periodic_geometry(
    frac_coords: Tensor,
    lattice: Tensor,
    num_atoms: Tensor,
    cutoff: float,
    max_neighbors: int | None,
    edges: tuple[Tensor, Tensor] | None = None,
) -> PeriodicGeometry:
    """Periodic graph, triplets and angles of a batch.

    The radius graph (with images, tie-tolerant neighbour cap), or the given ``edges``
    (``edge_index`` [2, E] of (neighbour j, centre i) and integer ``cell_offsets`` [E, 3], e.g. a
    precomputed CrystalNN graph): their vectors x_j + n·L − x_i are computed here,
    differentiably in the coordinates and the lattice.
    """
    cart = frac_to_cart(frac_coords, lattice, num_atoms)
    if edges is None:
        graph = radius_graph_pbc(cart, lattice, num_atoms, cutoff, max_neighbors)
    else:
        graph = graph_from_edges(cart, lattice, num_atoms, *edges)
    triplets = periodic_triplets(graph.edge_index, graph.cell_offsets, len(frac_coords))
    return PeriodicGeometry(graph, triplets, triplet_angles(graph.edge_vectors, triplets))


def graph_from_edges(
    cart_coords: Tensor, lattice: Tensor, num_atoms: Tensor, edge_index: Tensor, offsets: Tensor
) -> PeriodicGraph:
    """A :class:`PeriodicGraph` of given periodic edges (vectors x_j + n·L − x_i)."""
    neighbour, centre = edge_index
    offsets = offsets.to(cart_coords.dtype)
    edge_lattice = lattice.repeat_interleave(num_atoms, 0).index_select(0, centre)
    vectors = (
        cart_coords.index_select(0, neighbour)
        + torch.einsum("ek,ekl->el", offsets, edge_lattice)
        - cart_coords.index_select(0, centre)
    )
    return PeriodicGraph(edge_index, offsets, vectors, vectors.norm(dim=-1))


class PeriodicDimeNetPP(nn.Module):
    """DimeNet++ on periodic crystal graphs with a per-crystal readout (CDVAE's encoder).

    Parameters
    ----------
    out_channels
        Size of the crystal embedding (CDVAE: latent_dim 256).
    hidden_channels, num_blocks, int_emb_size, basis_emb_size, out_emb_channels,
    num_spherical, num_radial, cutoff, max_neighbors, envelope_exponent, num_before_skip,
    num_after_skip, num_output_layers
        DimeNet++ hyperparameters (CDVAE: 128, 4, 64, 8, 256, 7, 6, 7.0 Å, 20, 5, 1, 2, 3).
    readout
        ``"mean"`` (CDVAE) or ``"sum"`` over the atoms of a crystal.
    graph
        ``"radius"``: the periodic radius graph (``cutoff``, ``max_neighbors``) built on the fly;
        ``"crystalnn"``: CDVAE's precomputed CrystalNN bonding graph, passed to
        :meth:`forward` as ``edges`` (``cutoff`` then only sets the bases' range).
    """

    def __init__(
        self,
        out_channels: int = 256,
        hidden_channels: int = 128,
        num_blocks: int = 4,
        int_emb_size: int = 64,
        basis_emb_size: int = 8,
        out_emb_channels: int = 256,
        num_spherical: int = 7,
        num_radial: int = 6,
        cutoff: float = 7.0,
        max_neighbors: int = 20,
        envelope_exponent: int = 5,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 3,
        readout: str = "mean",
        graph: str = "radius",
    ) -> None:
        super().__init__()
        if readout not in {"mean", "sum"}:
            raise ValueError(f"readout must be 'mean' or 'sum', not {readout!r}")
        if graph not in ENCODER_GRAPHS:
            raise ValueError(f"encoder graph must be one of {ENCODER_GRAPHS}, not {graph!r}")
        self.graph = graph
        self.cutoff = cutoff
        self.max_neighbors = max_neighbors
        self.readout = readout
        act = nn.functional.silu
        self.rbf = BesselBasisLayer(num_radial, cutoff, envelope_exponent)
        self.sbf = PeriodicSphericalBasis(num_spherical, num_radial, cutoff, envelope_exponent)
        self.emb = EmbeddingBlock(num_radial, hidden_channels, act)
        # PyG embeds Z < 95; the datasets here use atomic numbers up to 100.
        self.emb.emb = nn.Embedding(MAX_ATOMIC_NUMBER + 1, hidden_channels)
        nn.init.uniform_(self.emb.emb.weight, -math.sqrt(3), math.sqrt(3))
        self.output_blocks = nn.ModuleList(
            OutputPPBlock(
                num_radial,
                hidden_channels,
                out_emb_channels,
                out_channels,
                num_output_layers,
                act,
                output_initializer="zeros",
            )
            for _ in range(num_blocks + 1)
        )
        self.interaction_blocks = nn.ModuleList(
            InteractionPPBlock(
                hidden_channels,
                int_emb_size,
                basis_emb_size,
                num_spherical,
                num_radial,
                num_before_skip,
                num_after_skip,
                act,
            )
            for _ in range(num_blocks)
        )

    def atom_features(
        self,
        frac_coords: Tensor,
        atom_types: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        edges: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Per-atom outputs [N, out_channels] (the sum of the output blocks).

        Raises
        ------
        ValueError
            If the encoder runs on CrystalNN graphs and ``edges`` is missing.
        """
        if self.graph == "crystalnn" and edges is None:
            raise ValueError("the CrystalNN encoder needs the precomputed edges of the batch")
        geometry = periodic_geometry(
            frac_coords,
            lattice,
            num_atoms,
            self.cutoff,
            self.max_neighbors,
            edges if self.graph == "crystalnn" else None,
        )
        j, i = geometry.graph.edge_index
        tri = geometry.triplets
        n = len(atom_types)
        rbf = self.rbf(geometry.graph.distances)
        sbf = self.sbf(geometry.graph.distances, geometry.angles, tri.idx_kj)
        x = self.emb(atom_types, rbf, i, j)
        out = self.output_blocks[0](x, rbf, i, num_nodes=n)
        for interaction, output in zip(
            self.interaction_blocks, self.output_blocks[1:], strict=True
        ):
            x = interaction(x, rbf, sbf, tri.idx_kj, tri.idx_ji)
            out = out + output(x, rbf, i, num_nodes=n)
        return out

    def forward(
        self,
        frac_coords: Tensor,
        atom_types: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        batch: Tensor,
        edges: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Crystal embeddings [B, out_channels] (mean or sum over each crystal's atoms).

        ``edges`` (``edge_index``, ``cell_offsets``) is the precomputed graph of a
        ``crystalnn`` encoder; a ``radius`` encoder ignores it.
        """
        per_atom = self.atom_features(frac_coords, atom_types, lattice, num_atoms, edges)
        return scatter(per_atom, batch, dim=0, dim_size=len(num_atoms), reduce=self.readout)


__all__ = [
    "ENCODER_GRAPHS",
    "PeriodicDimeNetPP",
    "PeriodicGeometry",
    "PeriodicSphericalBasis",
    "Triplets",
    "cap_neighbors",
    "graph_from_edges",
    "periodic_geometry",
    "periodic_triplets",
    "spherical_basis_functions",
    "triplet_angles",
]
