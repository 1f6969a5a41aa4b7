"""The papers' formulas in plain numpy, for tests that compare a model with an independent
computation: noise schedules, the wrapped-normal score, minimum-image displacements and
per-crystal re-centring. Nothing here imports :mod:`generators`.

Time indices follow the models: index 0 is "no noise", the diffusion steps are t = 1..T.
"""

from __future__ import annotations

import numpy as np

IMAGES = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T
"""The 27 neighbouring cell offsets."""


def cosine_alpha_bar(num_steps: int = 1000, s: float = 0.008) -> np.ndarray:
    """ᾱ_0..ᾱ_T of the cosine schedule with β clipped to [1e-4, 0.9999] (DiffCSP), [T + 1]."""
    t = np.arange(num_steps + 1)
    f = np.cos((t / num_steps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1.0 - f[1:] / f[:-1], 1e-4, 0.9999)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def dpcdvae_alpha_bar(
    num_steps: int = 1000, beta_start: float = 1e-10, beta_end: float = 0.01
) -> np.ndarray:
    """ᾱ_0..ᾱ_T of DP-CDVAE's β = sigmoid(linspace(−10, 6, T))·(end − start) + start, [T + 1]."""
    x = np.linspace(-10.0, 6.0, num_steps)
    betas = (beta_end - beta_start) / (1.0 + np.exp(-x)) + beta_start
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def geometric_ladder(first: float, last: float, levels: int) -> np.ndarray:
    """first·(last/first)^(i/(L−1)), i = 0..L−1."""
    return first * (last / first) ** (np.arange(levels) / (levels - 1))


def diffcsp_sigmas(num_steps: int = 1000, first: float = 0.005, last: float = 0.5) -> np.ndarray:
    """σ_0 = 0, then DiffCSP's geometric σ_1..σ_T, [T + 1]."""
    return np.concatenate([[0.0], geometric_ladder(first, last, num_steps)])


def wrapped_normal_score(x: np.ndarray, sigma: np.ndarray | float, images: int = 10) -> np.ndarray:
    """d/dx log Σ_k exp(−(x + k)²/2σ²), k = −images..images, by the explicit image sum.

    The weights are shifted by their largest exponent before exponentiating (the same ratio,
    no underflow at small σ).
    """
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), np.shape(x))
    shifted = np.asarray(x, dtype=float)[..., None] + np.arange(-images, images + 1)
    exponent = -(shifted**2) / (2.0 * sigma[..., None] ** 2)
    weights = np.exp(exponent - exponent.max(axis=-1, keepdims=True))
    return -(weights * shifted).sum(-1) / weights.sum(-1) / sigma**2


def min_image(frac_to: np.ndarray, frac_from: np.ndarray, lattices: np.ndarray) -> np.ndarray:
    """Shortest Cartesian vector from ``frac_from`` to ``frac_to`` among 27 images, [N, 3].

    ``lattices`` holds each atom's cell [N, 3, 3] (rows are the vectors).
    """
    diff = frac_to - frac_from
    diff = diff - np.round(diff)
    cart = np.einsum("nmi,nij->nmj", diff[:, None, :] + IMAGES[None], lattices)
    best = np.linalg.norm(cart, axis=-1).argmin(axis=1)
    return cart[np.arange(len(cart)), best]


def crystal_mean(values: np.ndarray, crystal: np.ndarray, num_crystals: int) -> np.ndarray:
    """Mean of the rows of each crystal, [B, ...]."""
    total = np.zeros((num_crystals, *values.shape[1:]))
    np.add.at(total, crystal, values)
    counts = np.bincount(crystal, minlength=num_crystals).reshape(-1, *[1] * (values.ndim - 1))
    return total / counts


def recentre(values: np.ndarray, crystal: np.ndarray, num_crystals: int) -> np.ndarray:
    """Rows minus their crystal's mean."""
    return values - crystal_mean(values, crystal, num_crystals)[crystal]


def translation_free_error(
    frac: np.ndarray, frac_true: np.ndarray, crystal: np.ndarray, num_crystals: int
) -> np.ndarray:
    """Per-atom fractional error after removing each crystal's common translation, [N, 3].

    The per-atom difference is wrapped to [−0.5, 0.5), the first atom of each crystal is taken
    as the reference translation, and the differences to it are wrapped again: zero for a
    rigidly translated copy of the crystal (atom order kept).
    """
    diff = frac - frac_true
    diff = diff - np.round(diff)
    first = np.array([np.flatnonzero(crystal == b)[0] for b in range(num_crystals)])
    rel = diff - diff[first][crystal]
    return rel - np.round(rel)
