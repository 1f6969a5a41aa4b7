"""Periodic GemNet-T: the papers' coordinate/type decoder of CDVAE and DP-CDVAE.

Written from the description in Gasteiger, Becker and Günnemann, "GemNet: Universal Directional
Graph Neural Networks for Molecules" (NeurIPS 2021), triplets-only variant ("T") with direct
force output ("dT"), configured and conditioned as CDVAE's ``GemNetTDecoder`` uses it
(``../shared/reference/models.md`` §1, §2). Pure torch plus ``torch_geometric.utils.scatter``.

Structure (hidden = emb_size_atom = emb_size_edge, 128 in the papers):

* **graph**: the periodic radius graph (7 Å, ≤ 20 neighbours, tie-tolerant cap) and the periodic
  triplets k → j → i of :mod:`generators.models.dimenet_pbc`, made *symmetric* (every edge has
  its reverse, :func:`symmetrize_edges`) because GemNet's triplet interaction writes to both
  directions of an edge;
* **bases**: Gaussian rbf of d/cutoff (``num_radial`` 128) times GemNet's polynomial envelope
  (exponent 5); the circular basis of a triplet is Y_l^0(cos θ) for l < ``num_spherical`` (7)
  combined with the rbf of the output edge (GemNet's efficient factorisation);
* **embeddings**: h_i = Linear([Embedding(Z_i), z, extra] → hidden) (CDVAE's
  ``atom_latent_emb``; DP-CDVAE adds the time embedding and Fourier features as ``extra``);
  m_ji = act(Linear([h_j, h_i, rbf_ji] → hidden));
* **interaction blocks** (3): the triplet interaction — m_kj → dense, × rbf projection,
  down-projection to ``emb_size_trip`` (64); for each edge ji the sum over its triplets of
  Y(θ) ⊗ m_kj, contracted with the rbf of ji (``emb_size_cbf`` 16) and a bilinear layer to
  ``emb_size_bil_trip`` (64); up-projections for both directions (ji and, through the reverse
  edge, ij), averaged with 1/√2 — then residual layers before/after the skip
  (``num_before_skip`` 1, ``num_after_skip`` 2), the atom update (rbf-gated messages summed per
  atom, Dense + ``num_atom`` 3 residual layers, residual to h) and the edge update from
  [h_j, h_i, m_ji] (``num_concat`` 1);
* **output blocks** (one per block plus one after the embedding): per edge, a Dense and
  ``num_atom`` residual layers on m_ji, gated by the rbf, and a Dense to one scalar s_ji; per
  atom the direct force-like vector Σ_j s_ji·(x_j − x_i)/|x_j − x_i| summed over the blocks —
  CDVAE's ``pred_cart_coord_diff``;
* **type head**: Linear(h → 100) on the final atom embedding, as CDVAE's ``fc_atom``.

``conditioning="wide"`` builds DP-CDVAE's published variant: the atom embeddings are
hidden + latent + extra wide (128 + 256 + time 128 + Fourier 36 = 548) after a two-layer ReLU
MLP over [Embedding(Z), z, extra] (its ``atom_latent_emb``), every atom-side layer (atom update,
edge embedding and edge update inputs) runs at that width, the edges stay ``hidden`` (128) wide,
and the type head Linear(548 → 100) reads the final wide h.

Activations are GemNet's scaled SiLU (SiLU/0.6), weights He-orthogonal initialised.

**Differences from the authors' code** (``docs/cdvae.md``):

* The scale-factor file ``gemnet-dT.json`` of the original is not available. Every place where
  GemNet multiplies by a fitted factor has a :class:`ScaleFactor` buffer (1.0 = unit scaling);
  :meth:`GemNetTDecoder.fit_scale_factors` fits them, one after the other as GemNet's
  auto-scaling does, so that each scaled sum has the RMS of its input on a batch of training
  data (the CDVAE family calls it from ``fit_statistics``).
* The energy branch of GemNet's output blocks is left out: CDVAE's decoder discards the energy
  and takes its type logits from the last atom embedding.
* Triplets follow DimeNet's k → j → i orientation (angle at j) from ``dimenet_pbc``; GemNet's code
  groups two edges into the same atom. With the two-direction up-projection these are the same
  set of interactions up to reversing the output edge.
* The neighbour cap keeps ties with the 20th neighbour, and the capped graph is made symmetric
  by adding missing reverse edges (the reference code keeps one half of the edges and mirrors it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from generators.crystal import frac_to_cart
from generators.graphs import PeriodicGraph, radius_graph_pbc
from generators.models.decoder_base import LatentConditionedDecoder
from generators.models.dimenet_pbc import (
    Triplets,
    periodic_triplets,
    triplet_angles,
)

GEMNET_T_DEFAULTS: dict[str, int | float] = {
    "hidden_dim": 128,
    "num_blocks": 3,
    "num_spherical": 7,
    "num_radial": 128,
    "emb_size_trip": 64,
    "emb_size_rbf": 16,
    "emb_size_cbf": 16,
    "emb_size_bil_trip": 64,
    "num_before_skip": 1,
    "num_after_skip": 2,
    "num_concat": 1,
    "num_atom": 3,
    "cutoff": 7.0,
    "max_neighbors": 20,
    "envelope_exponent": 5,
}
"""CDVAE's ``conf/model/decoder/gemnet.yaml`` with GemNetT's defaults (models.md §1)."""


# ----------------------------------------------------------------------------- periodic edges
def _edge_keys(src: Tensor, dst: Tensor, offsets: Tensor, num_nodes: int, span: int) -> Tensor:
    """One int64 key per (source, target, image offset)."""
    shifted = offsets.round().long() + span
    width = 2 * span + 1
    key = src.long() * num_nodes + dst.long()
    for axis in range(3):
        key = key * width + shifted[:, axis]
    return key


def symmetrize_edges(graph: PeriodicGraph, num_nodes: int) -> tuple[PeriodicGraph, Tensor]:
    """Add the reverse of every edge that lacks it, and index each edge's reverse.

    The reverse of j → i with image offset n (vector x_j + n·L − x_i) is i → j with offset −n
    and the opposite vector. A capped radius graph is not symmetric (i may be among j's 20
    nearest while j is not among i's); the union with the reverses is, and it is still a
    function of the geometry alone.

    Returns
    -------
    tuple
        The symmetric graph (the original edges first) and ``swap`` [E], the index of each edge's
        reverse edge.
    """
    src, dst = graph.edge_index
    offsets = graph.cell_offsets
    if len(offsets) == 0:
        return graph, torch.zeros(0, dtype=torch.long, device=offsets.device)
    span = int(offsets.abs().max().round()) + 1
    keys = _edge_keys(src, dst, offsets, num_nodes, span)
    reverse = _edge_keys(dst, src, -offsets, num_nodes, span)
    sorted_keys, order = torch.sort(keys)
    pos = torch.searchsorted(sorted_keys, reverse).clamp(max=len(keys) - 1)
    found = sorted_keys[pos] == reverse
    missing = (~found).nonzero().view(-1)
    if len(missing):
        graph = PeriodicGraph(
            edge_index=torch.cat([graph.edge_index, graph.edge_index[:, missing].flip(0)], dim=1),
            cell_offsets=torch.cat([offsets, -offsets[missing]]),
            edge_vectors=torch.cat([graph.edge_vectors, -graph.edge_vectors[missing]]),
            distances=torch.cat([graph.distances, graph.distances[missing]]),
        )
        src, dst = graph.edge_index
        keys = _edge_keys(src, dst, graph.cell_offsets, num_nodes, span)
        reverse = _edge_keys(dst, src, -graph.cell_offsets, num_nodes, span)
        sorted_keys, order = torch.sort(keys)
        pos = torch.searchsorted(sorted_keys, reverse)
    return graph, order[pos]


def ragged_rank(index: Tensor, size: int) -> Tensor:
    """Position of each entry within its group, for an ``index`` sorted ascending."""
    counts = torch.bincount(index, minlength=size)
    start = torch.cumsum(counts, 0) - counts
    return torch.arange(len(index), device=index.device) - start[index]


# ----------------------------------------------------------------------------- building blocks
class ScaledSiLU(nn.Module):
    """GemNet's activation: SiLU(x) / 0.6 (roughly variance preserving)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.silu(x) * (1.0 / 0.6)


def he_orthogonal_(weight: Tensor) -> Tensor:
    """Orthogonal init, standardised per output row and scaled by 1/√fan_in (GemNet's init)."""
    with torch.no_grad():
        nn.init.orthogonal_(weight)
        mean = weight.mean(dim=1, keepdim=True)
        var = weight.var(dim=1, unbiased=True, keepdim=True)
        weight.sub_(mean).div_(torch.sqrt(var + 1e-6)).mul_(weight.shape[1] ** -0.5)
    return weight


class Dense(nn.Module):
    """Linear layer (He-orthogonal init) with an optional scaled SiLU."""

    def __init__(self, in_dim: int, out_dim: int, activation: bool = True, bias: bool = False):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)
        he_orthogonal_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)
        self.act: nn.Module = ScaledSiLU() if activation else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.linear(x))


