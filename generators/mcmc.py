"""Metropolis-adjusted Langevin (MALA) sampling of crystals on Cartesian positions and cells.

The state of crystal b is (x, L): its atoms' Cartesian positions and its cell matrix. With step
size s and temperature T, a proposal moves both by a Langevin step,

    x' = x − s·∇ₓE(x, L)/T + sqrt(2s)·ξ,     L' = L − s·∇_L E(x, L)/T + sqrt(2s)·ξ',

and is accepted with probability min(1, α), where

    log α = (E − E')/T + log q(x | x') − log q(x' | x),
    log q(y | x) = −‖y − x + s·∇E(x)/T‖² / (4s)   (the Gaussian N(x − s∇E(x)/T, 2s·I)),

summed over all coordinates of the crystal (positions and cell entries). So log q(x | x') is
−‖x − x' + s∇E(x')/T‖²/(4s) with the gradient at the proposal, and log q(x' | x) is
−‖x' − x + s∇E(x)/T‖²/(4s) = −‖sqrt(2s)·ξ‖²/(4s) = −‖ξ‖²/2 with the gradient at the start.

After each step the cell is Niggli-reduced and the atoms are wrapped into it (as ContinuouSP
does). The MH step itself is exact for exp(−E/T) on (x, L); the reduction is not: the Gaussian
proposal is not equivariant under the change of basis (x, L) -> (x − n·CL, CL), so the folded
chain loses the entropic factor of the cell. Measured with an energy of the density only
(``tests/generators/test_mala.py``): log V settles near the minimum of E instead of the exact
mean log(N/ρ0) + (N+3)T/2. At the end of the annealing (T = 1e-3) this factor is negligible.
The gradient is carried over to the new representation exactly (∇_x unchanged,
∇_L̃ = C^{-T}∇_L + Σ_i n_iᵀ∇_{x_i}), which saves one energy evaluation per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from generators.niggli import reduce_crystals

EnergyFunction = Callable[[Tensor, Tensor], Tensor]
"""(cart_coords [N, 3], lattice [B, 3, 3]) -> energy per crystal [B]."""

AdmissibleFunction = Callable[[Tensor, Tensor], Tensor]
"""(cart_coords, lattice) -> [B] bool; a proposal outside is rejected without evaluation."""


@dataclass(frozen=True)
class MalaSchedule:
    """Step sizes and temperatures, log-spaced from start to end over ``steps`` steps.

    The defaults are ContinuouSP's (1000 steps, s 0.5 -> 5e-4, T 1 -> 1e-3).
    """

    steps: int = 1000
    step_start: float = 0.5
    step_end: float = 5e-4
    temperature_start: float = 1.0
    temperature_end: float = 1e-3

    def step_sizes(self) -> Tensor:
        """[steps] float64 step sizes."""
        return _logspace(self.step_start, self.step_end, self.steps)

    def temperatures(self) -> Tensor:
        """[steps] float64 temperatures."""
        return _logspace(self.temperature_start, self.temperature_end, self.steps)


def _logspace(start: float, end: float, steps: int) -> Tensor:
    if steps < 1:
        raise ValueError(f"a MALA schedule needs at least one step, got {steps}")
    if start <= 0 or end <= 0:
        raise ValueError(f"log-spaced schedule needs positive ends, got {start} and {end}")
    return torch.logspace(math.log10(start), math.log10(end), steps, dtype=torch.float64)


@dataclass
class MalaResult:
    """Final chain states.

    Attributes
    ----------
    cart_coords
        [N, 3] Cartesian positions (wrapped into the cell when reducing).
    lattice
        [B, 3, 3] cells (Niggli-reduced when reducing).
    energy
        [B] energies of the final states.
    acceptance
        [B] fraction of accepted proposals per crystal.
    """

    cart_coords: Tensor
    lattice: Tensor
    energy: Tensor
    acceptance: Tensor


def energy_and_gradients(
    energy_fn: EnergyFunction, cart_coords: Tensor, lattice: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Energy per crystal and its gradients w.r.t. positions and cells (all detached).

    Gradients are taken w.r.t. the inputs only, so the chain never builds a graph through the
    model parameters.
    """
    with torch.enable_grad():
        x = cart_coords.detach().requires_grad_(True)
        cell = lattice.detach().requires_grad_(True)
        energy = energy_fn(x, cell)
        grad_x, grad_cell = torch.autograd.grad(energy.sum(), [x, cell])
    return energy.detach(), grad_x.detach(), grad_cell.detach()


def _per_crystal_sum(per_atom: Tensor, crystal: Tensor, num_crystals: int) -> Tensor:
    totals = torch.zeros(num_crystals, dtype=per_atom.dtype, device=per_atom.device)
    return totals.index_add_(0, crystal, per_atom)


