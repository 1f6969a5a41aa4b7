"""CSPNet: DiffCSP's periodic-E(3)-invariant denoiser on fractional coordinates.

Every crystal is a fully connected graph, self-pairs included as in DiffCSP (``ones(n, n)``:
each node averages n messages, one of them its own, which carries the lattice to a 1-atom
crystal). An edge message sees both node states, the lattice
inner products L·Lᵀ (rotation invariant) and Fourier features of the fractional difference
(f_j − f_i) mod 1 (translation invariant); nodes aggregate by mean (permutation equivariant).
Heads: fractional-coordinate scores (Linear, no bias), a lattice ε as a 3×3 matrix (Linear, no
bias) times L
(rotation equivariant: rotating the rows of L rotates the prediction the same way), and,
for ab-initio generation, 100 atom-type logits/noise values.

How it is computed. The first Linear of each edge MLP acts on
cat([h_i, h_j, L·Lᵀ, fourier(Δf)]); its weight is split by columns into W_i, W_j, W_L and
W_sin, W_cos, and the product is evaluated as W_i·h_i + W_j·h_j (per atom, gathered) +
W_L·L·Lᵀ + b (per crystal) + W_sin·sin + W_cos·cos (per edge). The same weights and the same
sum as the concatenated form, with far fewer operations per edge. The Fourier part depends
only on the coordinates, so it is computed once per call for all layers; and because the
frequencies are integer multiples of 2π, the reverse edge of a pair has the features
(−sin, cos), so it is evaluated once per unordered pair, and the self-pair's (sin 0, cos 0)
= (0, 1) once for all. Everything that depends only on the atom counts (edge index, pairs,
their Fourier-table rows) is a :class:`CSPGraph`, built once per batch by the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from generators.crystal import MAX_ATOMIC_NUMBER
from generators.diffusion import fourier_features, integer_frequencies, wrapped_difference
from generators.graphs import fully_connected_edges


@dataclass(frozen=True)
class CSPGraph:
    """The part of CSPNet's computation that depends only on the atom counts of a batch.

    Attributes
    ----------
    edge_index
        [2, E] (j, i) pairs (neighbour, centre), centre-major as
        :func:`generators.graphs.fully_connected_edges` orders them.
    atom_crystal
        [N] crystal index of each atom.
    pair_centre, pair_neighbour
        [U] the unordered pairs of distinct atoms, as the edge (j, i) with j > i.
    edge_code
        [E] row of the per-pair Fourier table of each edge: p for the edge of pair p,
        U + p for its reverse, 2U for a self-pair.
    centre_counts
        [N, 1] edges per centre atom (at least 1, so an isolated atom averages to 0).
    block
        Atoms per crystal when every crystal of the batch has the same number of atoms
        (edges then form [B, n, n] or [B, n, n − 1] blocks), else ``None``.
    self_edges
        Whether the (i, i) pairs are edges.
    """

    edge_index: Tensor
    atom_crystal: Tensor
    pair_centre: Tensor
    pair_neighbour: Tensor
    edge_code: Tensor
    centre_counts: Tensor
    block: int | None
    self_edges: bool


def build_graph(num_atoms: Tensor, atom_crystal: Tensor, self_edges: bool = True) -> CSPGraph:
    """CSPNet's graph bookkeeping of a batch (depends only on the atom counts).

    Parameters
    ----------
    num_atoms
        [B] atoms per crystal.
    atom_crystal
        [N] crystal index of each atom.
    self_edges
        Include the (i, i) pairs.

    Returns
    -------
    CSPGraph
        Edges in the order of :func:`generators.graphs.fully_connected_edges`.
    """
    device = num_atoms.device
    with torch.no_grad():
        full = fully_connected_edges(num_atoms, self_loops=True)
        j, i = full
        forward = j > i
        reverse = j < i
        pair_id = torch.cumsum(forward.long(), 0) - 1
        num_pairs = int(forward.sum())
        # the reverse of the edge at local position a·n + b of a crystal is at b·n + a
        squares = num_atoms * num_atoms
        first_edge = torch.cumsum(squares, 0) - squares
        base = torch.cumsum(num_atoms, 0) - num_atoms
        crystal = atom_crystal[i]
        n = num_atoms[crystal]
        transposed = first_edge[crystal] + (j - base[crystal]) * n + (i - base[crystal])
        code = torch.full_like(i, 2 * num_pairs)
        code[forward] = pair_id[forward]
        code[reverse] = num_pairs + pair_id[transposed[reverse]]
        keep = torch.ones_like(forward) if self_edges else i != j
        edge_index = full[:, keep]
        counts = torch.bincount(edge_index[1], minlength=len(atom_crystal)).clamp(min=1)
        sizes = torch.unique(num_atoms)
        block = int(sizes[0]) if len(sizes) == 1 else None
        if block is not None and not self_edges and block < 2:
            block = None
        return CSPGraph(
            edge_index=edge_index,
            atom_crystal=atom_crystal.to(device),
            pair_centre=i[forward],
            pair_neighbour=j[forward],
            edge_code=code[keep],
            centre_counts=counts.unsqueeze(-1),
            block=block,
            self_edges=self_edges,
        )


class CSPLayer(nn.Module):
    """One message-passing layer of CSPNet (pre-LayerNorm, residual node update).

    Parameters
    ----------
    hidden_dim
        Node width.
    num_freqs
        Fourier frequencies 2πk, k = 0..num_freqs−1 of the fractional differences.
    layer_norm
        Apply LayerNorm to the node states before the messages (DiffCSP ``ln: true``).
    """

    def __init__(self, hidden_dim: int, num_freqs: int, layer_norm: bool = True) -> None:
        super().__init__()
        edge_in = 2 * hidden_dim + 9 + 6 * num_freqs
        self.hidden_dim = hidden_dim
        self.num_freqs = num_freqs
        self.edge_mlp = nn.Sequential(
            nn.Linear(edge_in, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
        )
        self.node_mlp = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
        )
        self.norm = nn.LayerNorm(hidden_dim) if layer_norm else nn.Identity()
        self.register_buffer("frequencies", integer_frequencies(num_freqs), persistent=False)

    def edge_weight_blocks(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Column blocks of the first edge Linear: W_i, W_j, W_L, W_sin, W_cos (views)."""
        weight = self.edge_mlp[0].weight
        h, k3 = self.hidden_dim, 3 * self.num_freqs
        return (
            weight[:, :h],
            weight[:, h : 2 * h],
            weight[:, 2 * h : 2 * h + 9],
            weight[:, 2 * h + 9 : 2 * h + 9 + k3],
            weight[:, 2 * h + 9 + k3 :],
        )

    def forward(
        self,
        h: Tensor,
        graph: CSPGraph,
        lattice_ips: Tensor,
        sin_features: Tensor,
        cos_features: Tensor,
    ) -> Tensor:
        """Update node states.

        Parameters
        ----------
        h
            [N, H] node states.
        graph
            The batch's :class:`CSPGraph`.
        lattice_ips
            [B, 9] flattened L·Lᵀ per crystal.
        sin_features, cos_features
            [U, 3·num_freqs] sines and cosines of 2πk·((f_j − f_i) mod 1) of the unordered
            pairs ``graph.pair_centre``, ``graph.pair_neighbour``.
        """
        residual = h
        h = self.norm(h)
        w_centre, w_neighbour, w_lattice, w_sin, w_cos = self.edge_weight_blocks()
        inplace = not torch.is_grad_enabled()
        width = h.shape[-1]
        # edge term of the pair (s, c), of its reverse edge (−s, c) and of a self-pair (0, 1)
        sin_term = sin_features @ w_sin.T
        cos_term = cos_features @ w_cos.T
        table = torch.cat([cos_term + sin_term, cos_term - sin_term, w_cos.sum(1).unsqueeze(0)])
        pre = table.index_select(0, graph.edge_code)
        # per-atom and per-crystal terms, W_L·(L·Lᵀ) + b added to the centre atom's
        crystal = torch.addmm(self.edge_mlp[0].bias, lattice_ips, w_lattice.T)
        centre = torch.addmm(crystal.index_select(0, graph.atom_crystal), h, w_centre.T)
        neighbour = h @ w_neighbour.T
        block = graph.block
        if block is not None and graph.self_edges:
            edges = pre.view(-1, block, block, width)
            edges.add_(centre.view(-1, block, 1, width)).add_(neighbour.view(-1, 1, block, width))
        else:
            j, i = graph.edge_index
            pre.add_(centre.index_select(0, i)).add_(neighbour.index_select(0, j))
        messages = F.silu(self.edge_mlp[2](F.silu(pre, inplace=inplace)), inplace=inplace)
        if block is not None:
            aggregated = messages.view(h.shape[0], -1, width).mean(1)
        else:
            summed = torch.zeros_like(h).index_add_(0, graph.edge_index[1], messages)
            aggregated = summed / graph.centre_counts
        return residual + self.node_mlp(torch.cat([h, aggregated], dim=-1))