class ResidualLayer(nn.Module):
    """x + Dense(Dense(x)), divided by √2."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(Dense(units, units), Dense(units, units))

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.mlp(x)) * (1.0 / math.sqrt(2.0))


class ScaleFactor(nn.Module):
    """A fitted scalar that rescales a sum to the RMS of its reference (GemNet's ScaleFactor).

    ``scale`` is a buffer (saved in checkpoints), 1.0 until :meth:`GemNetTDecoder.fit_scale_factors`
    sets it. While ``fitting`` is on, the RMS of the reference and of the unscaled output are
    accumulated.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0))
        self.fitting = False
        self._sums = [0.0, 0.0]

    def forward(self, reference: Tensor, x: Tensor) -> Tensor:
        """``x``·scale (and, while fitting, record the RMS of ``reference`` and ``x``)."""
        if self.fitting:
            self._sums[0] += float(reference.detach().pow(2).mean())
            self._sums[1] += float(x.detach().pow(2).mean())
        return x * self.scale

    def start_fitting(self) -> None:
        """Reset the statistics and record the next forward passes."""
        self.fitting = True
        self._sums = [0.0, 0.0]

    def finish_fitting(self) -> float:
        """Set ``scale`` = sqrt(⟨reference²⟩ / ⟨output²⟩) and stop recording."""
        self.fitting = False
        ref, out = self._sums
        if out > 0.0 and ref > 0.0:
            self.scale.fill_(math.sqrt(ref / out))
        return float(self.scale)


