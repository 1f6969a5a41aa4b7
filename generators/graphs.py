"""Periodic graphs of crystal batches in plain torch (no torch_cluster / torch_sparse).

Two kinds of graph serve the four generators:

* :func:`fully_connected_edges` — every ordered pair of atoms of a crystal, self-pairs optional
  (DiffCSP's CSPNet includes them; it works on fractional differences, so it needs no periodic
  images);
* :func:`radius_graph_pbc` — all pairs (i, j, image) with |x_j + n·L − x_i| ≤ cutoff, optionally
  capped to the nearest ``max_neighbors`` per centre atom plus exact ties with the last
  (:func:`cap_neighbors`; CDVAE family: 7 Å, 20 neighbours; ContinuouSP: a per-crystal radius
  3·(V/N)^(1/3) and no cap).

Edge convention (PyG's source → target): ``edge_index[0]`` is the neighbour j, ``edge_index[1]``
the centre i; ``edge_vectors = x_j + offsets·L − x_i``. Indices are chosen without gradient, the
vectors are then computed differentiably from the coordinates and the lattice, so forces and
stresses (ContinuouSP's MALA, invariance tests) flow through them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from generators.crystal import cart_to_frac

_MAX_CANDIDATES = 1 << 22
"""Pair-image candidates evaluated at once; bounds the memory of the image enumeration."""

TIE_TOLERANCE = 1e-3
"""Å: neighbours this close to the ``max_neighbors``-th distance are kept as well."""


@dataclass
class PeriodicGraph:
    """Edges of a periodic radius graph.

    Attributes
    ----------
    edge_index
        [2, E] (neighbour j, centre i), global atom indices of the batch.
    cell_offsets
        [E, 3] integer lattice translations n (float dtype) applied to atom j.
    edge_vectors
        [E, 3] x_j + n·L − x_i in Å, differentiable w.r.t. coordinates and lattice.
    distances
        [E] |edge_vectors|.
    """

    edge_index: Tensor
    cell_offsets: Tensor
    edge_vectors: Tensor
    distances: Tensor


def crystal_offsets(num_atoms: Tensor) -> Tensor:
    """Index of the first atom of each crystal in the flat atom arrays, [B]."""
    return torch.cumsum(num_atoms, 0) - num_atoms


def fully_connected_edges(num_atoms: Tensor, self_loops: bool = False) -> Tensor:
    """All ordered atom pairs within each crystal.

    Parameters
    ----------
    num_atoms
        [B] atoms per crystal.
    self_loops
        Keep i == j pairs.

    Returns
    -------
    Tensor
        [2, E] edge index (j, i) with E = Σ n(n−1) (or Σ n² with self loops).
    """
    i, j, _ = _pairs_within_crystals(num_atoms, include_self=self_loops)
    return torch.stack([j, i])


def _pairs_within_crystals(num_atoms: Tensor, include_self: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Global (i, j, crystal) index triples of all ordered pairs within each crystal."""
    device = num_atoms.device
    squares = num_atoms * num_atoms
    crystal = torch.repeat_interleave(torch.arange(len(num_atoms), device=device), squares)
    first_pair = torch.cumsum(squares, 0) - squares
    local = torch.arange(int(squares.sum()), device=device) - first_pair[crystal]
    n = num_atoms[crystal]
    base = crystal_offsets(num_atoms)[crystal]
    i = base + torch.div(local, n, rounding_mode="floor")
    j = base + local % n
    if not include_self:
        keep = i != j
        i, j, crystal = i[keep], j[keep], crystal[keep]
    return i, j, crystal


IMAGE_MARGIN = 1e-4
"""Fractional slack on the image window of :func:`pair_image_windows` (float rounding)."""


def pair_image_windows(
    delta_frac: Tensor, reach: Tensor, margin: float = IMAGE_MARGIN
) -> tuple[Tensor, Tensor]:
    """The lattice translations k that can bring atom j within the cutoff of atom i.

    A vector x = (Δf + k)·L has fractional components (Δf + k)_d = x·b_d, with b_d the columns
    of L⁻¹, so |x| ≤ r implies |Δf_d + k_d| ≤ r·|b_d| (Cauchy–Schwarz). Every image within
    the cutoff therefore has k_d in [ceil(−r|b_d| − Δf_d), floor(r|b_d| − Δf_d)]; the window is
    widened by ``margin`` on both sides so that float rounding cannot drop a pair at the cutoff.

    Parameters
    ----------
    delta_frac
        [P, 3] fractional differences f_j − f_i of the pairs.
    reach
        [P, 3] r·|b_d| of each pair's crystal.

    Returns
    -------
    tuple of Tensor
        The first translation [P, 3] (float, integer-valued) and the number of translations
        [P, 3] (long) per lattice direction.
    """
    first = torch.ceil(-reach - delta_frac - margin)
    last = torch.floor(reach - delta_frac + margin)
    return first, (last - first + 1).clamp(min=0).long()