class CSPNet(nn.Module):
    """The DiffCSP denoiser.

    Parameters
    ----------
    hidden_dim, num_layers, num_freqs
        Width, depth and Fourier frequencies (paper: 512 / 6 / 128; Perov-5: 256 / 4).
    time_dim
        Size of the time embedding concatenated to the node input (DiffCSP: 256).
    smooth_types
        ``False``: node input is an ``Embedding(100)`` of the atomic number (CSP).
        ``True``: node input is a ``Linear(100)`` of a (noisy) one-hot type vector and the
        network has a type head (ab-initio generation).
    layer_norm
        Pre-LayerNorm in each layer plus a final LayerNorm.
    self_edges
        Include the (i, i) pairs in each crystal's graph (DiffCSP: yes). ``False`` builds the
        n(n − 1) graph of distinct pairs, which is not the published model.
    """

    def __init__(
        self,
        hidden_dim: int = 512,
        num_layers: int = 6,
        num_freqs: int = 128,
        time_dim: int = 256,
        smooth_types: bool = False,
        layer_norm: bool = True,
        self_edges: bool = True,
    ) -> None:
        super().__init__()
        self.smooth_types = smooth_types
        self.self_edges = self_edges
        self.hidden_dim = hidden_dim
        if smooth_types:
            self.node_embedding: nn.Module = nn.Linear(MAX_ATOMIC_NUMBER, hidden_dim)
        else:
            self.node_embedding = nn.Embedding(MAX_ATOMIC_NUMBER, hidden_dim)
        self.atom_latent = nn.Linear(hidden_dim + time_dim, hidden_dim)
        self.layers = nn.ModuleList(
            CSPLayer(hidden_dim, num_freqs, layer_norm) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(hidden_dim) if layer_norm else nn.Identity()
        self.coord_head = nn.Linear(hidden_dim, 3, bias=False)
        self.lattice_head = nn.Linear(hidden_dim, 9, bias=False)
        self.type_head = nn.Linear(hidden_dim, MAX_ATOMIC_NUMBER) if smooth_types else None

    def build_graph(self, num_atoms: Tensor, atom_crystal: Tensor) -> CSPGraph:
        """The batch bookkeeping for :meth:`forward` (reuse it while the atom counts stay)."""
        return build_graph(num_atoms, atom_crystal, self_edges=self.self_edges)

    def forward(
        self,
        time_emb: Tensor,
        atom_input: Tensor,
        frac: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        atom_crystal: Tensor,
        graph: CSPGraph | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Predict the lattice ε, the coordinate scores and (generation) the type ε.

        Parameters
        ----------
        time_emb
            [B, time_dim] embedding of each crystal's time step.
        atom_input
            [N] atomic numbers (CSP) or [N, 100] type vectors (generation).
        frac
            [N, 3] noisy fractional coordinates.
        lattice
            [B, 3, 3] noisy lattices (rows are vectors).
        num_atoms
            [B] atoms per crystal.
        atom_crystal
            [N] crystal index of each atom.
        graph
            :meth:`build_graph` of ``num_atoms`` and ``atom_crystal`` (built here if ``None``).

        Returns
        -------
        tuple
            Lattice output [B, 3, 3], coordinate output [N, 3], type output [N, 100] or None.
        """
        if graph is None:
            graph = self.build_graph(num_atoms, atom_crystal)
        if self.smooth_types:
            h = self.node_embedding(atom_input)
        else:
            h = self.node_embedding(atom_input - 1)
        width = self.hidden_dim
        w_latent = self.atom_latent.weight
        crystal_latent = torch.addmm(self.atom_latent.bias, time_emb, w_latent[:, width:].T)
        h = h @ w_latent[:, :width].T + crystal_latent.index_select(0, atom_crystal)

        lattice_ips = (lattice @ lattice.transpose(-1, -2)).flatten(1)
        # the Fourier features depend on the coordinates only: once for all layers
        diff = wrapped_difference(
            frac.index_select(0, graph.pair_centre), frac.index_select(0, graph.pair_neighbour)
        )
        features = fourier_features(diff, self.layers[0].frequencies)
        sin_features, cos_features = features.chunk(2, dim=-1)
        for layer in self.layers:
            h = layer(h, graph, lattice_ips, sin_features, cos_features)
        h = self.final_norm(h)
        coord_out = self.coord_head(h)
        if graph.block is not None:
            pooled = h.view(len(num_atoms), graph.block, width).mean(1)
        else:
            pooled = torch.zeros(len(num_atoms), width, dtype=h.dtype, device=h.device)
            pooled = pooled.index_add_(0, atom_crystal, h) / num_atoms.clamp(min=1).unsqueeze(-1)
        lattice_out = torch.einsum(
            "bij,bjk->bik", self.lattice_head(pooled).view(-1, 3, 3), lattice
        )
        type_out = self.type_head(h) if self.type_head is not None else None
        return lattice_out, coord_out, type_out


__all__ = ["CSPGraph", "CSPLayer", "CSPNet", "build_graph"]