class GaussianRBF(nn.Module):
    """Gaussian radial basis of d/cutoff times GemNet's polynomial envelope."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.p = envelope_exponent
        offsets = torch.linspace(0.0, 1.0, num_radial)
        self.register_buffer("offsets", offsets)
        spacing = float(offsets[1] - offsets[0]) if num_radial > 1 else 1.0
        self.coeff = -0.5 / spacing**2

    def envelope(self, x: Tensor) -> Tensor:
        """1 + a·x^p + b·x^(p+1) + c·x^(p+2), zero beyond the cutoff (smooth to 2nd order)."""
        p = self.p
        a, b, c = -(p + 1) * (p + 2) / 2, p * (p + 2), -p * (p + 1) / 2
        value = 1 + a * x**p + b * x ** (p + 1) + c * x ** (p + 2)
        return torch.where(x < 1, value, torch.zeros_like(x))

    def forward(self, dist: Tensor) -> Tensor:
        """[E, num_radial] basis values."""
        x = dist / self.cutoff
        gauss = torch.exp(self.coeff * (x.unsqueeze(-1) - self.offsets) ** 2)
        return self.envelope(x).unsqueeze(-1) * gauss


def spherical_harmonics_m0(cos_angle: Tensor, num_spherical: int) -> Tensor:
    """Real spherical harmonics Y_l^0 = sqrt((2l+1)/4π)·P_l(cos θ), l < ``num_spherical``."""
    legendre = [torch.ones_like(cos_angle), cos_angle]
    for degree in range(1, num_spherical - 1):
        legendre.append(
            ((2 * degree + 1) * cos_angle * legendre[-1] - degree * legendre[-2]) / (degree + 1)
        )
    norms = [math.sqrt((2 * degree + 1) / (4 * math.pi)) for degree in range(num_spherical)]
    return torch.stack([n * p for n, p in zip(norms, legendre[:num_spherical], strict=True)], -1)


class TripletBasis:
    """Dense per-edge layout of the triplets: Y(θ) padded to [E, num_spherical, Kmax]."""

    def __init__(self, triplets: Triplets, angles: Tensor, num_edges: int, num_spherical: int):
        self.idx_kj = triplets.idx_kj
        self.idx_ji = triplets.idx_ji
        self.rank = ragged_rank(triplets.idx_ji, num_edges)
        self.kmax = int(self.rank.max()) + 1 if len(self.rank) else 0
        self.num_edges = num_edges
        # for each row of the flattened [E·Kmax] layout, the input edge k → j it holds, or
        # num_edges (a zero row appended by gather) for padding; computed once for all blocks
        slot = self.idx_ji * self.kmax + self.rank
        self.source = torch.full(
            (num_edges * self.kmax,), num_edges, dtype=torch.long, device=angles.device
        )
        self.source[slot] = self.idx_kj
        sph = spherical_harmonics_m0(torch.cos(angles), num_spherical)
        padded = torch.cat([sph, sph.new_zeros(1, num_spherical)])
        rows = torch.full_like(self.source, len(sph))
        rows[slot] = torch.arange(len(sph), device=angles.device)
        dense = padded.index_select(0, rows).view(num_edges, self.kmax, num_spherical)
        self.sph = dense.transpose(1, 2)  # [E, L, Kmax]

    def gather(self, edge_values: Tensor) -> Tensor:
        """[E, Kmax, D]: the values of each output edge's input edges k → j, zero padded."""
        width = edge_values.shape[-1]
        padded = torch.cat([edge_values, edge_values.new_zeros(1, width)])
        return padded.index_select(0, self.source).view(self.num_edges, self.kmax, width)


