"""DiffCSP (Jiao et al., NeurIPS 2023): joint diffusion of lattice and fractional coordinates.

* Lattice: DDPM on the 3×3 matrix with the cosine schedule, ε-prediction, prior N(0, I).
* Fractional coordinates: score matching with a wrapped normal, σ geometric 0.005 → 0.5,
  target ∇log N_w(σε; σ)/sqrt(λ_t⁻¹) with the Monte-Carlo normaliser λ_t⁻¹, prior U(0, 1).
* Atom types (``mode: generate`` only): continuous one-hot DDPM, same cosine schedule, ε-MSE.
* Sampling: predictor–corrector in the code's order (corrector, then predictor), 2 network
  calls per step; the lattice and the types follow the DDPM posterior.

Sign convention: the network predicts the *score* (DiffCSP's ``d_log_p_wrapped_normal`` is
its negative), so the updates read F ← F + step·pred·sqrt(λ⁻¹) instead of the code's minus;
the two are the same algorithm.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Batch

from generators.crystal import MAX_ATOMIC_NUMBER
from generators.diffusion import (
    DDPMSchedule,
    SinusoidalTimeEmbedding,
    WrappedNormalSchedule,
    make_betas,
    strided_timesteps,
)
from generators.models.base import CrystalGenerator
from generators.models.cspnet import CSPNet

DEFAULTS: dict[str, Any] = {
    "mode": "csp",
    "hidden_dim": 512,
    "num_layers": 6,
    "num_freqs": 128,
    "time_dim": 256,
    "layer_norm": True,
    "self_edges": True,
    "timesteps": 1000,
    "beta_schedule": {"kind": "cosine", "s": 0.008},
    "sigma_begin": 0.005,
    "sigma_end": 0.5,
    "score_norm_samples": 10_000,
    "cost_lattice": 1.0,
    "cost_coord": 1.0,
    "cost_type": 20.0,
    "max_atoms": 100,
    "step_lr": {"csp": 1e-5, "csp_multi": 1e-5, "generate": 5e-6},
}
"""Model defaults (the MP-20 paper values); dataset sections of diffcsp.yaml override them."""


class DiffCSP(CrystalGenerator):
    """DiffCSP: CSP (``mode: csp``) or ab-initio generation (``mode: generate``, DiffCSP-C).

    Parameters
    ----------
    config
        The ``model`` section of a resolved ``diffcsp.yaml`` configuration; missing keys take
        the values of :data:`DEFAULTS`.
    """

    name: ClassVar[str] = "diffcsp"
    supports: ClassVar[frozenset[str]] = frozenset({"csp", "generate"})

    def __init__(self, config: dict[str, Any]) -> None:
        unknown = set(config) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"diffcsp: unknown model config keys {sorted(unknown)}")
        merged = {**DEFAULTS, **config}
        super().__init__(merged)
        if merged["mode"] not in ("csp", "generate"):
            raise ValueError(f"diffcsp: mode must be 'csp' or 'generate', got {merged['mode']!r}")
        self.mode = merged["mode"]
        # an instance narrows the class's tasks: a CSP model cannot generate, and vice versa
        self.supports = frozenset({self.mode})  # type: ignore[misc]
        self.timesteps = int(merged["timesteps"])
        beta_cfg = dict(merged["beta_schedule"])
        kind = beta_cfg.pop("kind", "cosine")
        self.lattice_schedule = DDPMSchedule(make_betas(kind, self.timesteps, **beta_cfg))
        self.coord_schedule = WrappedNormalSchedule(
            self.timesteps,
            merged["sigma_begin"],
            merged["sigma_end"],
            int(merged["score_norm_samples"]),
        )
        self.time_embedding = SinusoidalTimeEmbedding(int(merged["time_dim"]))
        self.denoiser = CSPNet(
            hidden_dim=int(merged["hidden_dim"]),
            num_layers=int(merged["num_layers"]),
            num_freqs=int(merged["num_freqs"]),
            time_dim=int(merged["time_dim"]),
            smooth_types=self.mode == "generate",
            layer_norm=bool(merged["layer_norm"]),
            self_edges=bool(merged["self_edges"]),
        )
        max_atoms = int(merged["max_atoms"])
        self.register_buffer("num_atoms_distribution", torch.zeros(max_atoms + 1))

    # ------------------------------------------------------------------ statistics

    def fit_statistics(self, train: Batch) -> None:
        """Fit the distribution of atom counts of the training split (used by generation)."""
        counts = torch.bincount(
            train.num_atoms.cpu(), minlength=len(self.num_atoms_distribution)
        ).float()
        if len(counts) > len(self.num_atoms_distribution):
            raise ValueError(
                f"diffcsp: training crystals have up to {len(counts) - 1} atoms, "
                f"above max_atoms={len(self.num_atoms_distribution) - 1}"
            )
        self.num_atoms_distribution.copy_(counts / counts.sum())

    # ------------------------------------------------------------------ training

    def training_loss(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        """Loss of one batch: one time step per crystal, t ~ U{1..T}."""
        device = batch.frac_coords.device
        times = torch.randint(1, self.timesteps + 1, (batch.num_graphs,), device=device)
        lattice_noise = torch.randn_like(batch.lattice)
        coord_noise = torch.randn_like(batch.frac_coords)
        type_noise = None
        if self.mode == "generate":
            type_noise = torch.randn(len(batch.atom_types), MAX_ATOMIC_NUMBER, device=device)
        return self.loss_terms(batch, times, lattice_noise, coord_noise, type_noise)

    def loss_terms(
        self,
        batch: Batch,
        times: Tensor,
        lattice_noise: Tensor,
        coord_noise: Tensor,
        type_noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss for given times and noises (deterministic; used by the invariance tests).

        Returns
        -------
        dict[str, Tensor]
            ``loss`` and its terms ``loss_lattice``, ``loss_coord`` (and ``loss_type``).
        """
        atom_crystal = batch.batch
        noisy_lattice = self.lattice_schedule.q_sample(batch.lattice, times, lattice_noise)
        t_atoms = times[atom_crystal]
        noisy_frac, coord_target = self.coord_schedule.perturb(
            batch.frac_coords, t_atoms, coord_noise
        )
        atom_input: Tensor = batch.atom_types
        if self.mode == "generate":
            assert type_noise is not None
            onehot = F.one_hot(batch.atom_types - 1, MAX_ATOMIC_NUMBER).float()
            atom_input = self.lattice_schedule.q_sample(onehot, t_atoms, type_noise)
        pred_lattice, pred_coord, pred_type = self.denoiser(
            self.time_embedding(times),
            atom_input,
            noisy_frac,
            noisy_lattice,
            batch.num_atoms,
            atom_crystal,
        )
        loss_lattice = F.mse_loss(pred_lattice, lattice_noise)
        loss_coord = F.mse_loss(pred_coord, coord_target)
        loss = self.config["cost_lattice"] * loss_lattice + self.config["cost_coord"] * loss_coord
        terms = {"loss_lattice": loss_lattice, "loss_coord": loss_coord}
        if self.mode == "generate":
            assert pred_type is not None and type_noise is not None
            loss_type = F.mse_loss(pred_type, type_noise)
            loss = loss + self.config["cost_type"] * loss_type
            terms["loss_type"] = loss_type
        return {"loss": loss, **terms}

    # ------------------------------------------------------------------ sampling

    def step_lr(self, task: str) -> float:
        """γ of the corrector: ``step_lr`` option, else the config's per-task value."""
        if "step_lr" in self.sampling_options:
            return float(self.sampling_options["step_lr"])
        table = self.config["step_lr"]
        if task == "csp" and int(self.sampling_options.get("candidates", 1)) > 1:
            return float(table["csp_multi"])
        return float(table[task])

    def _compiled_denoiser(self) -> Any:
        """``torch.compile`` of the denoiser, made once per model (sampling option ``compile``).

        Kept outside the module tree (a plain dict), so the state_dict and checkpoints do not
        change. The first call of a batch shape compiles (tens of seconds on a CPU); later
        calls reuse the compiled code.
        """
        cache: dict[str, Any] = self.__dict__.setdefault("_compiled", {})
        if cache.get("source") is not self.denoiser:
            cache["source"] = self.denoiser
            cache["compiled"] = torch.compile(self.denoiser, dynamic=False)
        return cache["compiled"]

    @torch.no_grad()
    def sample_csp(self, template: Batch, generator: torch.Generator | None = None) -> Batch:
        """Predict lattices and coordinates for the compositions of ``template``."""
        if self.mode != "csp":
            raise ValueError("diffcsp: this model was trained for generation (mode: generate)")
        return self._sample(
            template.atom_types, template.num_atoms, generator, self.step_lr("csp"), template
        )

    @torch.no_grad()
    def sample_generate(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """Generate ``n`` crystals: N from the training distribution, then types + structure."""
        if self.mode != "generate":
            raise ValueError("diffcsp: this model was trained for CSP (mode: csp)")
        if float(self.num_atoms_distribution.sum()) <= 0:
            raise ValueError("diffcsp: atom-count distribution not fitted (fit_statistics)")
        dist = self.num_atoms_distribution.cpu()
        cpu_gen = _cpu_generator(generator)
        num_atoms = torch.multinomial(dist, n, replacement=True, generator=cpu_gen)
        num_atoms = num_atoms.to(self.device)
        return self._sample(None, num_atoms, generator, self.step_lr("generate"), None)

    def _sample(
        self,
        atom_types: Tensor | None,
        num_atoms: Tensor,
        generator: torch.Generator | None,
        step_lr: float,
        template: Batch | None,
    ) -> Batch:
        device = self.device
        num_atoms = num_atoms.to(device)
        n_crystals, n_atoms = len(num_atoms), int(num_atoms.sum())
        atom_crystal = torch.repeat_interleave(torch.arange(n_crystals, device=device), num_atoms)
        steps = int(self.sampling_options.get("steps", self.timesteps))
        schedule = strided_timesteps(self.timesteps, steps)

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, device=device)

        lattice = randn(n_crystals, 3, 3)
        frac = torch.rand(n_atoms, 3, generator=generator, device=device)
        types = randn(n_atoms, MAX_ATOMIC_NUMBER) if atom_types is None else None
        sigmas = self.coord_schedule.sigmas
        norms = self.coord_schedule.score_norms
        sigma_1 = sigmas[1]
        # the graph depends only on the atom counts: built once for the 2·steps network calls
        denoiser = self.denoiser
        extra: dict[str, Any] = {}
        if isinstance(denoiser, CSPNet):
            extra["graph"] = denoiser.build_graph(num_atoms, atom_crystal)
            if self.sampling_options.get("compile", False):
                denoiser = self._compiled_denoiser()
        for index, t in enumerate(schedule):
            t_prev = schedule[index + 1] if index + 1 < len(schedule) else 0
            last = t_prev == 0
            time_emb = self.time_embedding(torch.full((n_crystals,), t, device=device))
            sigma, sigma_prev, norm = sigmas[t], sigmas[t_prev], norms[t]
            node_input = atom_types if types is None else types

            # corrector (Langevin at level t)
            step = step_lr * (sigma / sigma_1) ** 2
            _, score, _ = denoiser(
                time_emb, node_input, frac, lattice, num_atoms, atom_crystal, **extra
            )
            noise = torch.zeros_like(frac) if last else randn(n_atoms, 3)
            frac = frac + step * score * norm.sqrt() + (2 * step).sqrt() * noise

            # predictor (reverse SDE step t -> t_prev)
            eps_lattice, score, eps_type = denoiser(
                time_emb, node_input, frac, lattice, num_atoms, atom_crystal, **extra
            )
            step = sigma**2 - sigma_prev**2
            std = (sigma_prev**2 * step / sigma**2).sqrt()
            noise = torch.zeros_like(frac) if last else randn(n_atoms, 3)
            frac = torch.remainder(frac + step * score * norm.sqrt() + std * noise, 1.0)
            lattice_noise = None if last else randn(n_crystals, 3, 3)
            lattice = self.lattice_schedule.posterior_step(
                lattice, eps_lattice, t, t_prev, lattice_noise
            )
            if types is not None:
                assert eps_type is not None
                type_noise = None if last else randn(n_atoms, MAX_ATOMIC_NUMBER)
                types = self.lattice_schedule.posterior_step(types, eps_type, t, t_prev, type_noise)

        final_types = atom_types if types is None else types.argmax(-1) + 1
        ids = (
            list(template.material_id)
            if template is not None and hasattr(template, "material_id")
            else [f"gen-{i}" for i in range(n_crystals)]
        )
        return _make_batch(frac, final_types, lattice, num_atoms, ids)


def _cpu_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """A CPU generator derived from ``generator`` (multinomial wants CPU; CUDA gens differ)."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


def _make_batch(
    frac: Tensor, types: Tensor, lattice: Tensor, num_atoms: Tensor, ids: list[str]
) -> Batch:
    """A crystal batch from flat tensors (one Data per crystal)."""
    from torch_geometric.data import Data

    data = []
    start = 0
    for b, n in enumerate(num_atoms.tolist()):
        stop = start + n
        data.append(
            Data(
                frac_coords=frac[start:stop].float(),
                atom_types=types[start:stop].long(),
                lattice=lattice[b : b + 1].float(),
                num_atoms=torch.tensor([n], device=frac.device),
                num_nodes=n,
                material_id=ids[b],
            )
        )
        start = stop
    return Batch.from_data_list(data)


__all__ = ["DEFAULTS", "DiffCSP"]
