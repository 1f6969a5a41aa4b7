"""Batched Niggli reduction of crystal cells in plain torch (CPU and CUDA, no custom kernels).

The reduction follows the Křivý–Gruber algorithm in the numerically stable form of
Grosse-Kunstleve, Sauter & Adams (Acta Cryst. A60, 1-6, 2004): steps A1-A8 act on the metric
parameters (A, B, C, ξ, η, ζ) = (a·a, b·b, c·c, 2b·c, 2a·c, 2a·b) with a tolerance ε, and each
step is an integer change of basis M (new rows = M · old rows). Steps A5-A7 subtract an integer
multiple of a vector at once (``entier``) so that very skewed cells need few iterations.

All crystals of a batch iterate together: in every round each crystal takes the first step
whose condition holds (A1, A2, the sign normalisation A3/A4, A5, A6, A7, A8) and is finished
when none applies. The change of basis ``C`` (with det +1 apart from an optional overall sign
flip that makes the cell right-handed) is computed in float64 under ``no_grad``; the reduced
cell is ``C @ lattice``, so gradients flow to the input cell through a constant integer matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_TOLERANCE = 1e-5
"""Relative tolerance: ε = tol · V^(2/3) (the metric parameters are squared lengths)."""

MAX_ITERATIONS = 500
"""Rounds after which a crystal that is still changing is reported as not converged."""


@dataclass
class NiggliResult:
    """Output of :func:`niggli_reduce`.

    Attributes
    ----------
    lattice
        [B, 3, 3] reduced cells ``transform @ input`` (differentiable w.r.t. the input).
    transform
        [B, 3, 3] integer change of basis (input dtype, no gradient), |det| = 1.
    converged
        [B] bool, False where the iteration limit was reached or the cell is degenerate.
    iterations
        Number of rounds the batch needed.
    """

    lattice: Tensor
    transform: Tensor
    converged: Tensor
    iterations: int


def metric_parameters(lattice: Tensor) -> Tensor:
    """(A, B, C, ξ, η, ζ) of [B, 3, 3] cells (rows are vectors), shape [B, 6]."""
    g = lattice @ lattice.transpose(-1, -2)
    return torch.stack(
        [g[:, 0, 0], g[:, 1, 1], g[:, 2, 2], 2 * g[:, 1, 2], 2 * g[:, 0, 2], 2 * g[:, 0, 1]],
        dim=-1,
    )


def _sign_class(x: Tensor, eps: Tensor) -> Tensor:
    """-1, 0 or +1 with a dead zone of ±ε."""
    return torch.where(x > eps, 1, torch.where(x < -eps, -1, 0)).to(x.dtype)


def _entier_multiple(x: Tensor, length2: Tensor) -> Tensor:
    """floor((x + A) / 2A), with sign(x) where that is 0 (the boundary cases of A5-A7)."""
    j = torch.floor((x + length2) / (2 * length2))
    return torch.where(j == 0, torch.sign(x), j)


def _step_matrices(params: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Change of basis of the first applicable Křivý–Gruber step, per crystal.

    Returns
    -------
    tuple[Tensor, Tensor]
        [B, 3, 3] matrices (identity where nothing applies) and a [B] bool "changed" mask.
    """
    a, b, c, xi, eta, zeta = params.unbind(-1)
    n = len(params)
    dtype, device = params.dtype, params.device
    eye = torch.eye(3, dtype=dtype, device=device).expand(n, 3, 3).clone()
    matrices = eye.clone()
    todo = torch.ones(n, dtype=torch.bool, device=device)

    def apply(cond: Tensor, m: Tensor) -> None:
        nonlocal todo
        take = cond & todo
        matrices[take] = m[take] if m.dim() == 3 else m
        todo = todo & ~take

    # A1: a longer than b (or equal, with |ξ| > |η|): swap a and b, negate c
    cond1 = (a > b + eps) | (((a - b).abs() <= eps) & (xi.abs() > eta.abs() + eps))
    apply(cond1, torch.tensor([[0, -1, 0], [-1, 0, 0], [0, 0, -1]], dtype=dtype, device=device))
    # A2: b longer than c (or equal, with |η| > |ζ|): swap b and c, negate a
    cond2 = (b > c + eps) | (((b - c).abs() <= eps) & (eta.abs() > zeta.abs() + eps))
    apply(cond2, torch.tensor([[-1, 0, 0], [0, 0, -1], [0, -1, 0]], dtype=dtype, device=device))
    # A3 / A4: make ξ, η, ζ all positive or all non-positive
    l_, m_, n_ = _sign_class(xi, eps), _sign_class(eta, eps), _sign_class(zeta, eps)
    all_positive = (l_ * m_ * n_) == 1
    i3 = torch.where(l_ == -1, -1.0, 1.0).to(dtype)
    j3 = torch.where(m_ == -1, -1.0, 1.0).to(dtype)
    k3 = torch.where(n_ == -1, -1.0, 1.0).to(dtype)
    i4 = torch.where(l_ == 1, -1.0, 1.0).to(dtype)
    j4 = torch.where(m_ == 1, -1.0, 1.0).to(dtype)
    k4 = torch.where(n_ == 1, -1.0, 1.0).to(dtype)
    odd = (i4 * j4 * k4) == -1  # flip one of the zero-valued angles to keep det = +1
    k4 = torch.where(odd & (n_ == 0), -k4, k4)
    odd = odd & (n_ != 0)
    j4 = torch.where(odd & (m_ == 0), -j4, j4)
    odd = odd & (m_ != 0)
    i4 = torch.where(odd & (l_ == 0), -i4, i4)
    diag = torch.where(
        all_positive.unsqueeze(-1),
        torch.stack([i3, j3, k3], -1),
        torch.stack([i4, j4, k4], -1),
    )
    cond34 = (diag != 1).any(-1)
    apply(cond34, torch.diag_embed(diag))
    # A5: reduce c by a multiple of b
    cond5 = (
        (xi.abs() > b + eps)
        | (((xi - b).abs() <= eps) & (2 * eta < zeta - eps))
        | (((xi + b).abs() <= eps) & (zeta < -eps))
    )
    m5 = eye.clone()
    m5[:, 2, 1] = -_entier_multiple(xi, b)
    apply(cond5, m5)
    # A6: reduce c by a multiple of a
    cond6 = (
        (eta.abs() > a + eps)
        | (((eta - a).abs() <= eps) & (2 * xi < zeta - eps))
        | (((eta + a).abs() <= eps) & (zeta < -eps))
    )
    m6 = eye.clone()
    m6[:, 2, 0] = -_entier_multiple(eta, a)
    apply(cond6, m6)
    # A7: reduce b by a multiple of a
    cond7 = (
        (zeta.abs() > a + eps)
        | (((zeta - a).abs() <= eps) & (2 * xi < eta - eps))
        | (((zeta + a).abs() <= eps) & (eta < -eps))
    )
    m7 = eye.clone()
    m7[:, 1, 0] = -_entier_multiple(zeta, a)
    apply(cond7, m7)
    # A8: c <- c + a + b
    total = xi + eta + zeta + a + b
    cond8 = (total < -eps) | ((total.abs() <= eps) & (2 * (a + eta) + zeta > eps))
    apply(cond8, torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=dtype, device=device))
    return matrices, ~todo


