"""CDVAE (Xie et al., ICLR 2022): the shared VAE plus a noise-conditional score decoder.

Training: one Cartesian noise level σ (geometric 10 → 0.01, 50 levels) and one type noise level
σ_type (geometric 5 → 0.01) per crystal; noisy types are drawn from onehot + softmax(comp)·σ_type.
The decoder (``model.decoder.type``: the papers' periodic GemNet-T,
:class:`~generators.models.gemnet_t.GemNetTDecoder`, in the ``paper`` configs; the older
DimeNet++-style :class:`~generators.models.decoders.PeriodicDirectionalDecoder` for
``dimenet_pp`` and for configs without the key) predicts a Cartesian vector per atom and type
logits. The type noise and the per-crystal loss means are :class:`CrystalVAE`'s. Coordinate loss:
target = (min-image x_true − x_noisy)/σ², prediction/σ, 0.5·‖pred/σ − target‖²·σ², averaged per
crystal and then over the batch; type loss: CE/σ_type, mean per crystal. The noise is added in
the cell the decoder sees (the true one under teacher forcing, else the predicted one) and the
target displacement is measured in the true cell, as in the original.

Sampling: annealed Langevin dynamics over the σ levels with ``steps_per_level`` (100) steps of
size step_lr·(σ/σ_L)² (step_lr 1e-4): x ← x + step·pred/σ + sqrt(2·step)·N(0, I), types set to
the argmax of the predicted types at every step.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch_geometric.data import Batch
from tqdm.auto import tqdm

from generators.crystal import cart_to_frac, frac_to_cart, per_atom_lattice
from generators.diffusion import geometric_sigmas
from generators.models.vae import VAE_DEFAULTS, CrystalVAE, merge_config

DECODER_DEFAULTS: dict[str, Any] = {
    "hidden_dim": 128,
    "num_blocks": 3,
    "cutoff": 7.0,
    "max_neighbors": 20,
}
"""Keys both decoder types share. No ``type`` here on purpose: a decoder section without it
builds ``dimenet_pp`` (checkpoints from before GemNet-T); the ``paper`` configs set
``type: gemnet_t`` and GemNet-T's sizes."""

CDVAE_DEFAULTS: dict[str, Any] = merge_config(
    VAE_DEFAULTS,
    {
        "cost_coord": 10.0,
        "cost_type": 1.0,
        "val_cost_coord": 10.0,
        "val_cost_type": 1.0,
        "sigma_begin": 10.0,
        "sigma_end": 0.01,
        "type_sigma_begin": 5.0,
        "type_sigma_end": 0.01,
        "num_noise_level": 50,
        "sampling": {"steps_per_level": 100, "step_lr": 1e-4, "min_sigma": 0.0},
        "decoder": DECODER_DEFAULTS,
    },
)
"""Paper defaults (``conf/model/vae.yaml``, ``decoder/gemnet.yaml``, ``scripts/evaluate.py``)."""

_IMAGES = torch.cartesian_prod(*[torch.arange(-1.0, 2.0)] * 3)  # [27, 3]


def min_image_difference(
    frac_to: Tensor, frac_from: Tensor, lattice: Tensor, num_atoms: Tensor
) -> Tensor:
    """Shortest periodic Cartesian vector from ``frac_from`` to ``frac_to`` [N, 3].

    The fractional difference is wrapped to [−0.5, 0.5) and the 27 neighbouring images are
    searched, so the result is the true minimum image also in skewed cells.
    """
    diff = frac_to - frac_from
    diff = diff - torch.round(diff)
    candidates = diff.unsqueeze(1) + _IMAGES.to(diff).unsqueeze(0)  # [N, 27, 3]
    cart = torch.einsum("nmi,nij->nmj", candidates, per_atom_lattice(lattice, num_atoms))
    best = cart.norm(dim=-1).argmin(dim=1)
    return cart[torch.arange(len(cart), device=cart.device), best]


