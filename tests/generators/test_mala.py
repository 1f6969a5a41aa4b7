"""MALA on toy energies with known distributions, and the gradient carried through reduction."""

from __future__ import annotations

import math

import pytest
import torch

from generators.mcmc import MalaSchedule, _reduce_state, energy_and_gradients, mala_sample

B, N_ATOMS = 400, 2
MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
CELL0 = 4.0 * torch.eye(3, dtype=torch.float64)
STIFFNESS = 2.0


def _harmonic(num_atoms: torch.Tensor):
    crystal = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)

    def energy(x: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        per_atom = 0.5 * STIFFNESS * ((x - MU) ** 2).sum(-1)
        e = torch.zeros(len(num_atoms), dtype=x.dtype).index_add(0, crystal, per_atom)
        return e + 0.5 * STIFFNESS * ((cell - CELL0) ** 2).flatten(1).sum(-1)

    return energy


def _run(step: float, temperature: float, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    num_atoms = torch.full((B,), N_ATOMS)
    x0 = torch.randn(B * N_ATOMS, 3, generator=gen, dtype=torch.float64)
    cell0 = torch.randn(B, 3, 3, generator=gen, dtype=torch.float64)
    schedule = MalaSchedule(steps, step, step, temperature, temperature)
    return mala_sample(
        _harmonic(num_atoms), x0, cell0, num_atoms, schedule, generator=gen, reduce=False
    )


@pytest.mark.parametrize(("step", "temperature"), [(0.05, 0.5), (0.2, 0.5)])
def test_harmonic_well_gives_the_boltzmann_gaussian(step: float, temperature: float) -> None:
    result = _run(step, temperature, steps=250, seed=1)
    variance = temperature / STIFFNESS  # exp(-k x^2 / 2T): N(mu, T/k) per coordinate
    x = result.cart_coords
    n = x.shape[0]
    # the 400 chains are independent; mean within 4 standard errors, variance within 12 %
    assert torch.allclose(x.mean(0), MU, atol=4 * math.sqrt(variance / n))
    assert torch.allclose(x.var(0), torch.full((3,), variance, dtype=torch.float64), rtol=0.12)
    cells = result.lattice.reshape(B, 9)
    assert torch.allclose(cells.mean(0), CELL0.reshape(9), atol=4 * math.sqrt(variance / B))
    assert float((cells.var(0) / variance - 1).abs().max()) < 0.3  # 400 samples per entry
    acceptance = float(result.acceptance.mean())
    assert 0.3 <= acceptance <= 0.95
    # the unadjusted Langevin chain would have variance (T/k) / (1 - s k / 2T): 1.67x at s=0.2,
    # so this also shows that the Metropolis-Hastings correction does its job
    unadjusted = variance / (1 - step * STIFFNESS / (2 * temperature))
    if unadjusted > 1.3 * variance:
        assert float(x.var(0).mean()) < 1.15 * variance


def test_schedule_is_log_spaced_between_the_paper_ends() -> None:
    schedule = MalaSchedule()
    steps, temps = schedule.step_sizes(), schedule.temperatures()
    assert len(steps) == 1000
    assert steps[0].item() == pytest.approx(0.5)
    assert steps[-1].item() == pytest.approx(5e-4)
    assert temps[0].item() == pytest.approx(1.0)
    assert temps[-1].item() == pytest.approx(1e-3)
    ratios = steps[1:] / steps[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))
    with pytest.raises(ValueError, match="at least one step"):
        MalaSchedule(steps=0).step_sizes()


def test_annealing_to_low_temperature_finds_the_minimum() -> None:
    gen = torch.Generator().manual_seed(0)
    num_atoms = torch.full((16,), 3)
    x0 = 3 * torch.randn(48, 3, generator=gen, dtype=torch.float64)
    cell0 = torch.randn(16, 3, 3, generator=gen, dtype=torch.float64)
    schedule = MalaSchedule(steps=300)
    result = mala_sample(
        _harmonic(num_atoms), x0, cell0, num_atoms, schedule, generator=gen, reduce=False
    )
    # at T = 1e-3 the spread is sqrt(T/k) ~ 0.02
    assert float((result.cart_coords - MU).abs().max()) < 0.2
    assert float((result.lattice - CELL0).abs().max()) < 0.2


def test_rejected_inadmissible_proposals_leave_the_state() -> None:
    num_atoms = torch.full((4,), 2)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    cell0 = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64)
    never = lambda x, cell: torch.tensor([True, False, True, False])  # noqa: E731
    result = mala_sample(
        _harmonic(num_atoms),
        x0,
        cell0,
        num_atoms,
        MalaSchedule(20, 0.05, 0.05, 0.5, 0.5),
        generator=gen,
        reduce=False,
        admissible=never,
    )
    assert result.acceptance[1] == 0 and result.acceptance[3] == 0
    assert result.acceptance[0] > 0 and result.acceptance[2] > 0
    assert torch.equal(result.lattice[1], cell0[1])
    assert torch.equal(result.cart_coords[2:4], x0[2:4])


def test_gradient_is_carried_exactly_through_the_reduction() -> None:
    """After Niggli reduction + wrapping, the transformed gradient equals a fresh one."""
    from generators.models.energy_gnn import EnergyGNN, density_penalty

    torch.manual_seed(0)
    net = EnergyGNN(8, 8, 8, 2, 2).double().eval()
    num_atoms = torch.tensor([3, 4])
    types = torch.tensor([8, 14, 14, 11, 17, 11, 17])
    gen = torch.Generator().manual_seed(4)
    cell = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.5, 0.0], [0.0, 0.0, 5.0]], dtype=torch.float64)
    shear = torch.tensor([[1.0, 0, 0], [2.0, 1.0, 0], [-1.0, 3.0, 1.0]], dtype=torch.float64)
    cells = torch.stack([shear @ cell, shear.T @ (1.1 * cell)])  # skewed bases
    cart = 6 * torch.randn(7, 3, generator=gen, dtype=torch.float64)  # outside the cell

    def energy(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return net(x, types, c, num_atoms) + density_penalty(c, num_atoms)

    e0, gx0, gc0 = energy_and_gradients(energy, cart, cells)
    cart1, cells1, gc_carried = _reduce_state(cart, cells, num_atoms, gx0, gc0)
    assert not torch.allclose(cells1, cells)
    e1, gx1, gc1 = energy_and_gradients(energy, cart1, cells1)
    assert torch.allclose(e1, e0, atol=1e-10)
    assert torch.allclose(gx1, gx0, atol=1e-9)
    assert torch.allclose(gc_carried, gc1, atol=1e-9)