def _reduce_state(
    cart: Tensor, lattice: Tensor, num_atoms: Tensor, grad_x: Tensor, grad_cell: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Niggli-reduce and wrap the states; carry the cell gradient to the new basis."""
    reduced = reduce_crystals(cart, lattice, num_atoms)
    inverse_t = torch.linalg.inv(reduced.transform.double()).transpose(-1, -2).to(grad_cell)
    crystal = torch.repeat_interleave(torch.arange(len(num_atoms), device=cart.device), num_atoms)
    outer = torch.einsum("ni,nj->nij", reduced.shift, grad_x)
    shift_term = torch.zeros_like(grad_cell).index_add_(0, crystal, outer)
    new_grad_cell = inverse_t @ grad_cell + shift_term
    return reduced.cart_coords.detach(), reduced.lattice.detach(), new_grad_cell


def mala_sample(
    energy_fn: EnergyFunction,
    cart_coords: Tensor,
    lattice: Tensor,
    num_atoms: Tensor,
    schedule: MalaSchedule | None = None,
    generator: torch.Generator | None = None,
    reduce: bool = True,
    admissible: AdmissibleFunction | None = None,
    progress: bool = False,
    callback: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
) -> MalaResult:
    """Run one MALA chain per crystal of a batch.

    Parameters
    ----------
    energy_fn
        Energy per crystal from (positions [N, 3], cells [B, 3, 3]); must be differentiable.
    cart_coords, lattice, num_atoms
        Initial states of the B chains.
    schedule
        Step sizes and temperatures (default: ContinuouSP's 1000 steps).
    generator
        Random generator for the proposals and acceptance draws.
    reduce
        Niggli-reduce the cells and wrap the positions after each step (needs an energy that is
        invariant under a change of cell basis; switch off for toy energies that are not).
    admissible
        Optional test of a proposal; inadmissible proposals (e.g. a degenerate cell) are
        rejected without being evaluated.
    progress
        Show a progress bar.
    callback
        Called after each step as ``callback(step, cart, lattice, energy)``.

    Returns
    -------
    MalaResult
        Final states, energies and per-crystal acceptance rates.
    """
    schedule = schedule or MalaSchedule()
    device, dtype = cart_coords.device, cart_coords.dtype
    num_crystals = len(num_atoms)
    crystal = torch.repeat_interleave(torch.arange(num_crystals, device=device), num_atoms)
    step_sizes = schedule.step_sizes().tolist()
    temperatures = schedule.temperatures().tolist()

    cart, cell = cart_coords.detach().clone(), lattice.detach().clone()
    energy, grad_x, grad_cell = energy_and_gradients(energy_fn, cart, cell)
    if reduce:
        cart, cell, grad_cell = _reduce_state(cart, cell, num_atoms, grad_x, grad_cell)
    accepted = torch.zeros(num_crystals, dtype=torch.float64, device=device)

    steps = range(schedule.steps)
    for t in tqdm(steps, desc="MALA", disable=not progress, leave=False):
        s, temp = step_sizes[t], temperatures[t]
        noise_x = _randn(cart.shape, generator, device, dtype)
        noise_cell = _randn(cell.shape, generator, device, dtype)
        sigma = math.sqrt(2.0 * s)
        prop_cart = cart - (s / temp) * grad_x + sigma * noise_x
        prop_cell = cell - (s / temp) * grad_cell + sigma * noise_cell

        ok = torch.isfinite(prop_cell).flatten(1).all(-1)
        ok &= torch.linalg.det(prop_cell).abs() > 1e-6
        if admissible is not None:
            ok &= admissible(prop_cart, prop_cell)
        atom_ok = ok[crystal]
        # evaluate inadmissible proposals at the current state (then reject them)
        eval_cart = torch.where(atom_ok.unsqueeze(-1), prop_cart, cart)
        eval_cell = torch.where(ok[:, None, None], prop_cell, cell)
        prop_energy, prop_grad_x, prop_grad_cell = energy_and_gradients(
            energy_fn, eval_cart, eval_cell
        )

        forward = _per_crystal_sum((noise_x**2).sum(-1), crystal, num_crystals)
        forward = -0.5 * (forward + (noise_cell**2).flatten(1).sum(-1))  # log q(x'|x)
        back_x = cart - eval_cart + (s / temp) * prop_grad_x
        back_cell = cell - eval_cell + (s / temp) * prop_grad_cell
        backward = _per_crystal_sum((back_x**2).sum(-1), crystal, num_crystals)
        backward = -(backward + (back_cell**2).flatten(1).sum(-1)) / (4.0 * s)  # log q(x|x')
        log_alpha = (energy - prop_energy) / temp + backward - forward
        log_u = torch.log(_rand(num_crystals, generator, device, dtype))
        accept = ok & torch.isfinite(prop_energy) & (log_u < log_alpha)
        accept_atoms = accept[crystal].unsqueeze(-1)

        cart = torch.where(accept_atoms, eval_cart, cart)
        cell = torch.where(accept[:, None, None], eval_cell, cell)
        energy = torch.where(accept, prop_energy, energy)
        grad_x = torch.where(accept_atoms, prop_grad_x, grad_x)
        grad_cell = torch.where(accept[:, None, None], prop_grad_cell, grad_cell)
        accepted += accept.double()
        if reduce:
            cart, cell, grad_cell = _reduce_state(cart, cell, num_atoms, grad_x, grad_cell)
        if callback is not None:
            callback(t, cart, cell, energy)

    return MalaResult(
        cart_coords=cart,
        lattice=cell,
        energy=energy,
        acceptance=(accepted / schedule.steps).to(dtype),
    )


def _randn(
    shape: torch.Size, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


def _rand(
    n: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    source = generator.device if generator is not None else device
    draw = torch.rand(n, generator=generator, device=source, dtype=dtype).to(device)
    return draw.clamp_min(1e-30)


__all__ = [
    "AdmissibleFunction",
    "EnergyFunction",
    "MalaResult",
    "MalaSchedule",
    "energy_and_gradients",
    "mala_sample",
]
