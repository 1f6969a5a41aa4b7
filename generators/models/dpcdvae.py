"""DP-CDVAE (Pakornchote et al., Sci. Rep. 2024): the shared VAE plus a fractional-coordinate DDPM.

Training: one step t ~ U{1..T−1} per crystal; fractional coordinates are re-centred per crystal,
r_t = sqrt(ᾱ_t)·r_0 + sqrt(1−ᾱ_t)·ε with a re-centred Gaussian ε, and the denoiser sees
r_t − floor(r_t) and predicts ε (L2 summed over the 3 dims, mean per crystal). β follows DP-CDVAE's
sigmoid schedule (sigmoid(linspace(−10, 6, T))·(0.01 − 1e-10) + 1e-10) and ᾱ is the standard
cumulative product (the paper; the authors' code skips index 0, see ``docs/cdvae.md``). Types: a
separate level s, σ_s geometric 0.01 → 5 ascending with s, A_s = onehot + softmax(comp)·σ_s,
CE/σ_s.

The denoiser is the decoder named by ``model.decoder.type`` (GemNet-T in the ``paper``
configs, the DimeNet++-style substitute for ``dimenet_pp`` or a section without the key),
conditioned on z, a sinusoidal time embedding (dim 128, MLP 128 → 512 → 128, ReLU in the
``paper`` configs: ``time_activation``) and Fourier features of the fractional coordinates
(2π·2^k, k = 3..8: 36 dims). With ``model.decoder.conditioning: wide`` (the ``paper`` configs)
GemNet-T runs as published: atoms 128 + 256 + 128 + 36 = 548 wide after a two-layer MLP over
[Z-embedding, z, time, Fourier], the type head on the final 548-wide h
(:mod:`generators.models.decoder_base`); with ``project`` the conditioning is one Linear to the
hidden width and the type head sees [h, z, time, Fourier]. Its Cartesian vector output
is turned into a fractional ε prediction by L⁻¹, which makes ε̂ invariant to rotating the cell.

Sampling: r_T is a re-centred Gaussian; for j = T−1..1 the "modified" predictor
r ← a·recenter(bound(r)) + b·ε̂ + σ·ε with a = 1/sqrt(ᾱ_j), b = −a·sqrt(1−ᾱ_j),
σ = sqrt((1−ᾱ_{j−1})/(1−ᾱ_j)·β_j); types are set to the argmax of the predicted types each step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from tqdm.auto import tqdm

from generators.crystal import cart_to_frac
from generators.diffusion import (
    DDPMSchedule,
    SinusoidalTimeEmbedding,
    dpcdvae_sigmoid_betas,
    dyadic_frequencies,
    fourier_features,
    geometric_sigmas,
    strided_timesteps,
)
from generators.models.cdvae import DECODER_DEFAULTS
from generators.models.vae import (
    VAE_DEFAULTS,
    CrystalVAE,
    merge_config,
    recenter,
)

DPCDVAE_DEFAULTS: dict[str, Any] = merge_config(
    VAE_DEFAULTS,
    {
        "cost_lattice": 100.0,
        "cost_coord": 1.0,
        "mul_cost_coord": 10.0,
        "mul_cost_coord_epoch": 1000,
        "cost_type": 0.1,
        "val_cost_coord": 1.0,
        "val_cost_type": 0.1,
        "teacher_forcing_max_epoch": 400,
        "num_timesteps": 1000,
        "beta_start": 1e-10,
        "beta_end": 0.01,
        "type_sigma_begin": 0.01,
        "type_sigma_end": 5.0,
        "time_dim": 128,
        "time_hidden": 512,
        "time_activation": "silu",
        "time_input": "step",
        "fourier_k_min": 3,
        "fourier_k_max": 8,
        "sampling": {"predictor": "modified"},
        "decoder": DECODER_DEFAULTS,
    },
)
"""Paper defaults (``conf/ddpm_carbon_dime.yaml``), except two keys whose default keeps
checkpoints written before they existed loading as trained: ``time_activation`` (``silu``; the
published time MLP uses ReLU, which the ``paper`` configs set) and the decoder's
``conditioning`` (absent: ``project``; the ``paper`` configs set DP-CDVAE's ``wide``)."""

TIME_ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}
"""Activation of the time-embedding MLP (``model.time_activation``)."""


