"""The shared diffusion toolkit of the crystal generators.

Pieces used by DiffCSP, DP-CDVAE and CDVAE (see ``docs/generators.md``):

* noise schedules: DDPM betas (``cosine``, ``linear``, ``sigmoid`` and DP-CDVAE's
  ``sigmoid(linspace(-10, 6))`` variant) wrapped in :class:`DDPMSchedule`, and geometric
  noise levels (:func:`geometric_sigmas`);
* the wrapped normal on the unit circle/torus: log density, score (truncated image sum
  k = −10..10) and the Monte-Carlo score normaliser E‖∇log N_w‖², bundled with a geometric
  σ ladder in :class:`WrappedNormalSchedule`;
* sinusoidal time embeddings and Fourier features of fractional coordinates or of fractional
  differences.

Time indices follow the DiffCSP code: index 0 is "no noise" (β_0 = 0, σ_0 = 0) and the
diffusion steps are t = 1..T, so every per-step tensor has T + 1 entries.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import torch
from platformdirs import user_cache_dir
from torch import Tensor

# --------------------------------------------------------------------------- DDPM betas


def cosine_betas(
    num_steps: int, s: float = 0.008, clip: tuple[float, float] = (1e-4, 0.9999)
) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal): ᾱ(t) = cos²(((t/T) + s)/(1 + s)·π/2) / ᾱ(0).

    Parameters
    ----------
    num_steps
        T, the number of diffusion steps.
    s
        Offset (DiffCSP: 0.008).
    clip
        β is clipped to this range (DiffCSP: [1e-4, 0.9999]).

    Returns
    -------
    Tensor
        [T] float64 betas β_1..β_T.
    """
    _check_steps(num_steps)
    x = torch.linspace(0, num_steps, num_steps + 1, dtype=torch.float64)
    alpha_bar = torch.cos(((x / num_steps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alpha_bar = alpha_bar / alpha_bar[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(clip[0], clip[1])


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Linear schedule: β_t = linspace(beta_start, beta_end, T), [T] float64."""
    _check_steps(num_steps)
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def sigmoid_betas(
    num_steps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    low: float = -6.0,
    high: float = 6.0,
) -> Tensor:
    """Sigmoid schedule: β_t = sigmoid(linspace(low, high, T))·(end − start) + start, [T]."""
    _check_steps(num_steps)
    x = torch.linspace(low, high, num_steps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def dpcdvae_sigmoid_betas(
    num_steps: int = 1000, beta_start: float = 1e-10, beta_end: float = 0.01
) -> Tensor:
    """DP-CDVAE's sigmoid betas: sigmoid(linspace(−10, 6, T))·(end − start) + start.

    The range −10..6 is hard-coded in DP-CDVAE's ``get_beta_schedule`` (its ``beta_init`` /
    ``beta_final`` arguments are ignored); β_start 1e-10 and β_end 0.01 are its config values.
    """
    return sigmoid_betas(num_steps, beta_start, beta_end, low=-10.0, high=6.0)


def make_betas(kind: str, num_steps: int, **kwargs: float) -> Tensor:
    """Betas by name: ``cosine``, ``linear``, ``sigmoid`` or ``dpcdvae_sigmoid``.

    Raises
    ------
    ValueError
        For an unknown schedule name.
    """
    makers = {
        "cosine": cosine_betas,
        "linear": linear_betas,
        "sigmoid": sigmoid_betas,
        "dpcdvae_sigmoid": dpcdvae_sigmoid_betas,
    }
    if kind not in makers:
        raise ValueError(f"unknown beta schedule {kind!r}; expected one of {sorted(makers)}")
    return makers[kind](num_steps, **kwargs)


def geometric_sigmas(sigma_begin: float, sigma_end: float, num_levels: int) -> Tensor:
    """Geometric ladder exp(linspace(log begin, log end, L)), [L] float64.

    DiffCSP: 0.005 → 0.5 (T = 1000, ascending with t); CDVAE: 10 → 0.01 (L = 50).
    """
    _check_steps(num_levels)
    if sigma_begin <= 0 or sigma_end <= 0:
        raise ValueError(f"sigmas must be positive, got {sigma_begin} and {sigma_end}")
    return torch.exp(
        torch.linspace(math.log(sigma_begin), math.log(sigma_end), num_levels, dtype=torch.float64)
    )


def strided_timesteps(num_steps: int, sample_steps: int) -> list[int]:
    """Descending time indices T = t_S > ... > t_1 ≥ 1 for sampling with S ≤ T steps.

    With ``sample_steps == num_steps`` this is T, T−1, ..., 1 (the full chain). Fewer steps
    give an evenly strided subset that always starts at T; the caller pairs each t with the
    next index (or 0 after the last) as its "previous" step.
    """
    _check_steps(num_steps)
    if not 1 <= sample_steps <= num_steps:
        raise ValueError(f"sample steps must be in 1..{num_steps}, got {sample_steps}")
    grid = torch.linspace(num_steps, 1, sample_steps, dtype=torch.float64).round().long()
    return [int(t) for t in torch.unique_consecutive(grid)]


def _check_steps(num_steps: int) -> None:
    if int(num_steps) < 1:
        raise ValueError(f"the number of diffusion steps must be >= 1, got {num_steps}")


# --------------------------------------------------------------------------- DDPM schedule


class DDPMSchedule(torch.nn.Module):
    """A DDPM noise schedule as buffers indexed by t = 0..T (index 0: no noise).

    Parameters
    ----------
    betas
        [T] betas β_1..β_T (e.g. from :func:`cosine_betas`).

    Attributes
    ----------
    betas, alphas, alphas_cumprod, posterior_sigmas
        [T + 1] float32 buffers; ``posterior_sigmas[t]`` = sqrt(β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)).
    """

    def __init__(self, betas: Tensor) -> None:
        super().__init__()
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas.to(torch.float64)])
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        posterior = torch.zeros_like(betas)
        posterior[1:] = torch.sqrt(
            betas[1:] * (1.0 - alphas_cumprod[:-1]) / (1.0 - alphas_cumprod[1:])
        )
        self.num_steps = len(betas) - 1
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas", alphas.float())
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("posterior_sigmas", posterior.float())

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε, with ``t`` broadcast over the trailing dims."""
        alpha_bar = _expand(self.alphas_cumprod[t], x0)
        return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise

    def posterior_step(
        self,
        x_t: Tensor,
        eps_hat: Tensor,
        t: int,
        t_prev: int | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """One reverse step x_t → x_{t_prev} from an ε prediction.

        With ``t_prev = t − 1`` (default) this is the DDPM posterior mean
        (1/sqrt(α_t))·(x_t − β_t/sqrt(1 − ᾱ_t)·ε̂) plus σ_t^post·z. For a strided chain
        (``t_prev < t − 1``) the same formula is applied with the respaced
        β' = 1 − ᾱ_t/ᾱ_{t_prev}.
        """
        t_prev = t - 1 if t_prev is None else t_prev
        ab_t = self.alphas_cumprod[t]
        ab_prev = self.alphas_cumprod[t_prev]
        alpha = ab_t / ab_prev
        beta = 1.0 - alpha
        mean = (x_t - beta / (1.0 - ab_t).sqrt() * eps_hat) / alpha.sqrt()
        if noise is None or t_prev == 0:
            return mean
        sigma = (beta * (1.0 - ab_prev) / (1.0 - ab_t)).sqrt()
        return mean + sigma * noise


def _expand(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(values.shape + (1,) * (like.dim() - values.dim()))


# --------------------------------------------------------------------------- wrapped normal


def _image_shifts(n_terms: int, period: float, like: Tensor) -> Tensor:
    return torch.arange(-n_terms, n_terms + 1, dtype=like.dtype, device=like.device) * period


def wrapped_normal_log_density(
    x: Tensor, sigma: Tensor | float, n_terms: int = 10, period: float = 1.0
) -> Tensor:
    """Log-density log N_w(x; 0, σ²) = log Σ_{k=−n..n} N(x + k·period; 0, σ²), elementwise.

    Parameters
    ----------
    x
        Points (any shape).
    sigma
        Standard deviation, broadcastable to ``x``.
    n_terms
        Images k = −n_terms..n_terms (DiffCSP: 10).
    period
        Period of the circle (1 for fractional coordinates).
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    shifted = x.unsqueeze(-1) + _image_shifts(n_terms, period, x)
    sig = sigma.unsqueeze(-1) if sigma.dim() > 0 else sigma
    log_terms = -(shifted**2) / (2 * sig**2) - torch.log(sig * math.sqrt(2 * math.pi))
    return torch.logsumexp(log_terms, dim=-1)


def wrapped_normal_score(
    x: Tensor, sigma: Tensor | float, n_terms: int = 10, period: float = 1.0
) -> Tensor:
    """∇_x log N_w(x; 0, σ²) = −Σ_k (x + k)/σ² · w_k / Σ_k w_k, w_k = exp(−(x + k)²/2σ²).

    DiffCSP's ``d_log_p_wrapped_normal`` is the negative of this. Computed with
    softmax-normalised weights, so it stays finite for small σ.
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    shifted = x.unsqueeze(-1) + _image_shifts(n_terms, period, x)
    sig = sigma.unsqueeze(-1) if sigma.dim() > 0 else sigma
    weights = torch.softmax(-(shifted**2) / (2 * sig**2), dim=-1)
    return -(weights * shifted).sum(-1) / sigma**2


def wrapped_score_norm(
    sigmas: Tensor,
    num_samples: int = 10_000,
    n_terms: int = 10,
    generator: torch.Generator | None = None,
    chunk: int = 64,
) -> Tensor:
    """Monte-Carlo E_x‖∇log N_w(x; σ)‖² per σ (one dimension), x ~ N_w(0, σ²).

    DiffCSP's ``sigma_norm``: x = (σ·z) mod 1 with m = 10,000 samples. Worked in chunks of σ
    values to bound memory.

    Returns
    -------
    Tensor
        [len(sigmas)] float64.
    """
    sigmas = sigmas.to(torch.float64)
    out = torch.empty_like(sigmas)
    for start in range(0, len(sigmas), chunk):
        sig = sigmas[start : start + chunk]
        z = torch.randn(num_samples, len(sig), generator=generator, dtype=torch.float64)
        x = torch.remainder(sig * z, 1.0)
        out[start : start + chunk] = (wrapped_normal_score(x, sig, n_terms) ** 2).mean(0)
    return out


@lru_cache(maxsize=8)
def _cached_score_norm(
    sigma_begin: float, sigma_end: float, num_steps: int, num_samples: int, seed: int
) -> Tensor:
    """Normalisers of a geometric ladder, cached in memory and on disk (a few s to compute)."""
    key = f"wrapped_norm_{sigma_begin:g}_{sigma_end:g}_{num_steps}_{num_samples}_{seed}.pt"
    path = _norm_cache_dir() / key
    if path.is_file():
        try:
            cached = torch.load(path, weights_only=True)
            if isinstance(cached, Tensor) and cached.shape == (num_steps,):
                return cached
        except Exception:  # a corrupt cache file is recomputed
            pass
    generator = torch.Generator().manual_seed(seed)
    sigmas = geometric_sigmas(sigma_begin, sigma_end, num_steps)
    norms = wrapped_score_norm(sigmas, num_samples, generator=generator)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(norms, tmp)
        os.replace(tmp, path)
    except OSError:  # read-only cache: keep the in-memory value
        pass
    return norms


def _norm_cache_dir() -> Path:
    root = os.environ.get("DFTLOOP_CACHE_DIR")
    return (Path(root) if root else Path(user_cache_dir("dftloop"))) / "diffusion"


class WrappedNormalSchedule(torch.nn.Module):
    """Geometric σ ladder of the wrapped-normal coordinate diffusion, with score normalisers.

    Parameters
    ----------
    num_steps
        T (DiffCSP: 1000).
    sigma_begin, sigma_end
        σ_1 and σ_T (DiffCSP: 0.005 and 0.5).
    num_samples
        Monte-Carlo samples of the normaliser (DiffCSP: 10,000). Computed once per schedule
        (seeded and cached in memory and under ``DFTLOOP_CACHE_DIR``/the user cache, so every
        model of a schedule has the same buffer).

    Attributes
    ----------
    sigmas
        [T + 1] buffer, σ_0 = 0.
    score_norms
        [T + 1] buffer λ_t⁻¹ = E‖∇log N_w(σ_t)‖² (per coordinate), index 0 set to 1.
    """

    def __init__(
        self,
        num_steps: int = 1000,
        sigma_begin: float = 0.005,
        sigma_end: float = 0.5,
        num_samples: int = 10_000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        sigmas = geometric_sigmas(sigma_begin, sigma_end, num_steps)
        norms = _cached_score_norm(sigma_begin, sigma_end, num_steps, num_samples, seed)
        self.num_steps = num_steps
        self.register_buffer("sigmas", torch.cat([torch.zeros(1), sigmas.float()]))
        self.register_buffer("score_norms", torch.cat([torch.ones(1), norms.float()]))

    def perturb(self, frac: Tensor, t_atoms: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Noisy coordinates (f + σ_t·ε) mod 1 and the normalised score target.

        Parameters
        ----------
        frac
            [N, 3] clean fractional coordinates.
        t_atoms
            [N] time index per atom.
        noise
            [N, 3] standard normal ε.

        Returns
        -------
        tuple[Tensor, Tensor]
            The noisy coordinates and ∇log N_w(σ_t ε; σ_t)/sqrt(λ_t⁻¹).
        """
        sigma = self.sigmas[t_atoms].unsqueeze(-1)
        norm = self.score_norms[t_atoms].unsqueeze(-1)
        noisy = torch.remainder(frac + sigma * noise, 1.0)
        target = wrapped_normal_score(sigma * noise, sigma) / norm.sqrt()
        return noisy, target


# --------------------------------------------------------------------------- embeddings


def sinusoidal_embedding(t: Tensor, dim: int, max_positions: float = 10_000.0) -> Tensor:
    """Transformer-style sinusoidal embedding [sin(t·ω_i), cos(t·ω_i)], ω_i = P^(−i/(d/2−1)).

    Parameters
    ----------
    t
        [B] times (DiffCSP feeds integer steps 1..T; DP-CDVAE t/T).
    dim
        Embedding size (even).
    max_positions
        P, the longest period (10,000 in both papers).

    Returns
    -------
    Tensor
        [B, dim] in the default floating dtype (float32 unless a caller, e.g. a float64 check,
        changed it), whatever the dtype of ``t``.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"the time embedding dimension must be even and >= 4, got {dim}")
    half = dim // 2
    scale = math.log(max_positions) / (half - 1)
    dtype = torch.get_default_dtype()
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=dtype) * -scale)
    args = t.to(dtype).unsqueeze(-1) * freqs
    return torch.cat([args.sin(), args.cos()], dim=-1)


class SinusoidalTimeEmbedding(torch.nn.Module):
    """Module form of :func:`sinusoidal_embedding` (no parameters)."""

    def __init__(self, dim: int, max_positions: float = 10_000.0) -> None:
        super().__init__()
        self.dim = dim
        self.max_positions = max_positions

    def forward(self, t: Tensor) -> Tensor:
        """[B] times -> [B, dim]."""
        return sinusoidal_embedding(t, self.dim, self.max_positions)


def integer_frequencies(num_freqs: int) -> Tensor:
    """2π·k for k = 0..num_freqs−1 (DiffCSP's ``SinusoidsEmbedding``)."""
    return 2 * math.pi * torch.arange(num_freqs, dtype=torch.float32)


def dyadic_frequencies(k_min: int = 3, k_max: int = 8) -> Tensor:
    """2π·2^k for k = k_min..k_max (DP-CDVAE's coordinate Fourier features: 3..8)."""
    return 2 * math.pi * 2.0 ** torch.arange(k_min, k_max + 1, dtype=torch.float32)


def fourier_features(x: Tensor, frequencies: Tensor) -> Tensor:
    """[sin(ω·x), cos(ω·x)] of every coordinate and frequency.

    Parameters
    ----------
    x
        [..., D] (fractional coordinates or differences; D = 3).
    frequencies
        [K] angular frequencies.

    Returns
    -------
    Tensor
        [..., 2·D·K]: all sines (coordinate-major), then all cosines.
    """
    args = (x.unsqueeze(-1) * frequencies.to(x)).flatten(-2)
    return torch.cat([args.sin(), args.cos()], dim=-1)


def wrapped_difference(frac_i: Tensor, frac_j: Tensor) -> Tensor:
    """(f_j − f_i) mod 1, in [0, 1): the translation-invariant edge input of CSPNet."""
    return torch.remainder(frac_j - frac_i, 1.0)


__all__ = [
    "DDPMSchedule",
    "SinusoidalTimeEmbedding",
    "WrappedNormalSchedule",
    "cosine_betas",
    "dpcdvae_sigmoid_betas",
    "dyadic_frequencies",
    "fourier_features",
    "geometric_sigmas",
    "integer_frequencies",
    "linear_betas",
    "make_betas",
    "sigmoid_betas",
    "sinusoidal_embedding",
    "strided_timesteps",
    "wrapped_difference",
    "wrapped_normal_log_density",
    "wrapped_normal_score",
    "wrapped_score_norm",
]
