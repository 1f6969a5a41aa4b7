"""The samplers of DiffCSP, CDVAE and DP-CDVAE with an oracle in place of the network.

An oracle returns what a perfect network would return for a known target (a point mass at
the target crystals): the exact ε of the DDPM parts, the exact score of the wrapped normal or
of the Gaussian around the true positions. The real sampler code then has to return the target
crystal. The oracles are written from the papers' formulas with the independent numpy
schedules of :mod:`numpy_reference`, and feed the sampler in each model's own convention:

* DiffCSP's CSPNet predicts the lattice ε and the coordinate score divided by sqrt(λ_t⁻¹)
  (the model's Monte-Carlo normaliser, the one constant read from the model);
* CDVAE's decoder predicts σ·score in Cartesian space, score = (x₀ − x)/σ² by minimum image;
* DP-CDVAE's ``denoise`` predicts the re-centred fractional ε.

Each test is parametrised with negative controls: the same oracle with its sign flipped or
scaled by 2 or 1/2 (what a sign or scale error in a sampler does to a correct network). The
controls must miss the tolerance that the exact oracle meets, which shows that the tolerance
catches such errors.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.data import Batch

from generators.crystal import structures_to_batch
from generators.models.cdvae import CDVAE
from generators.models.diffcsp import DiffCSP
from generators.models.dpcdvae import DPCDVAE

from .conftest import TINY_MODEL, random_crystals, vae_config
from .numpy_reference import (
    cosine_alpha_bar,
    diffcsp_sigmas,
    dpcdvae_alpha_bar,
    geometric_ladder,
    min_image,
    recentre,
    translation_free_error,
    wrapped_normal_score,
)

ORACLES = [
    pytest.param(1.0, True, id="exact"),
    pytest.param(-1.0, False, id="sign-flipped"),
    pytest.param(2.0, False, id="twice"),
    pytest.param(0.5, False, id="half"),
]
"""(factor on the oracle's output, whether the sampler must then return the target)."""


def _target(n: int = 6, seed: int = 3) -> Batch:
    """Random tie-free crystals of 2–6 atoms in skewed cells (one batch)."""
    return structures_to_batch(random_crystals(n, seed=seed), [f"c{i}" for i in range(n)])


def _array(x: Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


# ----------------------------------------------------------------------------- DiffCSP


class _StepAsEmbedding(nn.Module):
    """Stands in for the sinusoidal time embedding: hands the integer step t on, [B, 1]."""

    def forward(self, t: Tensor) -> Tensor:
        return t.float().unsqueeze(-1)


class DiffCSPOracle(nn.Module):
    """CSPNet's place: exact lattice ε, wrapped-normal score / sqrt(λ_t⁻¹), type ε.

    For a point mass at (L₀, F₀, A₀): ε_L = (L_t − sqrt(ᾱ_t)·L₀)/sqrt(1 − ᾱ_t) with the cosine
    ᾱ; the coordinate score ∇_F log N_w(F − F₀; σ_t) by the explicit image sum, divided by
    sqrt(λ_t⁻¹); the type ε of the one-hot A₀ as the lattice's. All times ``factor``.
    """

    def __init__(self, target: Batch, score_norms: Tensor, factor: float) -> None:
        super().__init__()
        self.frac = _array(target.frac_coords)
        self.lattice = _array(target.lattice)
        self.onehot = _array(F.one_hot(target.atom_types - 1, 100).float())
        self.alpha_bar = cosine_alpha_bar(1000)
        self.sigmas = diffcsp_sigmas(1000)
        self.norms = _array(score_norms)
        self.factor = factor

    def forward(
        self,
        time_emb: Tensor,
        atom_input: Tensor,
        frac: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        atom_crystal: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        steps = time_emb[:, 0].long().unique()
        assert len(steps) == 1, "one time step per sampler call"
        t = int(steps[0])
        keep = math.sqrt(self.alpha_bar[t])
        spread = math.sqrt(1.0 - self.alpha_bar[t])
        eps_lattice = (_array(lattice) - keep * self.lattice) / spread
        score = wrapped_normal_score(_array(frac) - self.frac, self.sigmas[t])
        outputs = [eps_lattice, score / math.sqrt(self.norms[t])]
        if atom_input.dim() == 2:  # generation: noisy one-hot types
            outputs.append((_array(atom_input) - keep * self.onehot) / spread)
        scaled = [torch.tensor(self.factor * x, dtype=torch.float32) for x in outputs]
        return scaled[0], scaled[1], scaled[2] if len(scaled) == 3 else None


DIFFCSP_FRAC_TOL = 1e-4
"""Fractional. Measured in the tests below: exact oracle 0 to 1e-10; controls ×2 2.5e-3 to
4.4e-3, ×1/2 6.4e-3 to 8.6e-3, sign flipped 0.2 to 0.4."""
DIFFCSP_LATTICE_TOL = 1e-4
"""Å. Measured: exact oracle 2e-6 (float32); controls ×2 0.017 to 0.08, ×1/2 0.97 to 59,
sign flipped 1e10 to 1e14."""


def _diffcsp_errors(out: Batch, target: Batch) -> tuple[float, float]:
    diff = _array(out.frac_coords) - _array(target.frac_coords)
    frac_error = float(np.abs(diff - np.round(diff)).max())
    lattice_error = float(np.abs(_array(out.lattice) - _array(target.lattice)).max())
    return frac_error, lattice_error


@pytest.mark.parametrize("steps", [1000, 50])
@pytest.mark.parametrize(("factor", "exact"), ORACLES)
def test_diffcsp_predictor_corrector_returns_the_oracle_crystal(
    factor: float, exact: bool, steps: int
) -> None:
    """CSP with the exact score returns the target lattice and coordinates (full and strided
    chains); the sign-flipped or rescaled oracle misses both tolerances."""
    torch.manual_seed(0)
    model = DiffCSP(TINY_MODEL).eval()
    target = _target()
    model.time_embedding = _StepAsEmbedding()
    model.denoiser = DiffCSPOracle(target, model.coord_schedule.score_norms, factor)
    model.configure_sampling(steps=steps)
    out = model.sample_csp(target, torch.Generator().manual_seed(0))
    assert torch.equal(out.atom_types, target.atom_types)
    frac_error, lattice_error = _diffcsp_errors(out, target)
    if exact:
        assert frac_error < DIFFCSP_FRAC_TOL and lattice_error < DIFFCSP_LATTICE_TOL
    else:
        assert frac_error > DIFFCSP_FRAC_TOL and lattice_error > DIFFCSP_LATTICE_TOL


@pytest.mark.parametrize(("factor", "exact"), ORACLES)
def test_diffcsp_generation_returns_the_oracle_crystal(factor: float, exact: bool) -> None:
    """DiffCSP-C: with the exact lattice, coordinate and type oracles the generated crystals
    are the target (types by the argmax of the denoised one-hot vectors)."""
    torch.manual_seed(0)
    model = DiffCSP({**TINY_MODEL, "mode": "generate"}).eval()
    crystal = random_crystals(1, seed=8)[0]
    target = structures_to_batch([crystal] * 4)
    model.fit_statistics(target)  # every crystal has len(crystal) atoms
    model.time_embedding = _StepAsEmbedding()
    model.denoiser = DiffCSPOracle(target, model.coord_schedule.score_norms, factor)
    model.configure_sampling(steps=200)
    out = model.sample_generate(4, torch.Generator().manual_seed(1))
    assert torch.equal(out.num_atoms, target.num_atoms)
    frac_error, lattice_error = _diffcsp_errors(out, target)
    types_right = torch.equal(out.atom_types, target.atom_types)
    if exact:
        assert types_right
        assert frac_error < DIFFCSP_FRAC_TOL and lattice_error < DIFFCSP_LATTICE_TOL
    else:
        assert frac_error > DIFFCSP_FRAC_TOL and lattice_error > DIFFCSP_LATTICE_TOL


# ----------------------------------------------------------------------------- CDVAE

CDVAE_SIGMAS = geometric_ladder(10.0, 0.01, 50)
"""CDVAE's Cartesian noise levels (Å), in the order the annealed Langevin visits them."""
CDVAE_STEP_LR = 1e-4


class LangevinOracle(nn.Module):
    """CDVAE decoder's place: pred = σ·score with score = d/σ², d the minimum-image Cartesian
    vector from the current to the true position, and the true types' logits.

    The decoder is not told σ; the oracle counts its calls (``steps_per_level`` per level, from
    σ = 10 Å down to 0.01 Å), so a sampler that visited the levels in another order or
    called the decoder more or less often would get the wrong σ.
    """

    def __init__(self, target: Batch, steps_per_level: int, factor: float) -> None:
        super().__init__()
        self.frac = _array(target.frac_coords)
        self.cells = _array(target.lattice)[target.batch.numpy()]
        self.logits = 10.0 * F.one_hot(target.atom_types - 1, 100).float()
        self.steps_per_level = steps_per_level
        self.factor = factor
        self.calls = 0

    def forward(
        self,
        z: Tensor,
        frac: Tensor,
        atom_types: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        batch: Tensor,
    ) -> tuple[Tensor, Tensor]:
        sigma = CDVAE_SIGMAS[self.calls // self.steps_per_level]
        self.calls += 1
        towards_truth = min_image(self.frac, _array(frac), self.cells)
        pred = self.factor * sigma * towards_truth / sigma**2
        return torch.tensor(pred, dtype=torch.float32), self.logits


@pytest.mark.parametrize(("factor", "exact"), ORACLES)
def test_cdvae_annealed_langevin_returns_the_oracle_crystal(factor: float, exact: bool) -> None:
    """With the exact score, every Langevin step of size step_lr·(σ/σ_L)² = σ²·(step_lr/σ_L²)
    = σ² moves an atom to x₀ + sqrt(2·step)·ξ; after the last level (σ_L = 0.01 Å) each
    Cartesian coordinate is off the truth by N(0, 2·step_lr): standard deviation
    sqrt(2e-4) = 0.01414 Å. Measured ratio to that with 20 steps per level: 1.001 (exact),
    1.153 (half: the chain then contracts by 1/2 per step, std × 1/sqrt(0.75)), ~95 (sign
    flipped or doubled: the atoms are lost). 391 atoms (1173 coordinates) give the ratio to
    ~2 %; the band is ±7 %.
    """
    torch.manual_seed(0)
    model = CDVAE(vae_config("cdvae")["model"]).eval()
    assert model.config["sampling"]["step_lr"] == CDVAE_STEP_LR
    np.testing.assert_allclose(_array(model.sigmas), CDVAE_SIGMAS, rtol=1e-6)
    target = _target(100, seed=3)
    steps_per_level = 20
    model.configure_sampling(steps_per_level=steps_per_level)
    model.decoder = LangevinOracle(target, steps_per_level, factor)
    z = torch.zeros(target.num_graphs, model.latent_dim)
    carbon = torch.full_like(target.atom_types, 6)
    frac, types = model.sample_structure(
        z, target.num_atoms, target.lattice, carbon, torch.Generator().manual_seed(0)
    )
    assert model.decoder.calls == 50 * steps_per_level
    assert torch.equal(types, target.atom_types)
    cells = _array(target.lattice)[target.batch.numpy()]
    error = min_image(_array(frac), _array(target.frac_coords), cells)
    ratio = error.std() / math.sqrt(2 * CDVAE_STEP_LR)
    converged = abs(ratio - 1.0) < 0.07 and abs(error.mean()) < 0.002
    assert converged == exact, f"std ratio {ratio:.3f}, mean {error.mean():.2e} Å"


def test_step_size_schedule_follows_the_paper() -> None:
    """Each Langevin step has the size step_lr·(σ_l/σ_L)² of CDVAE's sampler (σ geometric from
    10 to 0.01 Å over 50 levels, step_lr 1e-4): with a decoder that predicts nothing, a step is
    the pure Gaussian move sqrt(2·step)·ξ, and ξ is replayed from a copy of the generator. The
    cell is a 200 Å cube, so that the largest moves (14 Å·ξ at σ = 10 Å) stay minimum images.
    """
    model = CDVAE(vae_config("cdvae")["model"]).eval()
    model.configure_sampling(steps_per_level=2)
    seen: list[np.ndarray] = []

    class StandStill(nn.Module):
        def forward(self, z, frac, atom_types, lattice, num_atoms, batch):  # type: ignore[no-untyped-def]
            seen.append(_array(frac))
            return torch.zeros_like(frac), F.one_hot(atom_types - 1, 100).float()

    model.decoder = StandStill()
    n = 40
    lattice = 200.0 * torch.eye(3).unsqueeze(0)
    num_atoms = torch.tensor([n])
    types = torch.full((n,), 14)
    z = torch.zeros(1, model.latent_dim)
    frac, _ = model.sample_structure(z, num_atoms, lattice, types, torch.Generator().manual_seed(5))
    positions = [*seen, _array(frac)]
    replay = torch.Generator().manual_seed(5)
    torch.rand(n, 3, generator=replay)  # the initial coordinates
    cells = np.repeat(200.0 * np.eye(3)[None], n, axis=0)
    measured = []
    for before, after in itertools.pairwise(positions):
        xi = _array(torch.randn(n, 3, generator=replay))
        move = min_image(after, before, cells)
        amplitude = float((move * xi).sum() / (xi * xi).sum())  # sqrt(2·step)
        measured.append(amplitude**2 / 2)
    expected = CDVAE_STEP_LR * (np.repeat(CDVAE_SIGMAS, 2) / CDVAE_SIGMAS[-1]) ** 2
    assert len(measured) == 100
    np.testing.assert_allclose(measured, expected, rtol=2e-3)
    assert expected[0] == pytest.approx(100.0) and expected[-1] == pytest.approx(1e-4)


# ----------------------------------------------------------------------------- DP-CDVAE


class DDPMOracle:
    """DP-CDVAE ``denoise``'s place: the exact re-centred fractional ε for the target crystals.

    The sampler's x_t is the re-centred bounded state it passes in. Its clean point x₀ is the
    target's zero-mean copy nearest to x_t/sqrt(ᾱ_t): r₀ + k − mean(k), with the per-atom
    integer images k chosen around each crystal's common fractional shift (circular mean),
    so that every atom of a crystal takes the same translation. Then
    ε = (x_t − sqrt(ᾱ_t)·x₀)/sqrt(1 − ᾱ_t), with DP-CDVAE's ᾱ computed in float64 here.
    """

    def __init__(self, target: Batch, factor: float) -> None:
        self.crystal = target.batch.numpy()
        self.count = target.num_graphs
        self.r0 = recentre(_array(target.frac_coords), self.crystal, self.count)
        self.logits = F.one_hot(target.atom_types - 1, 100).float()
        self.alpha_bar = dpcdvae_alpha_bar(1000)
        self.factor = factor

    def __call__(
        self,
        z: Tensor,
        frac: Tensor,
        atom_types: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        batch: Tensor,
        t: Tensor,
    ) -> tuple[Tensor, Tensor]:
        steps = t.unique()
        assert len(steps) == 1
        alpha_bar = self.alpha_bar[int(steps[0])]
        x_t = recentre(_array(frac), self.crystal, self.count)
        offset = x_t / math.sqrt(alpha_bar) - self.r0
        phases = np.zeros((self.count, 3), dtype=complex)
        np.add.at(phases, self.crystal, np.exp(2j * np.pi * offset))
        shift = np.angle(phases) / (2 * np.pi)
        images = np.round(offset - shift[self.crystal])
        x0 = recentre(self.r0 + images, self.crystal, self.count)
        eps = (x_t - math.sqrt(alpha_bar) * x0) / math.sqrt(1.0 - alpha_bar)
        return torch.tensor(self.factor * eps, dtype=torch.float32), self.logits


DPCDVAE_TOL = 3e-4
"""Fractional, after removing each crystal's translation (the chain is re-centred). Measured:
exact 4e-5 (modified) / 8e-5 (ddpm), left by the model's float32 ᾱ against the float64 ᾱ of
the oracle; the controls 1e-3–0.5 (the closest: ×2 with the ddpm predictor, 1.7e-3)."""


@pytest.mark.parametrize("predictor", ["modified", "ddpm"])
@pytest.mark.parametrize(("factor", "exact"), ORACLES)
def test_dpcdvae_reverse_chain_returns_the_oracle_crystal(
    factor: float, exact: bool, predictor: str
) -> None:
    """The 999-step reverse chain with the exact ε returns the target crystals (up to the
    translation that the re-centring leaves free) and their types, for both predictors."""
    torch.manual_seed(0)
    model = DPCDVAE(vae_config("dpcdvae", sampling={"predictor": predictor})["model"]).eval()
    target = _target(20, seed=3)
    model.denoise = DDPMOracle(target, factor)  # type: ignore[method-assign]
    z = torch.zeros(target.num_graphs, model.latent_dim)
    carbon = torch.full_like(target.atom_types, 6)
    frac, types = model.sample_structure(
        z, target.num_atoms, target.lattice, carbon, torch.Generator().manual_seed(0)
    )
    assert torch.equal(types, target.atom_types)
    error = translation_free_error(
        _array(frac), _array(target.frac_coords), target.batch.numpy(), target.num_graphs
    )
    worst = float(np.abs(error).max())
    assert (worst < DPCDVAE_TOL) == exact, f"largest error {worst:.2e}"