def centre_distance_order(centre: Tensor, dist: Tensor) -> Tensor:
    """The permutation that sorts edges by centre atom, then distance, ties in their order.

    The same as a stable sort by distance followed by a stable sort by centre. For float32
    distances it is one sort of an int64 key (centre in the high 32 bits, the bit pattern of
    the distance — monotone for non-negative floats — in the low ones).

    Parameters
    ----------
    centre
        [E] centre atom of each edge (non-negative).
    dist
        [E] edge lengths (non-negative).
    """
    if dist.dtype == torch.float32 and len(dist) and int(centre.max()) < 2**31:
        bits = dist.contiguous().view(torch.int32).to(torch.int64)
        return torch.argsort((centre.to(torch.int64) << 32) | bits, stable=True)
    order = torch.argsort(dist, stable=True)
    return order[torch.argsort(centre[order], stable=True)]


def radius_graph_pbc(
    cart_coords: Tensor,
    lattice: Tensor,
    num_atoms: Tensor,
    cutoff: float | Tensor,
    max_neighbors: int | None = None,
    min_distance: float = 1e-8,
) -> PeriodicGraph:
    """Periodic radius graph of a crystal batch.

    Parameters
    ----------
    cart_coords
        [N, 3] Cartesian positions (Å); need not be wrapped into the cell.
    lattice
        [B, 3, 3] lattice matrices (rows are vectors).
    num_atoms
        [B] atoms per crystal.
    cutoff
        Radius in Å, a float or a [B] tensor (one radius per crystal).
    max_neighbors
        Keep the nearest ``max_neighbors`` neighbours of each centre atom and every neighbour
        tied with the last of them (:func:`cap_neighbors`; ``None``: all).
    min_distance
        Pairs closer than this are dropped (an atom and itself in the home cell).

    Returns
    -------
    PeriodicGraph
        Edges sorted by centre atom, then by distance.

    Notes
    -----
    Each atom pair is tested only against the lattice translations that can bring it within
    the cutoff (:func:`pair_image_windows`), not against every translation of the batch's
    largest image range; the edges, their order and their values are the same.
    """
    device, dtype = cart_coords.device, cart_coords.dtype
    radius = torch.as_tensor(cutoff, dtype=dtype, device=device).detach()
    if radius.dim() == 0:
        radius = radius.expand(len(num_atoms))
    with torch.no_grad():
        frac = cart_to_frac(cart_coords.detach(), lattice.detach(), num_atoms)
        wrap = torch.floor(frac)  # x = (f - wrap)·L + wrap·L
        home_frac = frac - wrap
        home = torch.einsum(
            "ni,nij->nj", home_frac, lattice.detach().repeat_interleave(num_atoms, 0)
        )
        # r·|b_d|, b_d the columns of L^-1 (reciprocal vectors without 2π)
        reach = radius.unsqueeze(-1) * torch.linalg.inv(lattice.detach()).norm(dim=-2)  # [B, 3]
        # every pair's window of translations lies in [-span, span + window); their Cartesian
        # shifts are tabulated once per crystal, [B, M, 3] (k·L with the translations k in
        # lexicographic order)
        span = (torch.ceil(reach).long() + 1).max(dim=0).values
        i_all, j_all, crystal_all = _pairs_within_crystals(num_atoms, include_self=True)
        first_all, count_all = pair_image_windows(
            home_frac.index_select(0, j_all) - home_frac.index_select(0, i_all),
            reach.index_select(0, crystal_all),
        )
        # translations below -span are never within the cutoff
        first_all = torch.maximum(first_all.long(), -span)
        low = -span
        high = (first_all + count_all).max(dim=0).values if len(count_all) else span + 1
        high = torch.maximum(high, low + 1)
        width = high - low
        grids = [
            torch.arange(lo, hi, device=device)
            for lo, hi in zip(low.tolist(), high.tolist(), strict=True)
        ]
        translations = torch.cartesian_prod(*grids).view(-1, 3)  # [M, 3]
        table = torch.einsum("mk,bkl->bml", translations.to(dtype), lattice.detach())
        table = table.reshape(-1, 3)  # [B·M, 3]
        # each pair's own window, translations in lexicographic order: the table index of
        # translation first + l is index(first) + offset(l)
        corner = first_all - low
        base = crystal_all * len(translations) + (
            (corner[:, 0] * width[1] + corner[:, 1]) * width[2] + corner[:, 2]
        )  # [P]
        sizes = count_all.prod(dim=-1)  # candidates per pair
        ends = torch.cumsum(sizes, 0)
        kept: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        start = 0
        while start < len(i_all):  # pairs in chunks of about _MAX_CANDIDATES candidates
            before = int(ends[start - 1]) if start else 0
            limit = torch.tensor(before + _MAX_CANDIDATES, device=device)
            stop = max(start + 1, int(torch.searchsorted(ends, limit, right=True)))
            pair = torch.repeat_interleave(
                torch.arange(start, stop, device=device), sizes[start:stop]
            )  # [C] the pair of each candidate, pair-major
            rank = torch.arange(len(pair), device=device) - (ends - sizes).index_select(0, pair)
            rank = rank + before
            count = count_all.index_select(0, pair)
            l2 = rank % count[:, 2]
            rest = torch.div(rank, count[:, 2], rounding_mode="floor")
            l1 = rest % count[:, 1]
            l0 = torch.div(rest, count[:, 1], rounding_mode="floor")
            index = base.index_select(0, pair) + (l0 * width[1] + l1) * width[2] + l2  # [C]
            i = i_all.index_select(0, pair)
            j = j_all.index_select(0, pair)
            vec = home.index_select(0, j) + table.index_select(0, index) - home.index_select(0, i)
            dist = vec.norm(dim=-1)
            cutoff_of = radius.index_select(0, crystal_all.index_select(0, pair))
            hits = ((dist <= cutoff_of) & (dist > min_distance)).nonzero().view(-1)
            translation = translations.index_select(
                0, index.index_select(0, hits) % len(translations)
            )
            kept.append(
                (
                    i.index_select(0, hits),
                    j.index_select(0, hits),
                    translation.to(dtype),
                    dist.index_select(0, hits),
                )
            )
            start = stop
        if not kept:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            kept.append((empty, empty, home.new_zeros(0, 3), home.new_zeros(0)))
        centre = torch.cat([k[0] for k in kept])
        neighbour = torch.cat([k[1] for k in kept])
        offsets = torch.cat([k[2] for k in kept])
        dist = torch.cat([k[3] for k in kept])
        order = centre_distance_order(centre, dist)
        centre, neighbour = centre.index_select(0, order), neighbour.index_select(0, order)
        offsets = offsets.index_select(0, order)
        # offsets relative to the unwrapped input positions
        offsets = offsets - wrap.index_select(0, neighbour) + wrap.index_select(0, centre)
    edge_lattice = lattice.repeat_interleave(num_atoms, 0).index_select(0, centre)
    edge_vectors = (
        cart_coords.index_select(0, neighbour)
        + torch.einsum("ek,ekl->el", offsets, edge_lattice)
        - cart_coords.index_select(0, centre)
    )
    graph = PeriodicGraph(
        edge_index=torch.stack([neighbour, centre]),
        cell_offsets=offsets,
        edge_vectors=edge_vectors,
        distances=edge_vectors.norm(dim=-1),
    )
    if max_neighbors is not None:
        graph = cap_neighbors(graph, len(cart_coords), max_neighbors)
    return graph


