"""Shared VAE of CDVAE/DP-CDVAE: periodic triplets, cached basis, DimeNet++ encoder invariances,
lattice scaler, composition sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.nn.models.dimenet import SphericalBasisLayer

from generators.crystal import (
    batch_to_structures,
    lattice_to_params,
    random_rotation,
    structures_to_batch,
)
from generators.graphs import radius_graph_pbc
from generators.models.cdvae import CDVAE
from generators.models.dimenet_pbc import (
    PeriodicSphericalBasis,
    periodic_triplets,
    spherical_basis_functions,
)
from generators.models.vae import CrystalVAE, sample_composition


@pytest.fixture(scope="module")
def small_cdvae(make_vae_config):  # type: ignore[no-untyped-def]
    """Factory of small CDVAEs whose encoder output layers are randomised."""

    def build(**model) -> CDVAE:  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        cdvae = CDVAE(make_vae_config("cdvae", **model)["model"]).eval()
        # DimeNet++ zero-initialises its output layers (all crystals start with the same z);
        # randomise them so that the invariance tests compare non-trivial functions.
        with torch.no_grad():
            for block in cdvae.encoder.output_blocks:
                block.lin.weight.normal_(0.0, 0.1)
        return cdvae

    return build


def test_periodic_triplets_match_brute_force(make_crystals) -> None:  # type: ignore[no-untyped-def]
    structure = make_crystals(1, seed=3)[0]
    batch = structures_to_batch([structure])
    cart = batch.frac_coords @ batch.lattice[0]
    graph = radius_graph_pbc(cart, batch.lattice, batch.num_atoms, 3.5, None)
    tri = periodic_triplets(graph.edge_index, graph.cell_offsets, len(cart))
    got = set(zip(tri.idx_kj.tolist(), tri.idx_ji.tolist(), strict=True))
    src, dst = graph.edge_index.tolist()
    offsets = graph.cell_offsets.round().long().tolist()
    expected = set()
    for ji, kj in itertools.product(range(len(src)), repeat=2):
        if dst[kj] != src[ji]:
            continue
        same_point = src[kj] == dst[ji] and all(
            a + b == 0 for a, b in zip(offsets[kj], offsets[ji], strict=True)
        )
        if not same_point:
            expected.add((kj, ji))
    assert got == expected
    assert len(got) > 0
    # an atom's own periodic image is kept as a k (it is another point of the crystal)
    assert any(src[kj] == dst[ji] for kj, ji in got)


def test_spherical_basis_cached_and_equal_to_pyg() -> None:
    first = spherical_basis_functions(2, 3)
    assert spherical_basis_functions(2, 3) is first  # built once per process
    ours = PeriodicSphericalBasis(2, 3, cutoff=5.0)
    reference = SphericalBasisLayer(2, 3, cutoff=5.0)
    dist = torch.tensor([1.0, 2.5, 4.0])
    angle = torch.tensor([0.3, 1.2, 2.9, 0.7])
    idx_kj = torch.tensor([0, 1, 2, 1])
    assert torch.allclose(ours(dist, angle, idx_kj), reference(dist, angle, idx_kj), atol=1e-6)


@pytest.fixture(scope="module")
def model(small_cdvae) -> CDVAE:  # type: ignore[no-untyped-def]
    return small_cdvae()


@pytest.fixture(scope="module")
def batch(make_crystals):  # type: ignore[no-untyped-def]
    return structures_to_batch(make_crystals(3, seed=1), ["a", "b", "c"])


def _encode(model: CDVAE, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model.encode(batch)[0]


def test_encoder_gives_distinct_latents(model: CDVAE, batch) -> None:  # type: ignore[no-untyped-def]
    mu = _encode(model, batch)
    assert mu.shape == (3, 64)
    assert (mu[0] - mu[1]).abs().max() > 1e-4


def test_encoder_permutation_invariant(model: CDVAE, batch) -> None:  # type: ignore[no-untyped-def]
    permuted = batch.clone()
    perm = torch.randperm(int(batch.num_atoms[0]), generator=torch.Generator().manual_seed(0))
    n0 = int(batch.num_atoms[0])
    permuted.frac_coords[:n0] = batch.frac_coords[:n0][perm]
    permuted.atom_types[:n0] = batch.atom_types[:n0][perm]
    assert torch.allclose(_encode(model, batch), _encode(model, permuted), atol=1e-4)


def test_encoder_translation_invariant(model: CDVAE, batch) -> None:  # type: ignore[no-untyped-def]
    shifted = batch.clone()
    shifted.frac_coords = torch.remainder(batch.frac_coords + torch.tensor([0.31, 0.77, 0.05]), 1)
    assert torch.allclose(_encode(model, batch), _encode(model, shifted), atol=1e-4)


def test_encoder_rotation_invariant(model: CDVAE, batch) -> None:  # type: ignore[no-untyped-def]
    rotated = batch.clone()
    rotation = random_rotation(torch.Generator().manual_seed(5))
    rotated.lattice = batch.lattice @ rotation.T  # rows are vectors: each rotated
    assert torch.allclose(_encode(model, batch), _encode(model, rotated), atol=1e-4)


def test_lattice_scaler_fitted_and_invertible(model: CDVAE, batch, small_cdvae) -> None:  # type: ignore[no-untyped-def]
    fresh = small_cdvae()
    assert not bool(fresh.statistics_fitted)
    fresh.fit_statistics(batch)
    assert bool(fresh.statistics_fitted)
    scaled = fresh.scale_lattice(batch.lattice, batch.num_atoms)
    assert torch.allclose(scaled.mean(0), torch.zeros(6), atol=1e-4)
    back = fresh.unscale_lattice(scaled, batch.num_atoms)
    for a, b in zip(lattice_to_params(back), lattice_to_params(batch.lattice), strict=True):
        assert torch.allclose(a, b, atol=1e-3)
    state = fresh.state_dict()
    assert "lattice_mean" in state and "lattice_std" in state  # carried by checkpoints


def test_fit_statistics_names_oversized_crystal(small_cdvae) -> None:  # type: ignore[no-untyped-def]
    big = Structure(Lattice.cubic(8.0), ["C"] * 25, np.random.default_rng(0).random((25, 3)))
    batch = structures_to_batch([big], ["too-big-1"])
    with pytest.raises(ValueError, match="too-big-1"):
        small_cdvae().fit_statistics(batch)


def test_kl_is_zero_for_the_prior() -> None:
    mu, log_var = torch.zeros(4, 8), torch.zeros(4, 8)
    assert float(CDVAE.kl_divergence(mu, log_var)) == pytest.approx(0.0)
    assert float(CDVAE.kl_divergence(mu + 1.0, log_var)) == pytest.approx(4.0)


def test_sample_composition_rounds_then_fills() -> None:
    probs = torch.zeros(3, 100)
    probs[0, 7] = 0.6  # O
    probs[0, 21] = 0.2  # Ti
    probs[0, 37] = 0.2  # Sr
    probs[1, 5] = 1.0  # C
    probs[2, [0, 1, 2]] = 1.0 / 3.0
    types = sample_composition(probs, torch.tensor([5, 7, 2]), torch.Generator().manual_seed(0))
    assert types.shape == (14,)
    assert sorted(types[:5].tolist()) == [8, 8, 8, 22, 38]
    assert types[5:12].tolist() == [6] * 7
    assert set(types[12:].tolist()) <= {1, 2, 3}


def test_degenerate_predicted_cells_do_not_explode_the_graph(small_cdvae) -> None:  # type: ignore[no-untyped-def]
    model = small_cdvae()
    with torch.no_grad():
        model.lattice_mean.copy_(torch.tensor([0.01, 0.01, 0.01, 90.0, 90.0, 90.0]))
        model.lattice_std.fill_(1.0)
        model.fc_lattice[-1].weight.zero_()
        model.fc_lattice[-1].bias.zero_()
    model.configure_sampling(steps_per_level=1)
    out = model.sample_generate(2, torch.Generator().manual_seed(0))
    structures, errors = batch_to_structures(out)
    assert structures == [None, None]
    assert all("volume" in e for e in errors)  # the predicted (degenerate) cell is reported


def test_type_noise_names_crystals_with_non_finite_composition() -> None:
    types = torch.tensor([8, 8, 26, 6])
    batch_index = torch.tensor([0, 0, 1, 1])
    logits = torch.zeros(2, 100)
    drawn = CrystalVAE.noisy_atom_types(types, logits, batch_index, torch.full((4,), 0.01))
    assert drawn.shape == (4,)
    logits[1, 5] = float("nan")
    with pytest.raises(FloatingPointError, match=r"crystals \[1\]"):
        CrystalVAE.noisy_atom_types(types, logits, batch_index, torch.full((4,), 0.01))