class DPCDVAE(CrystalVAE):
    """Diffusion-probabilistic CDVAE (generation and reconstruction)."""

    name: ClassVar[str] = "dpcdvae"
    defaults: ClassVar[dict[str, Any]] = DPCDVAE_DEFAULTS

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg["time_input"] not in {"step", "fraction"}:
            raise ValueError(f"time_input must be 'step' or 'fraction', not {cfg['time_input']!r}")
        if cfg["sampling"]["predictor"] not in {"modified", "ddpm"}:
            raise ValueError(f"unknown DP-CDVAE predictor {cfg['sampling']['predictor']!r}")
        self.num_timesteps = int(cfg["num_timesteps"])
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {self.num_timesteps}")
        betas = dpcdvae_sigmoid_betas(self.num_timesteps, cfg["beta_start"], cfg["beta_end"])
        self.schedule = DDPMSchedule(betas)
        type_sigmas = geometric_sigmas(
            cfg["type_sigma_begin"], cfg["type_sigma_end"], self.num_timesteps
        )
        self.register_buffer("type_sigmas", type_sigmas.float())
        self.register_buffer(
            "fourier_frequencies",
            dyadic_frequencies(int(cfg["fourier_k_min"]), int(cfg["fourier_k_max"])),
        )
        time_dim = int(cfg["time_dim"])
        if cfg["time_activation"] not in TIME_ACTIVATIONS:
            raise ValueError(
                f"time_activation must be one of {sorted(TIME_ACTIVATIONS)}, "
                f"not {cfg['time_activation']!r}"
            )
        self.time_embedding = nn.Sequential(
            SinusoidalTimeEmbedding(time_dim),
            nn.Linear(time_dim, int(cfg["time_hidden"])),
            TIME_ACTIVATIONS[cfg["time_activation"]](),
            nn.Linear(int(cfg["time_hidden"]), time_dim),
        )
        fourier_dim = 2 * 3 * len(self.fourier_frequencies)
        self.decoder = self.build_decoder(
            extra_atom_dim=time_dim + fourier_dim, type_head_sees_conditioning=True
        )

    def coordinate_weight(self, epoch: int) -> float:
        """cost_coord (1), multiplied by 10 from ``mul_cost_coord_epoch`` (1000) on."""
        weight = float(self.config["cost_coord"])
        if epoch >= int(self.config["mul_cost_coord_epoch"]):
            weight *= float(self.config["mul_cost_coord"])
        return weight

    def denoise(
        self,
        z: Tensor,
        frac: Tensor,
        atom_types: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        batch: Tensor,
        t: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Fractional ε prediction [N, 3] (re-centred) and type logits [N, 100].

        Parameters
        ----------
        frac
            Bounded noisy fractional coordinates in [0, 1).
        t
            [B] diffusion step per crystal.
        """
        time = t.float()
        if self.config["time_input"] == "fraction":
            time = time / self.num_timesteps
        extra = torch.cat(
            [
                self.time_embedding(time)[batch],
                fourier_features(frac, self.fourier_frequencies),
            ],
            dim=-1,
        )
        vector, type_logits = self.decoder(z, frac, atom_types, lattice, num_atoms, batch, extra)
        eps = cart_to_frac(vector, lattice, num_atoms)
        return recenter(eps, batch, len(num_atoms)), type_logits

    def noise_coordinates(
        self, frac_coords: Tensor, batch: Tensor, t: Tensor, noise: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The forward process at step t: bound(r_t) and the re-centred ε it used.

        Parameters
        ----------
        frac_coords
            [N, 3] clean fractional coordinates.
        batch
            [N] crystal of each atom.
        t
            [B] step of each crystal.
        noise
            [N, 3] standard Gaussian draws (re-centred here per crystal).

        Returns
        -------
        tuple
            r_t − floor(r_t) with r_t = sqrt(ᾱ_t)·r_0 + sqrt(1−ᾱ_t)·ε on re-centred r_0 and ε,
            and ε (the ε-prediction target).
        """
        crystals = len(t)
        r0 = recenter(frac_coords, batch, crystals)
        eps = recenter(noise, batch, crystals)
        rt = self.schedule.q_sample(r0, t[batch], eps)
        return rt - torch.floor(rt), eps

    def denoising_loss(
        self,
        batch: Batch,
        z: Tensor,
        lattice: Tensor,
        composition_logits: Tensor,
        epoch: int,
    ) -> dict[str, Tensor]:
        """ε-prediction loss on re-centred fractional coordinates and the type loss."""
        num_atoms = batch.num_atoms.view(-1)
        b = len(num_atoms)
        device = z.device
        t = torch.randint(1, self.num_timesteps, (b,), device=device)
        s = torch.randint(1, self.num_timesteps, (b,), device=device)
        bounded, eps = self.noise_coordinates(
            batch.frac_coords, batch.batch, t, torch.randn_like(batch.frac_coords)
        )
        type_sigma = self.type_sigmas[s][batch.batch]
        noisy_types = self.noisy_atom_types(
            batch.atom_types, composition_logits, batch.batch, type_sigma
        )
        eps_hat, type_logits = self.denoise(
            z, bounded, noisy_types, lattice, num_atoms, batch.batch, t
        )
        coord = ((eps_hat - eps) ** 2).sum(-1)
        return self.denoising_terms(
            coord, type_logits, batch.atom_types, type_sigma, batch.batch, b
        )

    def reverse_steps(self) -> list[int]:
        """Descending steps of the reverse chain.

        T−1, ..., 1 (999 steps), or an evenly strided subset of ``steps`` of them when
        ``configure_sampling(steps=...)`` or the config's ``sampling.steps`` asks for fewer
        (a quick-test option, not the paper's sampler).
        """
        options = getattr(self, "sampling_options", {})
        requested = options.get("steps", self.config["sampling"].get("steps"))
        last = self.num_timesteps - 1
        if requested is None or int(requested) >= last:
            return list(range(last, 0, -1))
        return strided_timesteps(last, int(requested))

    def sample_structure(
        self,
        z: Tensor,
        num_atoms: Tensor,
        lattice: Tensor,
        atom_types: Tensor,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """The reverse chain (T−1 steps by default) from a re-centred Gaussian."""
        predictor = self.config["sampling"]["predictor"]
        b = len(num_atoms)
        device = z.device
        batch = torch.repeat_interleave(torch.arange(b, device=device), num_atoms)
        n = int(num_atoms.sum())
        r = recenter(torch.randn(n, 3, generator=generator, device=device), batch, b)
        types = atom_types
        alpha_bar = self.schedule.alphas_cumprod
        steps = self.reverse_steps()
        pairs = list(zip(steps, [*steps[1:], 0], strict=True))
        for j, j_prev in tqdm(pairs, desc=f"{self.name} DDPM", disable=not self.chain_progress):
            bounded = r - torch.floor(r)
            t = torch.full((b,), j, device=device, dtype=torch.long)
            eps_hat, type_logits = self.denoise(z, bounded, types, lattice, num_atoms, batch, t)
            noise = recenter(torch.randn(n, 3, generator=generator, device=device), batch, b)
            centred = recenter(bounded, batch, b)
            if predictor == "modified":
                a = 1.0 / alpha_bar[j].sqrt()
                coeff = -a * (1.0 - alpha_bar[j]).sqrt()
                beta = 1.0 - alpha_bar[j] / alpha_bar[j_prev]  # β_j for consecutive steps
                sigma = ((1.0 - alpha_bar[j_prev]) / (1.0 - alpha_bar[j]) * beta).sqrt()
                r = a * centred + coeff * eps_hat + sigma * noise
            else:
                r = self.schedule.posterior_step(centred, eps_hat, j, j_prev, noise)
            types = type_logits.argmax(-1) + 1
        return r - torch.floor(r), types


__all__ = ["DPCDVAE", "DPCDVAE_DEFAULTS", "TIME_ACTIVATIONS"]