def niggli_transform(
    lattice: Tensor, tol: float = DEFAULT_TOLERANCE, max_iterations: int = MAX_ITERATIONS
) -> tuple[Tensor, Tensor, int]:
    """Integer change of basis to the Niggli cell, computed without gradient in float64.

    Parameters
    ----------
    lattice
        [B, 3, 3] cells, rows are the lattice vectors.
    tol
        Relative tolerance, ε = tol · V^(2/3).
    max_iterations
        Rounds before giving up on a crystal.

    Returns
    -------
    tuple[Tensor, Tensor, int]
        The [B, 3, 3] float64 transform C (reduced = C @ lattice, right-handed), a [B] bool
        converged mask and the number of rounds used.
    """
    with torch.no_grad():
        cell = lattice.detach().to(torch.float64)
        n = len(cell)
        det = torch.linalg.det(cell)
        finite = torch.isfinite(cell).flatten(1).all(-1) & (det.abs() > 1e-12)
        transform = torch.eye(3, dtype=torch.float64, device=cell.device).repeat(n, 1, 1)
        # start from a right-handed basis (−I is a valid change of basis of a 3D lattice)
        transform[det < 0] = -transform[det < 0]
        cell = torch.where(finite[:, None, None], transform @ cell, torch.eye(3).to(cell))
        eps = tol * torch.linalg.det(cell).abs().pow(2.0 / 3.0)
        active = finite.clone()
        rounds = 0
        while bool(active.any()) and rounds < max_iterations:
            rounds += 1
            idx = active.nonzero(as_tuple=True)[0]
            params = metric_parameters(cell[idx])
            step, changed = _step_matrices(params, eps[idx])
            cell[idx] = step @ cell[idx]
            transform[idx] = step @ transform[idx]
            active[idx[~changed]] = False
        converged = finite & ~active
    return transform, converged, rounds


