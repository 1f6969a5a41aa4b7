"""The coordinate/type denoisers of CDVAE and DP-CDVAE and the factory that picks one.

:func:`build_decoder` reads ``model.decoder.type``:

* ``gemnet_t`` — the papers' periodic GemNet-T (:mod:`generators.models.gemnet_t`), the default
  of the ``paper`` configurations;
* ``dimenet_pp`` — :class:`PeriodicDirectionalDecoder` below, the DimeNet++-style substitute
  this project used before GemNet-T existed here. A decoder section **without** ``type`` builds
  it, so checkpoints written before the key existed load unchanged.

**The DimeNet++-style decoder** is a *simpler* periodic equivariant decoder of the same family
and sizes as GemNet-T — DimeNet++-style directional message passing:

* atoms: Embedding(Z) concatenated with z (and, for DP-CDVAE, the time embedding and Fourier
  features) through Linear(hidden + latent (+ extra) → hidden), as CDVAE's ``atom_latent_emb``;
* edges: the periodic radius graph (7 Å, ≤ 20 neighbours) with periodic triplets, a Bessel
  rbf and DimeNet's spherical Fourier–Bessel sbf; messages m_ji are updated by PyG's
  ``InteractionPPBlock`` (triplet interactions k → j → i through the angle at j);
* outputs, summed over the blocks: per edge a scalar s_ji(m_ji, rbf) multiplies the unit edge
  vector, Σ_j s_ji·(x_j − x_i)/|x_j − x_i| gives a rotation-equivariant 3-vector per atom
  (CDVAE's ``pred_cart_coord_diff``); per atom the scattered messages give invariant features
  for the type head Linear(hidden → 100) (DP-CDVAE: Linear(hidden + latent + extra → 100)).

The outputs are invariant to permuting atoms (they permute with them), to translating all
fractional coordinates and — the vectors rotate with the cell — equivariant to rotations of the
lattice. ``docs/cdvae.md`` compares the two decoders on the memorisation test.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn.models.dimenet import BesselBasisLayer, InteractionPPBlock
from torch_geometric.utils import scatter

from generators.models.decoder_base import LatentConditionedDecoder
from generators.models.dimenet_pbc import PeriodicSphericalBasis, periodic_geometry
from generators.models.gemnet_t import GemNetTDecoder


class _EdgeOutput(nn.Module):
    """Per-block readout: an edge scalar (for the vector) and per-atom invariant features."""

    def __init__(self, num_radial: int, hidden: int, num_layers: int) -> None:
        super().__init__()
        self.lin_rbf = nn.Linear(num_radial, hidden, bias=False)
        layers: list[nn.Module] = []
        for _ in range(num_layers):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.edge_mlp = nn.Sequential(*layers, nn.Linear(hidden, 1))
        self.atom_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())

    def forward(
        self, m: Tensor, rbf: Tensor, unit: Tensor, centre: Tensor, num_nodes: int
    ) -> tuple[Tensor, Tensor]:
        gated = self.lin_rbf(rbf) * m
        scalar = self.edge_mlp(gated)  # [E, 1]
        vector = scatter(scalar * unit, centre, dim=0, dim_size=num_nodes, reduce="sum")
        atom = self.atom_mlp(scatter(gated, centre, dim=0, dim_size=num_nodes, reduce="sum"))
        return vector, atom


class PeriodicDirectionalDecoder(LatentConditionedDecoder):
    """Periodic equivariant denoiser conditioned on z: coordinate vectors and type logits.

    Parameters
    ----------
    latent_dim
        Size of z (256).
    hidden_dim
        Atom and edge embedding size (128).
    num_blocks
        Interaction blocks (3, as GemNet-T's num_blocks).
    extra_atom_dim
        Size of extra per-atom conditioning features (DP-CDVAE: time embedding + Fourier
        features); 0 for CDVAE.
    type_head_sees_conditioning
        If true, the type head sees [h, z, extra] (DP-CDVAE); otherwise h only (CDVAE).
    int_emb_size, basis_emb_size, num_spherical, num_radial, envelope_exponent,
    num_before_skip, num_after_skip, num_output_layers
        DimeNet++ block sizes.
    cutoff, max_neighbors
        Periodic radius graph (7 Å, 20 neighbours).
    """

    def __init__(
        self,
        latent_dim: int = 256,
        hidden_dim: int = 128,
        num_blocks: int = 3,
        extra_atom_dim: int = 0,
        type_head_sees_conditioning: bool = False,
        int_emb_size: int = 64,
        basis_emb_size: int = 8,
        num_spherical: int = 7,
        num_radial: int = 6,
        cutoff: float = 7.0,
        max_neighbors: int = 20,
        envelope_exponent: int = 5,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 2,
    ) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.max_neighbors = max_neighbors
        act = nn.functional.silu
        self.init_conditioning(hidden_dim, latent_dim, extra_atom_dim)
        self.rbf = BesselBasisLayer(num_radial, cutoff, envelope_exponent)
        self.sbf = PeriodicSphericalBasis(num_spherical, num_radial, cutoff, envelope_exponent)
        self.edge_rbf = nn.Linear(num_radial, hidden_dim)
        self.edge_emb = nn.Linear(3 * hidden_dim, hidden_dim)
        self.interactions = nn.ModuleList(
            InteractionPPBlock(
                hidden_dim,
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
        self.outputs = nn.ModuleList(
            _EdgeOutput(num_radial, hidden_dim, num_output_layers) for _ in range(num_blocks + 1)
        )
        self.init_type_head(hidden_dim, latent_dim, extra_atom_dim, type_head_sees_conditioning)

    def propagate(
        self, h: Tensor, frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Directional message passing: per-atom vectors [N, 3] and summed atom features."""
        geometry = periodic_geometry(
            frac_coords, lattice, num_atoms, self.cutoff, self.max_neighbors
        )
        graph, tri = geometry.graph, geometry.triplets
        j, i = graph.edge_index
        n = len(h)
        rbf = self.rbf(graph.distances)
        sbf = self.sbf(graph.distances, geometry.angles, tri.idx_kj)
        act = nn.functional.silu
        h_i, h_j = h.index_select(0, i), h.index_select(0, j)
        m = act(self.edge_emb(torch.cat([h_i, h_j, act(self.edge_rbf(rbf))], dim=-1)))
        unit = graph.edge_vectors / graph.distances.unsqueeze(-1)
        vector, atom = self.outputs[0](m, rbf, unit, i, n)
        for interaction, output in zip(self.interactions, self.outputs[1:], strict=True):
            m = interaction(m, rbf, sbf, tri.idx_kj, tri.idx_ji)
            v, a = output(m, rbf, unit, i, n)
            vector = vector + v
            atom = atom + a
        return vector, atom


DECODER_TYPES: dict[str, type[nn.Module]] = {
    "gemnet_t": GemNetTDecoder,
    "dimenet_pp": PeriodicDirectionalDecoder,
}
"""Decoder classes by ``model.decoder.type``."""

LEGACY_DECODER_TYPE = "dimenet_pp"
"""What a decoder section without ``type`` builds (checkpoints from before the key existed)."""

_BUILT_BY_FACTORY = {"latent_dim", "extra_atom_dim", "type_head_sees_conditioning"}


def _options(cls: type[nn.Module]) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"} - _BUILT_BY_FACTORY


def build_decoder(
    config: dict[str, Any],
    latent_dim: int,
    extra_atom_dim: int = 0,
    type_head_sees_conditioning: bool = False,
) -> nn.Module:
    """Build the decoder that ``config`` (the ``model.decoder`` section) names.

    Keys that only the *other* decoder type takes are ignored, so that
    ``--set model.decoder.type=gemnet_t`` works over a configuration written for
    ``dimenet_pp`` (and back); a key that no decoder takes is an error.

    Parameters
    ----------
    config
        ``type`` (``gemnet_t`` or ``dimenet_pp``; missing: ``dimenet_pp``) and the decoder's
        keyword arguments.
    latent_dim, extra_atom_dim, type_head_sees_conditioning
        Set by the model (CDVAE: no extra features, type head on h; DP-CDVAE: time embedding +
        Fourier features, type head on [h, z, extra]).

    Raises
    ------
    ValueError
        For an unknown type or a key no decoder takes.
    """
    options = dict(config)
    kind = options.pop("type", LEGACY_DECODER_TYPE)
    if kind not in DECODER_TYPES:
        raise ValueError(
            f"unknown decoder type {kind!r}; choose one of {', '.join(sorted(DECODER_TYPES))}"
        )
    own = _options(DECODER_TYPES[kind])
    known = set().union(*(_options(cls) for cls in DECODER_TYPES.values()))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"decoder {kind!r}: unknown option(s) {unknown}")
    kwargs = {key: value for key, value in options.items() if key in own}
    return DECODER_TYPES[kind](
        latent_dim=latent_dim,
        extra_atom_dim=extra_atom_dim,
        type_head_sees_conditioning=type_head_sees_conditioning,
        **kwargs,
    )


__all__ = ["DECODER_TYPES", "LEGACY_DECODER_TYPE", "PeriodicDirectionalDecoder", "build_decoder"]
