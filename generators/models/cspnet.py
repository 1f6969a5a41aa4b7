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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from generators.crystal import MAX_ATOMIC_NUMBER
from generators.diffusion import fourier_features, integer_frequencies, wrapped_difference
from generators.graphs import fully_connected_edges


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

    def forward(
        self,
        h: Tensor,
        frac: Tensor,
        lattice_ips: Tensor,
        edge_index: Tensor,
        edge_crystal: Tensor,
    ) -> Tensor:
        """Update node states.

        Parameters
        ----------
        h
            [N, H] node states.
        frac
            [N, 3] (noisy) fractional coordinates.
        lattice_ips
            [B, 9] flattened L·Lᵀ per crystal.
        edge_index
            [2, E] (j, i) pairs (neighbour, centre).
        edge_crystal
            [E] crystal index of each edge.
        """
        residual = h
        h = self.norm(h)
        j, i = edge_index
        diff = fourier_features(wrapped_difference(frac[i], frac[j]), self.frequencies)
        messages = self.edge_mlp(torch.cat([h[i], h[j], lattice_ips[edge_crystal], diff], dim=-1))
        aggregated = scatter(messages, i, dim=0, dim_size=h.shape[0], reduce="mean")
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

    def forward(
        self,
        time_emb: Tensor,
        atom_input: Tensor,
        frac: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        atom_crystal: Tensor,
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

        Returns
        -------
        tuple
            Lattice output [B, 3, 3], coordinate output [N, 3], type output [N, 100] or None.
        """
        if self.smooth_types:
            h = self.node_embedding(atom_input)
        else:
            h = self.node_embedding(atom_input - 1)
        h = self.atom_latent(torch.cat([h, time_emb[atom_crystal]], dim=-1))
        edge_index = fully_connected_edges(num_atoms, self_loops=self.self_edges)
        edge_crystal = atom_crystal[edge_index[1]]
        lattice_ips = (lattice @ lattice.transpose(-1, -2)).flatten(1)
        for layer in self.layers:
            h = layer(h, frac, lattice_ips, edge_index, edge_crystal)
        h = self.final_norm(h)
        coord_out = self.coord_head(h)
        pooled = scatter(h, atom_crystal, dim=0, dim_size=len(num_atoms), reduce="mean")
        lattice_out = torch.einsum(
            "bij,bjk->bik", self.lattice_head(pooled).view(-1, 3, 3), lattice
        )
        type_out = self.type_head(h) if self.type_head is not None else None
        return lattice_out, coord_out, type_out


__all__ = ["CSPLayer", "CSPNet"]