class TripletInteraction(nn.Module):
    """GemNet's bilinear triplet interaction with up-projections for both edge directions."""

    def __init__(
        self, hidden: int, emb_trip: int, emb_rbf: int, emb_cbf: int, emb_bil: int
    ) -> None:
        super().__init__()
        self.dense_kj = Dense(hidden, hidden)
        self.mlp_rbf = Dense(emb_rbf, hidden, activation=False)
        self.scale_rbf = ScaleFactor()
        self.down = Dense(hidden, emb_trip)
        self.bilinear = nn.Linear(emb_cbf * emb_trip, emb_bil, bias=False)
        he_orthogonal_(self.bilinear.weight)
        self.scale_cbf_sum = ScaleFactor()
        self.up_ji = Dense(emb_bil, hidden)
        self.up_ij = Dense(emb_bil, hidden)

    def forward(
        self, m: Tensor, rbf3: Tensor, rbf_w1: Tensor, basis: TripletBasis, swap: Tensor
    ) -> Tensor:
        x = self.dense_kj(m)
        x = self.scale_rbf(x, x * self.mlp_rbf(rbf3))
        x = self.down(x)  # [E, emb_trip]
        gathered = basis.gather(x)  # [E, Kmax, emb_trip]
        summed = torch.bmm(basis.sph, gathered)  # [E, L, emb_trip]: Σ_k Y_l(θ) m_kj
        mixed = torch.bmm(rbf_w1, summed)  # [E, emb_cbf, emb_trip]: radial part of ji
        x3 = self.bilinear(mixed.flatten(1))
        x3 = self.scale_cbf_sum(x, x3)
        return (self.up_ji(x3) + self.up_ij(x3).index_select(0, swap)) * (1.0 / math.sqrt(2.0))


class AtomUpdate(nn.Module):
    """rbf-gated messages summed onto their centre atom, Dense(edge → atom) + residual layers."""

    def __init__(self, atom_dim: int, edge_dim: int, emb_rbf: int, num_atom: int) -> None:
        super().__init__()
        self.dense_rbf = Dense(emb_rbf, edge_dim, activation=False)
        self.scale_sum = ScaleFactor()
        self.layers = nn.Sequential(
            Dense(edge_dim, atom_dim), *(ResidualLayer(atom_dim) for _ in range(num_atom))
        )

    def forward(self, m: Tensor, rbf: Tensor, centre: Tensor, num_nodes: int) -> Tensor:
        summed = scatter(m * self.dense_rbf(rbf), centre, dim=0, dim_size=num_nodes, reduce="sum")
        return self.layers(self.scale_sum(m, summed))


