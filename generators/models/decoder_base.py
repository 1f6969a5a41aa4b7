"""What the CDVAE-family decoders share: conditioning on z and the type head.

Both decoders (:class:`~generators.models.gemnet_t.GemNetTDecoder` and the DimeNet++-style
:class:`~generators.models.decoders.PeriodicDirectionalDecoder`) embed atom i from
[Embedding(Z_i), z_b(i), extra_i] (DP-CDVAE's extra features are its time embedding and Fourier
features), run their own periodic message passing, and predict type logits with Linear(→ 100)
from their atom features. Two conditionings (``conditioning``):

* ``project`` — h_i = Linear([Embedding(Z_i), z, extra] → hidden), CDVAE's ``atom_latent_emb``;
  the atoms stay ``hidden`` wide and the type head reads the final h (or, with
  ``type_head_sees_conditioning``, [h, z, extra]);
* ``wide`` — DP-CDVAE's published GemNet: the atoms are hidden + latent + extra wide
  (128 + 256 + 128 + 36 = 548), h_i = MLP([Embedding(Z_i), z, extra]) with
  Linear(W, W), ReLU, Linear(W, W), and the type head Linear(W → 100) reads the final wide h.

A subclass implements :meth:`LatentConditionedDecoder.propagate`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from generators.crystal import MAX_ATOMIC_NUMBER

CONDITIONINGS = ("project", "wide")
"""How z and the extra features enter the atom embeddings (module docstring)."""


class LatentConditionedDecoder(nn.Module):
    """Base class: conditioning of the atom embedding on z (and extras) and the type head.

    Subclasses call :meth:`init_conditioning` first and :meth:`init_type_head` last in their
    ``__init__`` (the parameter names ``atom_emb``, ``atom_latent_emb`` and ``fc_atom`` are those
    of existing checkpoints).
    """

    type_head_sees_conditioning: bool

    def init_conditioning(
        self,
        hidden_dim: int,
        latent_dim: int,
        extra_atom_dim: int,
        conditioning: str = "project",
    ) -> int:
        """Create ``atom_emb`` (Embedding(101, hidden)) and ``atom_latent_emb``.

        Parameters
        ----------
        conditioning
            ``project`` (Linear to ``hidden_dim``) or ``wide`` (MLP at hidden + latent + extra).

        Returns
        -------
        int
            The width of the atom embeddings h.

        Raises
        ------
        ValueError
            For another ``conditioning``.
        """
        if conditioning not in CONDITIONINGS:
            raise ValueError(
                f"decoder conditioning must be one of {CONDITIONINGS}, not {conditioning!r}"
            )
        self.atom_emb = nn.Embedding(MAX_ATOMIC_NUMBER + 1, hidden_dim)
        nn.init.uniform_(self.atom_emb.weight, -math.sqrt(3), math.sqrt(3))
        width = hidden_dim + latent_dim + extra_atom_dim
        if conditioning == "wide":
            self.atom_latent_emb: nn.Module = nn.Sequential(
                nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
            )
            return width
        self.atom_latent_emb = nn.Linear(width, hidden_dim)
        return hidden_dim

    def init_type_head(
        self,
        feature_dim: int,
        latent_dim: int,
        extra_atom_dim: int,
        type_head_sees_conditioning: bool,
    ) -> None:
        """Create ``fc_atom``: Linear(features (+ latent + extra) → 100)."""
        self.type_head_sees_conditioning = type_head_sees_conditioning
        extra = latent_dim + extra_atom_dim if type_head_sees_conditioning else 0
        self.fc_atom = nn.Linear(feature_dim + extra, MAX_ATOMIC_NUMBER)

    def propagate(
        self, h: Tensor, frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Message passing from the conditioned embeddings h [N, hidden].

        Returns
        -------
        tuple
            Per-atom Cartesian vectors [N, 3] and per-atom invariant features for the type head.
        """
        raise NotImplementedError

    def forward(
        self,
        z: Tensor,
        frac_coords: Tensor,
        atom_types: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        batch: Tensor,
        extra_atom_features: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predict per-atom Cartesian vectors [N, 3] and type logits [N, 100].

        Parameters
        ----------
        z
            [B, latent_dim] latent codes.
        frac_coords, atom_types, lattice, num_atoms, batch
            The (noisy) crystal batch.
        extra_atom_features
            [N, extra_atom_dim] or ``None``.
        """
        conditioning = [z[batch]]
        if extra_atom_features is not None:
            conditioning.append(extra_atom_features)
        cond = torch.cat(conditioning, dim=-1)
        h = self.atom_latent_emb(torch.cat([self.atom_emb(atom_types), cond], dim=-1))
        vector, features = self.propagate(h, frac_coords, lattice, num_atoms)
        if self.type_head_sees_conditioning:
            features = torch.cat([features, cond], dim=-1)
        return vector, self.fc_atom(features)


__all__ = ["CONDITIONINGS", "LatentConditionedDecoder"]
