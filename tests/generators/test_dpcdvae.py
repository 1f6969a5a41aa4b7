"""DP-CDVAE: schedule, denoiser symmetries (fractional ε), loss weights, reverse chain."""

from __future__ import annotations

import pytest
import torch

from generators.configs import load_config
from generators.crystal import random_rotation, structures_to_batch
from generators.models.dpcdvae import DPCDVAE
from generators.models.vae import recenter


@pytest.fixture(scope="module")
def model(make_vae_config, decoder_type: str) -> DPCDVAE:  # type: ignore[no-untyped-def]
    """DP-CDVAE with each decoder type (the denoiser tests run for both)."""
    torch.manual_seed(0)
    return DPCDVAE(make_vae_config("dpcdvae", decoder=decoder_type)["model"]).eval()


@pytest.fixture(scope="module")
def batch(make_crystals):  # type: ignore[no-untyped-def]
    return structures_to_batch(make_crystals(3, seed=4), ["a", "b", "c"])


def _denoise(model: DPCDVAE, batch, t: int = 500):  # type: ignore[no-untyped-def]
    z = torch.randn(3, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model.denoise(
            z,
            batch.frac_coords,
            batch.atom_types,
            batch.lattice,
            batch.num_atoms,
            batch.batch,
            torch.full((3,), t),
        )


def test_paper_schedule(model: DPCDVAE) -> None:
    paper = load_config("dpcdvae", "paper", "carbon_24")["model"]
    assert paper["num_timesteps"] == 1000
    assert (paper["cost_lattice"], paper["cost_type"], paper["mul_cost_coord_epoch"]) == (
        100.0,
        0.1,
        1000,
    )
    assert paper["teacher_forcing_max_epoch"] == 400
    schedule = model.schedule
    assert schedule.num_steps == 1000
    betas = schedule.betas[1:].double()
    expected = torch.sigmoid(torch.linspace(-10, 6, 1000, dtype=torch.float64)) * (0.01 - 1e-10)
    assert torch.allclose(betas, (expected + 1e-10), rtol=1e-5)
    # the paper's alpha-bar: a plain cumulative product from t = 1 (no index-0 quirk)
    alpha_bar = torch.cumprod(1 - expected - 1e-10, 0)
    assert torch.allclose(schedule.alphas_cumprod[1:].double(), alpha_bar, rtol=1e-4)
    assert float(model.type_sigmas[0]) == pytest.approx(0.01)
    assert float(model.type_sigmas[-1]) == pytest.approx(5.0)
    assert model.fourier_frequencies.shape == (6,)  # 2π·2^k, k = 3..8 -> 36 features


def test_denoiser_permutation_equivariant(model: DPCDVAE, batch) -> None:  # type: ignore[no-untyped-def]
    n0 = int(batch.num_atoms[0])
    perm = torch.randperm(n0, generator=torch.Generator().manual_seed(0))
    permuted = batch.clone()
    permuted.frac_coords[:n0] = batch.frac_coords[:n0][perm]
    permuted.atom_types[:n0] = batch.atom_types[:n0][perm]
    eps, logits = _denoise(model, batch)
    peps, plogits = _denoise(model, permuted)
    assert torch.allclose(peps[:n0], eps[:n0][perm], atol=1e-4)
    assert torch.allclose(plogits[:n0], logits[:n0][perm], atol=1e-4)


def test_fractional_eps_invariant_to_cell_rotation(model: DPCDVAE, batch) -> None:  # type: ignore[no-untyped-def]
    rotated = batch.clone()
    rotated.lattice = batch.lattice @ random_rotation(torch.Generator().manual_seed(7)).T
    eps, logits = _denoise(model, batch)
    reps, rlogits = _denoise(model, rotated)
    assert eps.abs().max() > 1e-4
    assert torch.allclose(eps, reps, atol=1e-4)
    assert torch.allclose(logits, rlogits, atol=1e-4)


def test_eps_prediction_is_recentred_and_time_dependent(model: DPCDVAE, batch) -> None:  # type: ignore[no-untyped-def]
    eps, _ = _denoise(model, batch, t=10)
    means = torch.zeros(3, 3).index_add_(0, batch.batch, eps)
    assert torch.allclose(means, torch.zeros(3, 3), atol=1e-5)
    eps_late, _ = _denoise(model, batch, t=900)
    assert (eps - eps_late).abs().max() > 1e-5


def test_loss_weights_and_coordinate_multiplier(batch, make_vae_config) -> None:  # type: ignore[no-untyped-def]
    fresh = DPCDVAE(make_vae_config("dpcdvae", mul_cost_coord_epoch=3)["model"])
    fresh.fit_statistics(batch)
    assert fresh.coordinate_weight(2) == 1.0 and fresh.coordinate_weight(3) == 10.0
    terms = fresh.training_loss(batch, epoch=0)
    expected = (
        terms["natom"]
        + 100 * terms["lattice"]
        + terms["composition"]
        + 0.01 * terms["kl"]
        + terms["coord"]
        + 0.1 * terms["type"]
    )
    assert torch.allclose(terms["loss"], expected)
    terms["loss"].backward()
    grads = [p.grad for n, p in fresh.named_parameters() if n.startswith("time_embedding")]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    val = fresh.validation_loss(batch, epoch=0)
    assert torch.allclose(val["loss"], val["coord"] + 0.1 * val["type"])


def test_reverse_chain_length_and_strided_option(model: DPCDVAE, make_crystals) -> None:  # type: ignore[no-untyped-def]
    model.configure_sampling()
    steps = model.reverse_steps()
    assert len(steps) == 999 and steps[0] == 999 and steps[-1] == 1
    model.configure_sampling(steps=20)
    strided = model.reverse_steps()
    assert len(strided) == 20 and strided[0] == 999 and strided[-1] == 1
    model.fit_statistics(structures_to_batch(make_crystals(4, seed=9)))
    calls = []
    hook = model.decoder.register_forward_hook(lambda *_: calls.append(1))
    out = model.sample_generate(2, torch.Generator().manual_seed(0))
    hook.remove()
    model.configure_sampling()
    assert len(calls) == 20
    assert ((out.frac_coords >= 0) & (out.frac_coords < 1)).all()
    assert out.atom_types.min() >= 1


def test_recenter_removes_each_crystals_mean() -> None:
    frac = torch.rand(7, 3)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    centred = recenter(frac, batch, 2)
    assert torch.allclose(centred[:3].mean(0), torch.zeros(3), atol=1e-6)
    assert torch.allclose(centred[3:].mean(0), torch.zeros(3), atol=1e-6)
    assert torch.allclose(centred[:3] - centred[0], frac[:3] - frac[0], atol=1e-6)
