"""The diffusion toolkit against closed forms and finite differences."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from generators.diffusion import (
    DDPMSchedule,
    WrappedNormalSchedule,
    cosine_betas,
    dpcdvae_sigmoid_betas,
    dyadic_frequencies,
    fourier_features,
    geometric_sigmas,
    integer_frequencies,
    linear_betas,
    make_betas,
    sigmoid_betas,
    sinusoidal_embedding,
    strided_timesteps,
    wrapped_difference,
    wrapped_normal_log_density,
    wrapped_normal_score,
    wrapped_score_norm,
)


def test_cosine_betas_closed_form() -> None:
    T, s = 1000, 0.008
    betas = cosine_betas(T, s).numpy()
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (1, 2, 10, 500, 900, 999, 1000):
        expected = min(max(1 - f(t) / f(t - 1), 1e-4), 0.9999)
        assert betas[t - 1] == pytest.approx(expected, rel=1e-9)
    assert betas.min() >= 1e-4 and betas.max() <= 0.9999
    assert betas[-1] == pytest.approx(0.9999)  # the last step is clipped
    # the product of alphas follows the cosine law (where no clip applies)
    alpha_bar = np.cumprod(1 - betas)
    assert alpha_bar[499] == pytest.approx(f(500) / f(0), rel=1e-3)


def test_linear_sigmoid_and_dpcdvae_betas() -> None:
    lin = linear_betas(11, 0.1, 0.2).numpy()
    assert np.allclose(lin, 0.1 + 0.01 * np.arange(11))
    sig = sigmoid_betas(5, 0.0, 1.0, -2.0, 2.0).numpy()
    assert np.allclose(sig, 1 / (1 + np.exp(-np.linspace(-2, 2, 5))))
    dp = dpcdvae_sigmoid_betas(1000).numpy()
    x = np.linspace(-10, 6, 1000)
    assert np.allclose(dp, 1 / (1 + np.exp(-x)) * (0.01 - 1e-10) + 1e-10, rtol=1e-12)
    assert torch.equal(make_betas("cosine", 10), cosine_betas(10))
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match=">= 1"):
        cosine_betas(0)


def test_geometric_sigmas_and_strides() -> None:
    sig = geometric_sigmas(0.005, 0.5, 1000).numpy()
    assert sig[0] == pytest.approx(0.005) and sig[-1] == pytest.approx(0.5)
    ratios = sig[1:] / sig[:-1]
    assert np.allclose(ratios, 100 ** (1 / 999))
    assert strided_timesteps(1000, 1000) == list(range(1000, 0, -1))
    steps = strided_timesteps(1000, 10)
    assert steps[0] == 1000 and steps[-1] == 1 and len(steps) == 10
    assert all(a > b for a, b in itertools.pairwise(steps))
    with pytest.raises(ValueError, match="sample steps"):
        strided_timesteps(10, 11)


def test_ddpm_schedule_q_sample_and_posterior() -> None:
    sched = DDPMSchedule(cosine_betas(100))
    assert sched.betas[0] == 0 and sched.alphas_cumprod[0] == 1
    x0 = torch.randn(4, 3, 3)
    noise = torch.randn(4, 3, 3)
    t = torch.tensor([1, 10, 50, 100])
    xt = sched.q_sample(x0, t, noise)
    ab = sched.alphas_cumprod[t].view(-1, 1, 1)
    assert torch.allclose(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    # with the true noise, the posterior mean of a 1-step move recovers the DDPM formula
    tt = 50
    xt = sched.q_sample(x0, torch.full((4,), tt), noise)
    step = sched.posterior_step(xt, noise, tt)
    a, b, abar = sched.alphas[tt], sched.betas[tt], sched.alphas_cumprod[tt]
    assert torch.allclose(step, (xt - b / (1 - abar).sqrt() * noise) / a.sqrt(), atol=1e-6)
    # strided: one jump from t to 0 with the true noise returns x0 exactly
    assert torch.allclose(sched.posterior_step(xt, noise, tt, 0), x0, atol=1e-4)
    post = sched.posterior_sigmas
    assert post[1] == 0
    expected = (b * (1 - sched.alphas_cumprod[tt - 1]) / (1 - abar)).sqrt()
    assert post[tt] == pytest.approx(float(expected), rel=1e-5)


def test_wrapped_normal_density_normalised_and_periodic() -> None:
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)
    for sigma in (0.05, 0.3, 1.0):
        p = wrapped_normal_log_density(x, sigma).exp()
        assert torch.trapz(p, x).item() == pytest.approx(1.0, abs=1e-6)
    y = torch.rand(50, dtype=torch.float64)
    assert torch.allclose(
        wrapped_normal_log_density(y, 0.4), wrapped_normal_log_density(y + 1, 0.4), atol=1e-9
    )


def test_wrapped_normal_score_matches_finite_differences() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, generator=gen, dtype=torch.float64) * 2 - 1
    sigma = torch.exp(torch.empty(200, dtype=torch.float64).uniform_(math.log(0.005), 0.0))
    x = x * sigma.clamp(max=0.5) * 3  # probe where the density is not vanishingly small
    h = 1e-6 * sigma
    fd = (wrapped_normal_log_density(x + h, sigma) - wrapped_normal_log_density(x - h, sigma)) / (
        2 * h
    )
    score = wrapped_normal_score(x, sigma)
    assert torch.allclose(score, fd, rtol=1e-5, atol=1e-4)
    # small sigma: the score is the Gaussian one
    assert torch.allclose(wrapped_normal_score(torch.tensor([0.01]), 0.01), torch.tensor([-100.0]))
    # autograd agrees too
    xa = x.clone().requires_grad_(True)
    wrapped_normal_log_density(xa, sigma).sum().backward()
    assert torch.allclose(xa.grad, score, rtol=1e-6, atol=1e-6)


def test_score_norm_monte_carlo() -> None:
    sigmas = torch.tensor([0.005, 0.05, 0.5, 2.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    norm = wrapped_score_norm(sigmas, 20_000, generator=gen)
    # small sigma: E[(x/σ²)²] = 1/σ²; large sigma: the wrapped normal tends to uniform (score -> 0)
    assert norm[0].item() == pytest.approx(1 / 0.005**2, rel=0.03)
    assert norm[1].item() == pytest.approx(1 / 0.05**2, rel=0.03)
    assert norm[3].item() < 1e-3
    sched = WrappedNormalSchedule(100, num_samples=2000)
    assert sched.sigmas.shape == (101,) and sched.score_norms.shape == (101,)
    assert sched.score_norms[0] == 1
    frac = torch.rand(7, 3)
    t = torch.randint(1, 101, (7,))
    noise = torch.randn(7, 3)
    noisy, target = sched.perturb(frac, t, noise)
    assert ((noisy >= 0) & (noisy < 1)).all()
    sigma = sched.sigmas[t].unsqueeze(-1)
    assert torch.allclose(
        target, wrapped_normal_score(sigma * noise, sigma) / sched.score_norms[t].sqrt()[:, None]
    )


def test_embeddings_and_fourier_features() -> None:
    t = torch.tensor([0.0, 1.0, 500.0])
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (3, 8)
    freqs = torch.exp(-math.log(10000) / 3 * torch.arange(4.0))
    assert torch.allclose(emb[2, :4], torch.sin(500 * freqs))
    assert torch.allclose(emb[2, 4:], torch.cos(500 * freqs))
    with pytest.raises(ValueError):
        sinusoidal_embedding(t, 7)
    x = torch.rand(5, 3)
    feats = fourier_features(x, integer_frequencies(128))
    assert feats.shape == (5, 768)
    assert torch.allclose(feats, fourier_features(x + 1.0, integer_frequencies(128)), atol=1e-3)
    assert torch.allclose(feats[:, 3 * 128 + 128 + 2], torch.cos(2 * math.pi * 2 * x[:, 1]))
    assert fourier_features(x, dyadic_frequencies()).shape == (5, 36)
    d = wrapped_difference(torch.tensor([[0.9, 0.1, 0.5]]), torch.tensor([[0.1, 0.9, 0.5]]))
    assert torch.allclose(d, torch.tensor([[0.2, 0.8, 0.0]]), atol=1e-6)
