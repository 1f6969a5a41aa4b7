"""ContinuouSP's energy network: a CGCNN-like continuous graph convolution (models.md §4).

The graph holds *all* periodic neighbour pairs within r = radius_rate · (V/N)^(1/3) (3.0 in the
paper; pairs closer than 0.01 Å are dropped). Every message is multiplied by the edge weight
w = cos(π d / r) + 1, which vanishes at d = r, so the energy is continuous when a neighbour
crosses the cutoff; the radius depends only on the density, so a supercell has the same
neighbour shells and, after the mean pool, the same energy as its cell.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from generators.crystal import MAX_ATOMIC_NUMBER
from generators.graphs import PeriodicGraph, radius_graph_pbc

MIN_PAIR_DISTANCE = 0.01
"""Pairs closer than this (Å) are not edges (an atom and itself in the home cell)."""


class GaussianSmearing(nn.Module):
    """Gaussian basis of distances: centres linspace(start, stop, size), width = rate · spacing.

    Parameters
    ----------
    start, stop
        Range of the centres (Å).
    size
        Number of centres.
    width_rate
        Width of each Gaussian in units of the centre spacing (3.0 in ContinuouSP).
    """

    def __init__(
        self, start: float = 0.0, stop: float = 20.0, size: int = 32, width_rate: float = 3.0
    ) -> None:
        super().__init__()
        centres = torch.linspace(start, stop, size)
        width = width_rate * float(centres[1] - centres[0]) if size > 1 else width_rate
        self.register_buffer("centres", centres)
        self.coefficient = -0.5 / width**2

    def forward(self, distances: Tensor) -> Tensor:
        """[E] distances -> [E, size] features."""
        diff = distances.unsqueeze(-1) - self.centres.to(distances.dtype)
        return torch.exp(self.coefficient * diff * diff)


class ContinuousGConv(nn.Module):
    """Gated convolution: m = w · sigmoid(z1) · z2, (z1, z2) = (lin1 x_i + lin2 x_j) ⊙ lin3 e.

    Parameters
    ----------
    node_size
        Atom feature size d.
    edge_size
        Edge feature size (number of Gaussian centres).
    """

    def __init__(self, node_size: int, edge_size: int) -> None:
        super().__init__()
        self.lin_centre = nn.Linear(node_size, 2 * node_size)
        self.lin_neighbour = nn.Linear(node_size, 2 * node_size)
        self.lin_edge = nn.Linear(edge_size, 2 * node_size)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, weight: Tensor) -> Tensor:
        """Update atom features ``x`` [N, d]; ``edge_index`` is (neighbour j, centre i)."""
        j, i = edge_index
        z = (self.lin_centre(x)[i] + self.lin_neighbour(x)[j]) * self.lin_edge(edge_attr)
        z1, z2 = z.chunk(2, dim=-1)
        message = weight.unsqueeze(-1) * torch.sigmoid(z1) * z2
        aggregated = torch.zeros_like(x).index_add_(0, i, message)
        return nn.functional.softplus(torch.tanh(aggregated) + x)


class EnergyGNN(nn.Module):
    """E_θ of a crystal batch: embeddings, continuous convolutions, mean pool, MLP head.

    Parameters
    ----------
    embedding_size
        Atom feature size d (tanh of a 100-way embedding).
    edge_feat_size
        Gaussian centres over [0, gaussian_stop] Å.
    fc_size
        Width of the spectral-normalised head.
    num_conv_layers, num_fc_layers
        Depths; the head has ``num_fc_layers - 1`` hidden layers and a final Linear -> 1.
    radius_rate
        r = radius_rate · (V/N)^(1/3).
    gaussian_stop
        Last Gaussian centre (Å).
    """

    def __init__(
        self,
        embedding_size: int = 32,
        edge_feat_size: int = 32,
        fc_size: int = 32,
        num_conv_layers: int = 3,
        num_fc_layers: int = 2,
        radius_rate: float = 3.0,
        gaussian_stop: float = 20.0,
    ) -> None:
        super().__init__()
        self.radius_rate = float(radius_rate)
        self.embedding = nn.Embedding(MAX_ATOMIC_NUMBER, embedding_size)
        self.smearing = GaussianSmearing(0.0, gaussian_stop, edge_feat_size, 3.0)
        self.convs = nn.ModuleList(
            ContinuousGConv(embedding_size, edge_feat_size) for _ in range(num_conv_layers)
        )
        layers: list[nn.Module] = []
        width = embedding_size
        for _ in range(num_fc_layers - 1):
            layers += [spectral_norm(nn.Linear(width, fc_size)), nn.Softplus()]
            width = fc_size
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def radius(self, lattice: Tensor, num_atoms: Tensor) -> Tensor:
        """Per-crystal cutoff radius_rate · (V/N)^(1/3), [B]."""
        volume = torch.linalg.det(lattice).abs()
        return self.radius_rate * (volume / num_atoms.to(lattice.dtype)).pow(1.0 / 3.0)

    def graph(self, cart_coords: Tensor, lattice: Tensor, num_atoms: Tensor) -> PeriodicGraph:
        """All periodic pairs within the radius (no neighbour cap), differentiable vectors."""
        return radius_graph_pbc(
            cart_coords,
            lattice,
            num_atoms,
            self.radius(lattice, num_atoms).detach(),
            max_neighbors=None,
            min_distance=MIN_PAIR_DISTANCE,
        )

    def forward(
        self, cart_coords: Tensor, atom_types: Tensor, lattice: Tensor, num_atoms: Tensor
    ) -> Tensor:
        """Network energy E_θ per crystal, [B].

        Parameters
        ----------
        cart_coords
            [N, 3] Cartesian positions (Å), not necessarily wrapped.
        atom_types
            [N] atomic numbers 1..100.
        lattice
            [B, 3, 3] cells (rows are vectors); any basis of the lattice.
        num_atoms
            [B] atoms per crystal.
        """
        # the geometry stays in full precision under autocast (volumes and solves have no
        # bfloat16/float16 kernels); only the learned layers below follow autocast
        with torch.autocast(device_type=lattice.device.type, enabled=False):
            graph = self.graph(cart_coords, lattice, num_atoms)
            radius = self.radius(lattice, num_atoms)  # differentiable: r depends on the cell
            crystal = torch.repeat_interleave(
                torch.arange(len(num_atoms), device=lattice.device), num_atoms
            )
            centre = graph.edge_index[1]
            edge_radius = radius[crystal[centre]]
            # d ≤ r up to rounding; clamp so that the weight never goes (slightly) negative
            ratio = (graph.distances / edge_radius).clamp(max=1.0)
            weight = torch.cos(math.pi * ratio) + 1.0
            edge_attr = self.smearing(graph.distances)
        x = torch.tanh(self.embedding(atom_types - 1))
        for conv in self.convs:
            x = conv(x, graph.edge_index, edge_attr, weight)
        pooled = torch.zeros(len(num_atoms), x.shape[-1], dtype=x.dtype, device=x.device)
        pooled = pooled.index_add_(0, crystal, x) / num_atoms.to(x.dtype).unsqueeze(-1)
        return self.head(pooled).squeeze(-1)


def density_penalty(
    lattice: Tensor, num_atoms: Tensor, expected_density: float = 0.05, weight: float = 1.0
) -> Tensor:
    """Density penalty weight · (log(ρ / ρ0))², ρ = N / |det cell| (Å⁻³), per crystal [B]."""
    density = num_atoms.to(lattice.dtype) / torch.linalg.det(lattice).abs()
    return weight * torch.log(density / expected_density) ** 2


__all__ = ["ContinuousGConv", "EnergyGNN", "GaussianSmearing", "density_penalty"]