def niggli_reduce(
    lattice: Tensor, tol: float = DEFAULT_TOLERANCE, max_iterations: int = MAX_ITERATIONS
) -> NiggliResult:
    """Niggli-reduce a batch of cells; gradients flow to ``lattice`` through ``C @ lattice``.

    Parameters
    ----------
    lattice
        [B, 3, 3] cells (rows are vectors), any float dtype and device.
    tol
        Relative tolerance of the reduction conditions, ε = tol · V^(2/3).
    max_iterations
        Rounds before a crystal is reported as not converged (its cell is still returned).

    Returns
    -------
    NiggliResult
        Reduced cells, the change of basis, a converged mask and the number of rounds.
    """
    transform, converged, rounds = niggli_transform(lattice, tol, max_iterations)
    c = transform.to(lattice.dtype)
    return NiggliResult(lattice=c @ lattice, transform=c, converged=converged, iterations=rounds)


@dataclass
class ReducedCrystals:
    """Crystals after :func:`reduce_crystals`.

    Attributes
    ----------
    cart_coords
        [N, 3] wrapped Cartesian positions, ``input − shift · lattice``.
    frac_coords
        [N, 3] fractional coordinates in the reduced cell, in [0, 1).
    lattice
        [B, 3, 3] reduced cells ``transform @ input``.
    transform
        [B, 3, 3] integer change of basis (no gradient).
    shift
        [N, 3] integer lattice translation (in the reduced basis) subtracted from each atom.
    converged
        [B] bool, see :class:`NiggliResult`.
    """

    cart_coords: Tensor
    frac_coords: Tensor
    lattice: Tensor
    transform: Tensor
    shift: Tensor
    converged: Tensor


def reduce_crystals(
    cart_coords: Tensor,
    lattice: Tensor,
    num_atoms: Tensor,
    tol: float = DEFAULT_TOLERANCE,
) -> ReducedCrystals:
    """Niggli-reduce the cells of a crystal batch and wrap the atoms into the new cells.

    The crystal (the infinite periodic set of atoms) is unchanged: the reduced cell spans the
    same lattice and every atom moves by a lattice vector. Differentiable w.r.t. both inputs
    (the integer change of basis and the wrapping translations are constants).

    Parameters
    ----------
    cart_coords
        [N, 3] Cartesian positions (Å).
    lattice
        [B, 3, 3] cells (rows are vectors).
    num_atoms
        [B] atoms per crystal.
    tol
        Relative tolerance of the reduction.

    Returns
    -------
    ReducedCrystals
        Wrapped positions, fractional coordinates, reduced cells and the integer maps.
    """
    result = niggli_reduce(lattice, tol)
    per_atom = result.lattice.repeat_interleave(num_atoms, dim=0)
    frac = torch.linalg.solve(per_atom.transpose(-1, -2), cart_coords.unsqueeze(-1)).squeeze(-1)
    shift = torch.floor(frac.detach())
    frac = frac - shift
    frac = torch.where(frac >= 1.0, frac - 1.0, frac)  # float32 rounding of 1 - tiny
    cart = cart_coords - torch.einsum("ni,nij->nj", shift, per_atom)
    return ReducedCrystals(
        cart_coords=cart,
        frac_coords=frac,
        lattice=result.lattice,
        transform=result.transform,
        shift=shift,
        converged=result.converged,
    )


__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_ITERATIONS",
    "NiggliResult",
    "ReducedCrystals",
    "metric_parameters",
    "niggli_reduce",
    "niggli_transform",
    "reduce_crystals",
]