def cap_neighbors(graph: PeriodicGraph, num_nodes: int, max_neighbors: int) -> PeriodicGraph:
    """Keep each centre's ``max_neighbors`` nearest edges *and every edge tied with the last*.

    A hard cap cuts exact ties arbitrarily — an atom's own images at ±n·L are always at the same
    distance — so the graph, and any output summing edge directions, would depend on atom order
    and float rounding. Keeping all neighbours within ``TIE_TOLERANCE`` of the
    ``max_neighbors``-th distance makes the graph a function of the geometry alone.

    Parameters
    ----------
    graph
        Periodic graph whose ``edge_index[1]`` are the centre atoms.
    num_nodes
        Number of atoms of the batch.
    max_neighbors
        Neighbours to keep per centre atom (more where there are ties with the last one).

    Returns
    -------
    PeriodicGraph
        The kept edges, in their original order.
    """
    centre = graph.edge_index[1]
    dist = graph.distances.detach()
    order = centre_distance_order(centre, dist)
    counts = torch.bincount(centre, minlength=num_nodes)
    first = torch.cumsum(counts, 0) - counts
    sorted_centre = centre.index_select(0, order)
    sorted_dist = dist.index_select(0, order)
    rank = torch.arange(len(order), device=dist.device) - first.index_select(0, sorted_centre)
    last = torch.full((num_nodes,), float("inf"), dtype=dist.dtype, device=dist.device)
    at_cap = rank == max_neighbors - 1
    last[sorted_centre[at_cap]] = sorted_dist[at_cap]
    keep = order[sorted_dist <= last.index_select(0, sorted_centre) + TIE_TOLERANCE]
    keep = keep.sort().values
    return PeriodicGraph(
        edge_index=graph.edge_index.index_select(1, keep),
        cell_offsets=graph.cell_offsets.index_select(0, keep),
        edge_vectors=graph.edge_vectors.index_select(0, keep),
        distances=graph.distances.index_select(0, keep),
    )


__all__ = [
    "TIE_TOLERANCE",
    "PeriodicGraph",
    "cap_neighbors",
    "centre_distance_order",
    "crystal_offsets",
    "fully_connected_edges",
    "pair_image_windows",
    "radius_graph_pbc",
]