def noise_coordinates(
    frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """Add Cartesian ``noise`` [N, 3] (Å) to a crystal batch: noisy coordinates and the way back.

    Returns
    -------
    tuple of Tensor
        The noisy fractional coordinates, wrapped into [0, 1), and the minimum-image Cartesian
        displacement d from them back to ``frac_coords`` (CDVAE's score target is d / σ²).
    """
    cart = frac_to_cart(frac_coords, lattice, num_atoms)
    noisy_frac = torch.remainder(cart_to_frac(cart + noise, lattice, num_atoms), 1.0)
    return noisy_frac, min_image_difference(frac_coords, noisy_frac, lattice, num_atoms)


class CDVAE(CrystalVAE):
    """Crystal Diffusion Variational Autoencoder (generation and reconstruction)."""

    name: ClassVar[str] = "cdvae"
    defaults: ClassVar[dict[str, Any]] = CDVAE_DEFAULTS

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.config
        self.decoder = self.build_decoder()
        levels = int(cfg["num_noise_level"])
        sigmas = geometric_sigmas(cfg["sigma_begin"], cfg["sigma_end"], levels)
        type_sigmas = geometric_sigmas(cfg["type_sigma_begin"], cfg["type_sigma_end"], levels)
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("type_sigmas", type_sigmas.float())

    def coordinate_weight(self, epoch: int) -> float:
        """cost_coord (10)."""
        return float(self.config["cost_coord"])

    def denoising_loss(
        self,
        batch: Batch,
        z: Tensor,
        lattice: Tensor,
        composition_logits: Tensor,
        epoch: int,
    ) -> dict[str, Tensor]:
        """Noise coordinates (Cartesian) and types, and score the decoder's predictions."""
        num_atoms = batch.num_atoms.view(-1)
        b = len(num_atoms)
        device = z.device
        level = torch.randint(0, len(self.sigmas), (b,), device=device)
        type_level = torch.randint(0, len(self.type_sigmas), (b,), device=device)
        sigma = self.sigmas[level][batch.batch].unsqueeze(-1)
        type_sigma = self.type_sigmas[type_level][batch.batch]
        noise = torch.randn_like(batch.frac_coords) * sigma
        noisy_frac, _ = noise_coordinates(batch.frac_coords, lattice, num_atoms, noise)
        # the target is the way back measured in the true cell, as in the original: the same as
        # the noise under teacher forcing, the true-cell image of it on a predicted cell
        true_lattice = batch.lattice.view(-1, 3, 3)
        target = min_image_difference(batch.frac_coords, noisy_frac, true_lattice, num_atoms)
        noisy_types = self.noisy_atom_types(
            batch.atom_types, composition_logits, batch.batch, type_sigma
        )
        pred, type_logits = self.decoder(
            z, noisy_frac, noisy_types, lattice, num_atoms, batch.batch
        )
        target = target / sigma**2
        coord = 0.5 * ((pred / sigma - target) ** 2).sum(-1) * sigma.squeeze(-1) ** 2
        return self.denoising_terms(
            coord, type_logits, batch.atom_types, type_sigma, batch.batch, b
        )

    def langevin_steps_per_level(self) -> int:
        """Langevin steps per σ level.

        The config's ``sampling.steps_per_level`` (100), or ``steps_per_level`` / ``steps``
        (total decoder calls) from ``configure_sampling``.
        """
        options = getattr(self, "sampling_options", {})
        if options.get("steps_per_level") is not None:
            steps = int(options["steps_per_level"])
        elif options.get("steps") is not None:
            steps = int(options["steps"]) // len(self.sigmas)
        else:
            steps = int(self.config["sampling"]["steps_per_level"])
        if steps < 1:
            raise ValueError(
                f"CDVAE needs >= 1 Langevin step per level ({len(self.sigmas)} levels), got {steps}"
            )
        return steps

    def sample_structure(
        self,
        z: Tensor,
        num_atoms: Tensor,
        lattice: Tensor,
        atom_types: Tensor,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """Annealed Langevin dynamics from uniform fractional coordinates."""
        options = self.config["sampling"]
        steps = self.langevin_steps_per_level()
        step_lr = float(options["step_lr"])
        min_sigma = float(options["min_sigma"])
        batch = torch.repeat_interleave(torch.arange(len(num_atoms), device=z.device), num_atoms)
        n = int(num_atoms.sum())
        frac = torch.rand(n, 3, generator=generator, device=z.device)
        types = atom_types
        sigma_last = float(self.sigmas[-1])
        total = len(self.sigmas) * steps
        # the cell and its inverse per atom, once for the whole chain (frac_to_cart and
        # cart_to_frac with the lattice fixed)
        atom_lattice = per_atom_lattice(lattice, num_atoms)
        atom_inverse = per_atom_lattice(torch.linalg.inv(lattice), num_atoms)
        with tqdm(
            total=total, desc=f"{self.name} Langevin", disable=not self.chain_progress
        ) as bar:
            for sigma_t in self.sigmas.tolist():
                if sigma_t < min_sigma:
                    break
                step = step_lr * (sigma_t / sigma_last) ** 2
                for _ in range(steps):
                    noise = torch.randn(n, 3, generator=generator, device=z.device)
                    pred, type_logits = self.decoder(z, frac, types, lattice, num_atoms, batch)
                    cart = torch.einsum("ni,nij->nj", frac, atom_lattice)
                    cart = cart + step * pred / sigma_t + math.sqrt(2 * step) * noise
                    frac = torch.remainder(torch.einsum("ni,nij->nj", cart, atom_inverse), 1.0)
                    types = type_logits.argmax(-1) + 1
                    bar.update(1)
        return frac, types


__all__ = ["CDVAE", "CDVAE_DEFAULTS", "min_image_difference", "noise_coordinates"]
