"""ContinuouSP: an energy-based crystal model sampled by MALA (Tone et al., arXiv 2502.02026).

The model is a scalar energy E(crystal) = E_θ + penalty · (log(ρ/ρ0))² (``energy_gnn``). There
is no diffusion and no decoder: a structure for a composition is found by annealed MALA on the
Cartesian positions and the cell (``generators.mcmc``), starting from a random cell and uniform
fractional positions, Niggli-reducing after each step (``generators.niggli``).

Training is contrastive divergence: for each batch the sampler (model in eval mode, no graph
through the chain) produces negatives with the batch's compositions reduced by their gcd and
multiplied by k = 1 + Geometric(0.5); the loss is
mean E(real) − mean E(sample) + λ (mean E(real)² + mean E(sample)²).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from generators.crystal import data_list_to_batch, frac_to_cart
from generators.mcmc import MalaResult, MalaSchedule, mala_sample
from generators.models.base import CrystalGenerator
from generators.models.energy_gnn import EnergyGNN, density_penalty
from generators.niggli import niggli_reduce, reduce_crystals

DEFAULTS: dict[str, Any] = {
    "embedding_size": 32,
    "edge_feat_size": 32,
    "fc_size": 32,
    "num_conv_layers": 3,
    "num_fc_layers": 2,
    "radius_rate": 3.0,
    "gaussian_stop": 20.0,
    "expected_density": 0.05,
    "energy_penalty": 1.0,
    "regularization_lambda": 0.1,
    "geometric_p": 0.5,
    "max_negative_atoms": None,
    "mcmc_steps": 1000,
    "train_mcmc_steps": 1000,
    "val_mcmc_steps": None,
    "step_size_start": 0.5,
    "step_size_end": 5e-4,
    "temperature_start": 1.0,
    "temperature_end": 1e-3,
    "max_image_range": 6,
    "data_start_fraction": 0.0,
    "data_start_temperature": 0.01,
    "progress": False,
    "sample_progress": True,
}
"""Model settings and their defaults (the ``model`` section of ``continuousp.yaml``)."""


class ContinuouSP(CrystalGenerator):
    """Energy-based CSP model with MALA sampling and contrastive-divergence training.

    Parameters
    ----------
    config
        The ``model`` section of a resolved configuration; keys and defaults in
        :data:`DEFAULTS` (network sizes, density penalty, CD regulariser, MCMC schedules).
    """

    name: ClassVar[str] = "continuousp"
    supports: ClassVar[frozenset[str]] = frozenset({"csp"})

    def __init__(self, config: dict[str, Any]) -> None:
        unknown = set(config) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"continuousp: unknown model config keys {sorted(unknown)}")
        super().__init__({**DEFAULTS, **config})
        cfg = self.config
        self.energy_net = EnergyGNN(
            embedding_size=int(cfg["embedding_size"]),
            edge_feat_size=int(cfg["edge_feat_size"]),
            fc_size=int(cfg["fc_size"]),
            num_conv_layers=int(cfg["num_conv_layers"]),
            num_fc_layers=int(cfg["num_fc_layers"]),
            radius_rate=float(cfg["radius_rate"]),
            gaussian_stop=float(cfg["gaussian_stop"]),
        )

    # ------------------------------------------------------------------ energy

    def schedule(self, steps: int) -> MalaSchedule:
        """The annealing schedule of the config over ``steps`` steps."""
        cfg = self.config
        return MalaSchedule(
            steps=int(steps),
            step_start=float(cfg["step_size_start"]),
            step_end=float(cfg["step_size_end"]),
            temperature_start=float(cfg["temperature_start"]),
            temperature_end=float(cfg["temperature_end"]),
        )

    def energy(
        self,
        cart_coords: Tensor,
        atom_types: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        reduce: bool = True,
    ) -> Tensor:
        """Energy with the density penalty per crystal, [B].

        Parameters
        ----------
        cart_coords
            [N, 3] Cartesian positions (Å).
        atom_types
            [N] atomic numbers.
        lattice
            [B, 3, 3] cells (rows are vectors), any basis of the lattice.
        num_atoms
            [B] atoms per crystal.
        reduce
            Niggli-reduce the cells first (differentiably); keeps the image enumeration small
            for skewed cells. The energy itself does not depend on the choice of basis.
        """
        # the Niggli reduction and the density penalty stay in full precision under autocast
        with torch.autocast(device_type=lattice.device.type, enabled=False):
            if reduce:
                reduced = reduce_crystals(cart_coords, lattice, num_atoms)
                cart_coords, lattice = reduced.cart_coords, reduced.lattice
            penalty = density_penalty(
                lattice,
                num_atoms,
                float(self.config["expected_density"]),
                float(self.config["energy_penalty"]),
            )
        network = self.energy_net(cart_coords, atom_types, lattice, num_atoms)
        return network + penalty

    def batch_energy(self, batch: Batch) -> Tensor:
        """Energy of a crystal batch (fields of ``docs/architecture.md`` §2), [B]."""
        with torch.autocast(device_type=batch.lattice.device.type, enabled=False):
            cart = frac_to_cart(batch.frac_coords, batch.lattice, batch.num_atoms)
        return self.energy(cart, batch.atom_types, batch.lattice, batch.num_atoms)

    # ------------------------------------------------------------------ sampling

    def _too_many_images(self, lattice: Tensor, num_atoms: Tensor) -> Tensor:
        """Cells that need more than ``max_image_range`` images along an axis, [B] bool."""
        cell = lattice.detach()
        radius = self.energy_net.radius(cell, num_atoms)
        reciprocal_norms = torch.linalg.inv(cell).norm(dim=-2)
        ranges = torch.ceil(radius.unsqueeze(-1) * reciprocal_norms) + 1
        return (ranges > int(self.config["max_image_range"])).any(-1)

    def initial_state(
        self, num_atoms: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Random starting crystals, Niggli-reduced and wrapped.

        Cell ((N/(2 sqrt(2/π)))/ρ0)^(1/3)·randn(3, 3) (expected volume N/ρ0), uniform
        fractional positions.

        A cell whose reduced form would need more than ``max_image_range`` periodic images
        along an axis (a nearly flat random cell) is drawn again, up to 100 times.

        Returns
        -------
        tuple[Tensor, Tensor]
            Cartesian positions [N, 3] and cells [B, 3, 3].
        """
        device = self.device
        counts = num_atoms.to(device)
        rho0 = float(self.config["expected_density"])
        scale = ((counts.double() / (2.0 * math.sqrt(2.0 / math.pi))) / rho0).pow(1.0 / 3.0)
        source = generator.device if generator is not None else device
        lattice = torch.randn(
            len(counts), 3, 3, generator=generator, dtype=torch.float64, device=source
        )
        lattice = lattice.to(device) * scale[:, None, None]
        for _ in range(100):
            bad = self._too_many_images(niggli_reduce(lattice).lattice, counts)
            bad |= torch.linalg.det(lattice).abs() < 1e-3 * counts / rho0
            if not bool(bad.any()):
                break
            redraw = torch.randn(
                int(bad.sum()), 3, 3, generator=generator, dtype=torch.float64, device=source
            )
            lattice[bad] = redraw.to(device) * scale[bad, None, None]
        dtype = next(self.parameters()).dtype
        lattice = lattice.to(dtype)
        frac = torch.rand(int(counts.sum()), 3, generator=generator, dtype=dtype, device=source)
        frac = frac.to(device)
        cart = frac_to_cart(frac, lattice, counts)
        reduced = reduce_crystals(cart, lattice, counts)
        return reduced.cart_coords.detach(), reduced.lattice.detach()

    @torch.no_grad()
    def run_chains(
        self,
        atom_types: Tensor,
        num_atoms: Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
        start: tuple[Tensor, Tensor] | None = None,
        schedule: MalaSchedule | None = None,
    ) -> MalaResult:
        """One annealed MALA chain per composition, in eval mode (parameters untouched).

        Parameters
        ----------
        atom_types
            [N] atomic numbers of all crystals, grouped by crystal.
        num_atoms
            [B] atoms per crystal.
        steps
            Number of MALA steps (default ``mcmc_steps`` of the config).
        generator
            Random generator (initial state, proposals, acceptance).
        progress
            Progress bar (default: the config's ``progress``).
        start
            Initial (Cartesian positions [N, 3], cells [B, 3, 3]); default: random crystals
            (:meth:`initial_state`).
        schedule
            MALA schedule; default: the config's annealing over ``steps`` steps.
        """
        was_training = self.training
        self.eval()
        counts = num_atoms.to(self.device)
        types = atom_types.to(self.device)
        try:
            # MCMC acceptance needs full-precision energies: the chain, its random start included
            # (a Niggli reduction), never runs under autocast
            with torch.autocast(device_type=self.device.type, enabled=False):
                if start is None:
                    cart, lattice = self.initial_state(counts, generator)
                else:
                    cart, lattice = (t.detach().to(self.device) for t in start)

                def energy_fn(x: Tensor, cell: Tensor) -> Tensor:
                    return self.energy(x, types, cell, counts)

                def admissible(x: Tensor, cell: Tensor) -> Tensor:
                    return ~self._too_many_images(cell, counts)

                return mala_sample(
                    energy_fn,
                    cart,
                    lattice,
                    counts,
                    schedule or self.schedule(int(steps or self.config["mcmc_steps"])),
                    generator=generator,
                    reduce=True,
                    admissible=admissible,
                    progress=bool(self.config["progress"] if progress is None else progress),
                )
        finally:
            self.train(was_training)

    def chains_to_batch(
        self, result: MalaResult, atom_types: Tensor, num_atoms: Tensor, material_ids: list[str]
    ) -> Batch:
        """Final MALA states as a crystal batch (Niggli-reduced cells, wrapped coordinates)."""
        reduced = reduce_crystals(result.cart_coords, result.lattice, num_atoms.to(self.device))
        data = []
        start = 0
        for b, n in enumerate(num_atoms.tolist()):
            stop = start + n
            data.append(
                Data(
                    frac_coords=reduced.frac_coords[start:stop].detach().float().cpu(),
                    atom_types=atom_types[start:stop].detach().cpu(),
                    lattice=reduced.lattice[b : b + 1].detach().float().cpu(),
                    num_atoms=torch.tensor([n]),
                    num_nodes=n,
                    material_id=material_ids[b],
                    energy=result.energy[b : b + 1].detach().float().cpu(),
                    acceptance=result.acceptance[b : b + 1].detach().float().cpu(),
                )
            )
            start = stop
        return data_list_to_batch(data)

    def sample_csp(self, template: Batch, generator: torch.Generator | None = None) -> Batch:
        """One MALA chain per template crystal with its composition and atom count.

        The number of steps is the sampler's ``steps`` option (``configure_sampling``), else
        ``mcmc_steps`` of the config; k candidates are k template copies (the sampler's job).

        Returns
        -------
        Batch
            Predicted crystals in the template's order, with ``material_id`` of the template,
            plus ``energy`` and ``acceptance`` per crystal.
        """
        ids = _material_ids(template)
        steps = self.sampling_options.get("steps") or self.config["mcmc_steps"]
        result = self.run_chains(
            template.atom_types,
            template.num_atoms,
            steps=int(steps),
            generator=generator,
            progress=bool(self.sampling_options.get("progress", self.config["sample_progress"])),
        )
        return self.chains_to_batch(result, template.atom_types, template.num_atoms, ids)

    # ------------------------------------------------------------------ training

    def negative_compositions(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Compositions of the negatives (one per crystal of ``batch``).

        Each crystal's composition is reduced by the gcd of its element counts and multiplied
        by k = 1 + Geometric(p) (k ≥ 1; capped by ``max_negative_atoms`` when set).

        Returns
        -------
        tuple[Tensor, Tensor]
            Atom types [N'] grouped by crystal and atom counts [B].
        """
        p = float(self.config["geometric_p"])
        cap = self.config["max_negative_atoms"]
        source = generator.device if generator is not None else torch.device("cpu")
        uniform = torch.rand(
            int(batch.num_graphs), generator=generator, dtype=torch.float64, device=source
        ).cpu()
        extra = torch.floor(torch.log(uniform.clamp_min(1e-300)) / math.log(1.0 - p)).long()
        types_out: list[Tensor] = []
        counts_out: list[int] = []
        start = 0
        types_cpu = batch.atom_types.detach().cpu()
        for b, n in enumerate(batch.num_atoms.tolist()):
            types = types_cpu[start : start + n]
            start += n
            elements, counts = torch.unique(types, return_counts=True)
            divisor = math.gcd(*counts.tolist())
            unit = torch.repeat_interleave(elements, counts // divisor)
            k = 1 + int(extra[b])
            if cap is not None:
                k = max(1, min(k, int(cap) // len(unit)))
            types_out.append(unit.repeat(k))
            counts_out.append(len(unit) * k)
        return torch.cat(types_out).to(self.device), torch.tensor(counts_out, device=self.device)

    def tail_schedule(self, steps: int, temperature: float) -> MalaSchedule:
        """The config's annealing restricted to temperatures ≤ ``temperature``, over ``steps``.

        Step size and temperature follow the same log-linear path as :meth:`schedule`; the
        chain starts where the full schedule reaches ``temperature``.
        """
        cfg = self.config
        t0, t1 = float(cfg["temperature_start"]), float(cfg["temperature_end"])
        s0, s1 = float(cfg["step_size_start"]), float(cfg["step_size_end"])
        if not t1 <= temperature <= t0:
            raise ValueError(
                f"continuousp: data_start_temperature {temperature} not in [{t1}, {t0}]"
            )
        fraction = math.log(t0 / temperature) / math.log(t0 / t1) if t0 != t1 else 0.0
        return MalaSchedule(
            steps=int(steps),
            step_start=s0 * (s1 / s0) ** fraction,
            step_end=s1,
            temperature_start=float(temperature),
            temperature_end=t1,
        )

    def data_started_chains(
        self, batch: Batch, steps: int, generator: torch.Generator | None = None
    ) -> MalaResult:
        """Chains started AT the training crystals, run over the low-temperature tail.

        Classic contrastive divergence (Hinton's CD-k): the energy is raised wherever the chain
        drifts from a training crystal, so training crystals become local minima, a necessary
        condition for memorisation that noise-started chains alone teach slowly.
        """
        with torch.autocast(device_type=batch.lattice.device.type, enabled=False):
            cart = frac_to_cart(batch.frac_coords, batch.lattice, batch.num_atoms)
        dtype = next(self.parameters()).dtype
        return self.run_chains(
            batch.atom_types,
            batch.num_atoms,
            generator=generator,
            start=(cart.to(dtype), batch.lattice.to(dtype)),
            schedule=self.tail_schedule(steps, float(self.config["data_start_temperature"])),
        )

    def contrastive_divergence(
        self, batch: Batch, steps: int, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """The CD loss of one batch with negatives from ``steps`` MALA steps.

        Negatives come from noise-started annealed chains (the paper). With
        ``data_start_fraction`` f > 0 (a non-default CPU-scale option), additionally
        round(f·B) chains start at the first crystals of the batch and run the tail of the
        schedule from ``data_start_temperature``; their energies join E(sample).
        """
        types, counts = self.negative_compositions(batch, generator)
        chains = self.run_chains(types, counts, steps=steps, generator=generator)
        energy_real = self.batch_energy(batch)
        energy_sample = self.energy(chains.cart_coords, types, chains.lattice, counts)
        acceptance = chains.acceptance
        n_data = round(float(self.config["data_start_fraction"]) * int(batch.num_graphs))
        if n_data > 0:
            head = Batch.from_data_list(batch.index_select(list(range(n_data))))
            local = self.data_started_chains(head, steps, generator)
            local_energy = self.energy(
                local.cart_coords, head.atom_types, local.lattice, head.num_atoms
            )
            energy_sample = torch.cat([energy_sample, local_energy])
            acceptance = torch.cat([acceptance, local.acceptance])
        cd = energy_real.mean() - energy_sample.mean()
        regulariser = (energy_real**2).mean() + (energy_sample**2).mean()
        loss = cd + float(self.config["regularization_lambda"]) * regulariser
        return {
            "loss": loss,
            "cd": cd.detach(),
            "regulariser": regulariser.detach(),
            "energy_real": energy_real.mean().detach(),
            "energy_sample": energy_sample.mean().detach(),
            "acceptance": acceptance.mean().detach(),
        }

    def training_loss(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        """Contrastive divergence with ``train_mcmc_steps`` MALA steps for the negatives."""
        return self.contrastive_divergence(batch, int(self.config["train_mcmc_steps"]))

    def validation_loss(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        """The CD loss with ``val_mcmc_steps`` (default: the training steps), gradients off."""
        steps = int(self.config["val_mcmc_steps"] or self.config["train_mcmc_steps"])
        with torch.no_grad():
            return self.contrastive_divergence(batch, steps)


def _material_ids(batch: Batch) -> list[str]:
    ids = getattr(batch, "material_id", None)
    if ids is None:
        return [f"crystal-{i}" for i in range(int(batch.num_graphs))]
    if isinstance(ids, str):
        return [ids]
    return [str(i) for i in ids]


__all__ = ["DEFAULTS", "ContinuouSP"]