class EdgeEmbedding(nn.Module):
    """m_ji = act(Linear([h_j, h_i, features_ji]))."""

    def __init__(self, atom_dim: int, edge_in: int, edge_out: int) -> None:
        super().__init__()
        self.dense = Dense(2 * atom_dim + edge_in, edge_out)

    def forward(self, h: Tensor, features: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        return self.dense(
            torch.cat([h.index_select(0, src), h.index_select(0, dst), features], dim=-1)
        )


class InteractionBlock(nn.Module):
    """One GemNet-T interaction block: triplet interaction, atom update, edge update."""

    def __init__(
        self,
        atom_dim: int,
        edge_dim: int,
        emb_trip: int,
        emb_rbf: int,
        emb_cbf: int,
        emb_bil: int,
        num_before_skip: int,
        num_after_skip: int,
        num_concat: int,
        num_atom: int,
    ) -> None:
        super().__init__()
        self.dense_ji = Dense(edge_dim, edge_dim)
        self.triplet = TripletInteraction(edge_dim, emb_trip, emb_rbf, emb_cbf, emb_bil)
        self.before_skip = nn.Sequential(*(ResidualLayer(edge_dim) for _ in range(num_before_skip)))
        self.after_skip = nn.Sequential(*(ResidualLayer(edge_dim) for _ in range(num_after_skip)))
        self.atom_update = AtomUpdate(atom_dim, edge_dim, emb_rbf, num_atom)
        self.concat = EdgeEmbedding(atom_dim, edge_dim, edge_dim)
        self.residual_m = nn.Sequential(*(ResidualLayer(edge_dim) for _ in range(num_concat)))

    def forward(
        self,
        h: Tensor,
        m: Tensor,
        rbf3: Tensor,
        rbf_w1: Tensor,
        rbf_h: Tensor,
        basis: TripletBasis,
        swap: Tensor,
        edge_index: Tensor,
    ) -> tuple[Tensor, Tensor]:
        inv_sqrt2 = 1.0 / math.sqrt(2.0)
        src, dst = edge_index
        x = (self.dense_ji(m) + self.triplet(m, rbf3, rbf_w1, basis, swap)) * inv_sqrt2
        m = (m + self.before_skip(x)) * inv_sqrt2
        m = self.after_skip(m)
        h = (h + self.atom_update(m, rbf_h, dst, len(h))) * inv_sqrt2
        m = (m + self.residual_m(self.concat(h, m, src, dst))) * inv_sqrt2
        return h, m


class ForceOutput(nn.Module):
    """GemNet's direct-force output branch: Dense + residual layers, rbf gate, Dense → scalar."""

    def __init__(self, hidden: int, emb_rbf: int, num_atom: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            Dense(hidden, hidden), *(ResidualLayer(hidden) for _ in range(num_atom))
        )
        self.dense_rbf = Dense(emb_rbf, hidden, activation=False)
        self.scale_rbf = ScaleFactor()
        self.out = Dense(hidden, 1, activation=False)

    def forward(self, m: Tensor, rbf_out: Tensor) -> Tensor:
        x = self.layers(m)
        x = self.scale_rbf(x, x * self.dense_rbf(rbf_out))
        return self.out(x)  # [E, 1]


# ----------------------------------------------------------------------------- the decoder
class GemNetTDecoder(LatentConditionedDecoder):
    """Periodic GemNet-T conditioned on z: Cartesian coordinate vectors and type logits.

    Conditioning and type head are :class:`~generators.models.decoder_base.
    LatentConditionedDecoder`'s (shared with the DimeNet++-style decoder).

    Parameters
    ----------
    latent_dim
        Size of z (256).
    hidden_dim
        emb_size_atom = emb_size_edge (128).
    num_blocks
        Interaction blocks (3).
    extra_atom_dim
        Extra per-atom conditioning (DP-CDVAE: time embedding + Fourier features); 0 for CDVAE.
    type_head_sees_conditioning
        With ``conditioning="project"``: if true the type head sees [h, z, extra], otherwise h
        (CDVAE). Ignored with ``"wide"``, whose type head reads the final wide h.
    num_spherical, num_radial, emb_size_trip, emb_size_rbf, emb_size_cbf, emb_size_bil_trip,
    num_before_skip, num_after_skip, num_concat, num_atom, envelope_exponent
        GemNet-T sizes (7, 128, 64, 16, 16, 64, 1, 2, 1, 3, 5).
    cutoff, max_neighbors
        Periodic radius graph (7 Å, 20 neighbours).
    conditioning
        ``project`` (CDVAE: atoms ``hidden_dim`` wide after Linear([Z-embedding, z, extra]))
        or ``wide`` (DP-CDVAE as published: atoms hidden + latent + extra wide after a
        two-layer ReLU MLP; the edges stay ``hidden_dim`` wide).
    """

    def __init__(
        self,
        latent_dim: int = 256,
        hidden_dim: int = 128,
        num_blocks: int = 3,
        extra_atom_dim: int = 0,
        type_head_sees_conditioning: bool = False,
        num_spherical: int = 7,
        num_radial: int = 128,
        emb_size_trip: int = 64,
        emb_size_rbf: int = 16,
        emb_size_cbf: int = 16,
        emb_size_bil_trip: int = 64,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_concat: int = 1,
        num_atom: int = 3,
        cutoff: float = 7.0,
        max_neighbors: int = 20,
        envelope_exponent: int = 5,
        conditioning: str = "project",
    ) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.max_neighbors = max_neighbors
        self.num_spherical = num_spherical
        self.emb_size_cbf = emb_size_cbf
        atom_dim = self.init_conditioning(hidden_dim, latent_dim, extra_atom_dim, conditioning)
        self.atom_dim = atom_dim
        self.rbf = GaussianRBF(num_radial, cutoff, envelope_exponent)
        self.edge_emb = EdgeEmbedding(atom_dim, num_radial, hidden_dim)
        # Shared by all blocks, as in GemNet: rbf projections and the cbf down-projection.
        self.mlp_rbf3 = Dense(num_radial, emb_size_rbf, activation=False)
        self.mlp_cbf3 = nn.Linear(num_radial, emb_size_cbf * num_spherical, bias=False)
        he_orthogonal_(self.mlp_cbf3.weight)
        self.mlp_rbf_h = Dense(num_radial, emb_size_rbf, activation=False)
        self.mlp_rbf_out = Dense(num_radial, emb_size_rbf, activation=False)
        self.interactions = nn.ModuleList(
            InteractionBlock(
                atom_dim,
                hidden_dim,
                emb_size_trip,
                emb_size_rbf,
                emb_size_cbf,
                emb_size_bil_trip,
                num_before_skip,
                num_after_skip,
                num_concat,
                num_atom,
            )
            for _ in range(num_blocks)
        )
        self.outputs = nn.ModuleList(
            ForceOutput(hidden_dim, emb_size_rbf, num_atom) for _ in range(num_blocks + 1)
        )
        if conditioning == "wide":  # the type head reads the final wide h, nothing else
            type_head_sees_conditioning = False
        self.init_type_head(atom_dim, latent_dim, extra_atom_dim, type_head_sees_conditioning)

    def propagate(
        self, h: Tensor, frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor
    ) -> tuple[Tensor, Tensor]:
        """GemNet-T on the periodic graph: direct vectors [N, 3] and the final atom embedding."""
        n = len(h)
        # the capped radius graph alone: its triplets are those of the symmetric graph below
        cart = frac_to_cart(frac_coords, lattice, num_atoms)
        capped = radius_graph_pbc(cart, lattice, num_atoms, self.cutoff, self.max_neighbors)
        graph, swap = symmetrize_edges(capped, n)
        triplets = periodic_triplets(graph.edge_index, graph.cell_offsets, n)
        angles = triplet_angles(graph.edge_vectors, triplets)
        num_edges = graph.edge_index.shape[1]
        basis = TripletBasis(triplets, angles, num_edges, self.num_spherical)
        src, dst = graph.edge_index
        rbf = self.rbf(graph.distances)
        m = self.edge_emb(h, rbf, src, dst)
        rbf3 = self.mlp_rbf3(rbf)
        rbf_w1 = self.mlp_cbf3(rbf).view(num_edges, self.emb_size_cbf, self.num_spherical)
        rbf_h = self.mlp_rbf_h(rbf)
        rbf_out = self.mlp_rbf_out(rbf)

        scalar = self.outputs[0](m, rbf_out)
        for interaction, output in zip(self.interactions, self.outputs[1:], strict=True):
            h, m = interaction(h, m, rbf3, rbf_w1, rbf_h, basis, swap, graph.edge_index)
            scalar = scalar + output(m, rbf_out)
        unit = graph.edge_vectors / graph.distances.unsqueeze(-1)
        vector = scatter(scalar * unit, dst, dim=0, dim_size=n, reduce="sum")
        return vector, h

    def scale_factors(self) -> list[ScaleFactor]:
        """The scale factors in the order they are applied in a forward pass."""
        return [module for module in self.modules() if isinstance(module, ScaleFactor)]

    @torch.no_grad()
    def fit_scale_factors(self, run_forward: Callable[[], object]) -> list[float]:
        """Fit the scale factors one after the other (GemNet's auto-scaling).

        Parameters
        ----------
        run_forward
            A callable that runs the decoder on representative inputs (e.g. the model's
            denoising loss on a training batch); it is called once per factor.

        Returns
        -------
        list of float
            The fitted factors.
        """
        fitted = []
        for factor in self.scale_factors():
            factor.start_fitting()
            run_forward()
            fitted.append(factor.finish_fitting())
        return fitted


__all__ = [
    "GEMNET_T_DEFAULTS",
    "GaussianRBF",
    "GemNetTDecoder",
    "ScaleFactor",
    "spherical_harmonics_m0",
    "symmetrize_edges",
]
