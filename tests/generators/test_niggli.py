"""Batched torch Niggli reduction against pymatgen, gradients, and atoms carried along."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from generators.niggli import metric_parameters, niggli_reduce, reduce_crystals


def _random_lattices(n: int, seed: int) -> torch.Tensor:
    """Gaussian cells, some made skewed by a random unimodular shear (hard cases)."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randn(n, 3, 3, generator=gen, dtype=torch.float64) * 4.0
    shear = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    shear[:, 1, 0] = torch.randint(-6, 7, (n,), generator=gen).double()
    shear[:, 2, 1] = torch.randint(-6, 7, (n,), generator=gen).double()
    skewed = torch.rand(n, generator=gen) < 0.5
    cells[skewed] = shear[skewed] @ cells[skewed]
    return cells


def _unsigned(params: torch.Tensor) -> np.ndarray:
    """(A, B, C, |ξ|, |η|, |ζ|): pymatgen's final ``find_mapping`` (angle tolerance 1°) may
    return a cell whose near-90° angles have the other sign, so signs are not compared."""
    out = params.numpy().copy()
    out[3:] = np.abs(out[3:])
    return out


def _unsigned_of(lattice: Lattice) -> np.ndarray:
    return _unsigned(metric_parameters(torch.tensor(lattice.matrix)[None])[0])


def _is_niggli_reduced(params: np.ndarray, tol: float) -> bool:
    """The Niggli conditions (Křivý & Gruber 1976) on (A, B, C, ξ, η, ζ)."""
    a, b, c, xi, eta, zeta = params
    e = tol
    ok = a <= b + e and b <= c + e
    all_pos = xi > e and eta > e and zeta > e
    all_nonpos = xi <= e and eta <= e and zeta <= e
    ok &= all_pos or all_nonpos
    ok &= abs(xi) <= b + e and abs(eta) <= a + e and abs(zeta) <= a + e
    ok &= xi + eta + zeta + a + b >= -e
    return bool(ok)


def test_matches_pymatgen_on_random_lattices() -> None:
    cells = _random_lattices(300, seed=3)
    result = niggli_reduce(cells)
    assert bool(result.converged.all())
    mine = metric_parameters(result.lattice)
    volumes_in = torch.linalg.det(cells).abs()
    volumes_out = torch.linalg.det(result.lattice)
    assert torch.allclose(volumes_out, volumes_in, rtol=1e-9)
    assert bool((volumes_out > 0).all()), "reduced cells are right-handed"
    assert torch.allclose(result.transform, result.transform.round())
    assert torch.allclose(torch.linalg.det(result.transform).abs(), torch.ones(300).double())
    for i in range(len(cells)):
        reference = Lattice(cells[i].numpy()).get_niggli_reduced_lattice()
        np.testing.assert_allclose(
            _unsigned(mine[i]), _unsigned_of(reference), rtol=1e-7, atol=1e-7
        )
        # pymatgen's reduction of our cell gives the same metric (it is already reduced)
        again = Lattice(result.lattice[i].numpy()).get_niggli_reduced_lattice()
        np.testing.assert_allclose(_unsigned_of(again), _unsigned(mine[i]), rtol=1e-7, atol=1e-7)
        eps = 1e-5 * float(volumes_in[i]) ** (2 / 3)
        assert _is_niggli_reduced(mine[i].numpy(), eps), f"lattice {i} not Niggli-reduced"


def test_float32_batch_agrees_with_float64() -> None:
    cells = _random_lattices(64, seed=5)
    r64 = niggli_reduce(cells)
    r32 = niggli_reduce(cells.float())
    assert r32.lattice.dtype == torch.float32
    np.testing.assert_allclose(
        metric_parameters(r32.lattice.double()).numpy(),
        metric_parameters(r64.lattice).numpy(),
        rtol=1e-4,
        atol=1e-3,
    )


def test_reduced_cell_is_left_alone() -> None:
    cell = torch.tensor([[[3.0, 0.0, 0.0], [0.5, 4.0, 0.0], [0.3, 0.2, 5.0]]], dtype=torch.float64)
    first = niggli_reduce(cell)
    second = niggli_reduce(first.lattice)
    assert torch.allclose(second.transform, torch.eye(3, dtype=torch.float64))
    assert torch.allclose(second.lattice, first.lattice)


def test_gradient_flows_through_constant_change_of_basis() -> None:
    cells = _random_lattices(4, seed=11).requires_grad_(True)
    result = niggli_reduce(cells)
    weights = torch.randn(4, 3, 3, dtype=torch.float64)
    (result.lattice * weights).sum().backward()
    expected = result.transform.transpose(-1, -2) @ weights  # d(C L)/dL contracted
    assert torch.allclose(cells.grad, expected)
    # finite differences: the function is locally linear in L
    assert torch.autograd.gradcheck(
        lambda x: niggli_reduce(x).lattice, (cells.detach()[:2].clone().requires_grad_(True),)
    )


def test_degenerate_cell_is_reported_per_item() -> None:
    cells = _random_lattices(3, seed=2)
    cells[1] = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64)
    cells[2, 0, 0] = float("nan")
    result = niggli_reduce(cells)
    assert result.converged.tolist() == [True, False, False]
    reference = Lattice(cells[0].numpy()).get_niggli_reduced_lattice()
    np.testing.assert_allclose(
        sorted(Lattice(result.lattice[0].numpy()).abc), sorted(reference.abc)
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_reduce_crystals_keeps_the_crystal(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    num_atoms = torch.tensor([3, 5])
    cells = _random_lattices(2, seed=seed + 20)
    cart = torch.randn(8, 3, generator=gen, dtype=torch.float64) * 10  # far outside the cell
    reduced = reduce_crystals(cart, cells, num_atoms)
    assert bool(((reduced.frac_coords >= 0) & (reduced.frac_coords < 1)).all())
    per_atom = reduced.lattice.repeat_interleave(num_atoms, 0)
    assert torch.allclose(
        torch.einsum("ni,nij->nj", reduced.frac_coords, per_atom), reduced.cart_coords, atol=1e-9
    )
    species = ["Si", "O", "O", "Na", "Cl", "Cl", "Na", "K"]
    matcher = StructureMatcher(primitive_cell=False, scale=False, attempt_supercell=False)
    start = 0
    for b, n in enumerate(num_atoms.tolist()):
        before = Structure(
            Lattice(cells[b].numpy()),
            species[start : start + n],
            cart[start : start + n].numpy(),
            coords_are_cartesian=True,
        )
        after = Structure(
            Lattice(reduced.lattice[b].numpy()),
            species[start : start + n],
            reduced.frac_coords[start : start + n].numpy(),
        )
        assert matcher.fit(before, after)
        # the same crystal in the same orientation: every new position is an old one + lattice
        # vector
        diff = (reduced.cart_coords[start : start + n] - cart[start : start + n]).numpy()
        frac_diff = diff @ np.linalg.inv(cells[b].numpy())
        np.testing.assert_allclose(frac_diff, np.round(frac_diff), atol=1e-8)
        start += n
