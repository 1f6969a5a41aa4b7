"""Periodic GemNet-T decoder: symmetric periodic edges, bases, scale factors, decoder selection by
config (old checkpoints build the DimeNet++-style decoder), gradients, a short training run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import eval_legendre

from generators.configs import load_config
from generators.crystal import frac_to_cart, structures_to_batch
from generators.graphs import radius_graph_pbc
from generators.models import vae
from generators.models.cdvae import CDVAE
from generators.models.decoders import PeriodicDirectionalDecoder, build_decoder
from generators.models.dpcdvae import DPCDVAE
from generators.models.gemnet_t import (
    GaussianRBF,
    GemNetTDecoder,
    spherical_harmonics_m0,
    symmetrize_edges,
)
from generators.registry import build_model
from generators.trainer import fit, load_checkpoint, structures_to_data_list


def test_symmetrized_graph_pairs_every_edge_with_its_reverse(make_crystals) -> None:  # type: ignore[no-untyped-def]
    batch = structures_to_batch(make_crystals(2, seed=11))
    cart = frac_to_cart(batch.frac_coords, batch.lattice, batch.num_atoms)
    capped = radius_graph_pbc(cart, batch.lattice, batch.num_atoms, 7.0, 5)  # asymmetric cap
    graph, swap = symmetrize_edges(capped, len(cart))
    e = capped.edge_index.shape[1]
    assert graph.edge_index.shape[1] > e  # reverses had to be added
    assert torch.equal(graph.edge_index[:, :e], capped.edge_index)  # originals kept first
    assert torch.equal(swap[swap], torch.arange(len(swap)))
    assert torch.equal(graph.edge_index[:, swap], graph.edge_index.flip(0))
    assert torch.allclose(graph.cell_offsets[swap], -graph.cell_offsets)
    assert torch.allclose(graph.edge_vectors[swap], -graph.edge_vectors, atol=1e-5)
    # the added edges are real periodic vectors x_j + n·L − x_i
    src, dst = graph.edge_index
    offsets = torch.einsum("ei,eij->ej", graph.cell_offsets, batch.lattice[batch.batch[dst]])
    assert torch.allclose(cart[src] + offsets - cart[dst], graph.edge_vectors, atol=1e-4)


def test_spherical_harmonics_and_radial_basis() -> None:
    cos = torch.linspace(-1, 1, 11, dtype=torch.float64)
    values = spherical_harmonics_m0(cos, 7)
    for degree in range(7):
        expected = math.sqrt((2 * degree + 1) / (4 * math.pi)) * eval_legendre(degree, cos.numpy())
        assert np.allclose(values[:, degree].numpy(), expected, atol=1e-10)
    rbf = GaussianRBF(16, cutoff=7.0)
    dist = torch.tensor([0.5, 3.0, 6.99, 7.0, 9.0])
    basis = rbf(dist)
    assert basis.shape == (5, 16)
    assert torch.all(basis[3:] == 0)  # nothing at or beyond the cutoff
    assert float(basis[2].abs().max()) < 1e-5  # and it goes there smoothly (~(1 - d/c)^3)
    assert int(basis[0].argmax()) == 1  # 0.5 / 7 is nearest the second centre (1/15)


def test_gemnet_gradients_reach_every_parameter(make_vae_config, make_crystals) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = CDVAE(make_vae_config("cdvae", decoder="gemnet_t")["model"])
    assert isinstance(model.decoder, GemNetTDecoder)
    batch = structures_to_batch(make_crystals(3, seed=6))
    model.fit_statistics(batch)
    model.training_loss(batch, epoch=0)["loss"].backward()
    for name, parameter in model.decoder.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    # coordinates and the cell get gradients through the geometry as well
    z = torch.randn(3, 64)
    frac = batch.frac_coords.clone().requires_grad_(True)
    lattice = batch.lattice.clone().requires_grad_(True)
    vector, _ = model.decoder(z, frac, batch.atom_types, lattice, batch.num_atoms, batch.batch)
    vector.pow(2).sum().backward()
    assert frac.grad is not None and frac.grad.abs().sum() > 0
    assert lattice.grad is not None and lattice.grad.abs().sum() > 0


def test_scale_factors_are_fitted_without_touching_the_random_state(
    make_vae_config, make_crystals
) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = DPCDVAE(make_vae_config("dpcdvae", decoder="gemnet_t")["model"])
    factors = model.decoder.scale_factors()
    assert len(factors) == 3 * 2 + 3  # 3 per interaction block, 1 per output block
    assert all(float(f.scale) == 1.0 for f in factors)
    batch = structures_to_batch(make_crystals(4, seed=8))
    state = torch.random.get_rng_state()
    model.fit_statistics(batch)
    assert torch.equal(torch.random.get_rng_state(), state)
    fitted = [float(f.scale) for f in factors]
    assert all(math.isfinite(v) and v > 0 for v in fitted)
    assert any(abs(v - 1.0) > 0.05 for v in fitted)
    assert "decoder.outputs.0.scale_rbf.scale" in model.state_dict()  # saved in checkpoints


def test_paper_configs_default_to_gemnet_t() -> None:
    for model_name in ("cdvae", "dpcdvae"):
        section = load_config(model_name, "paper", "carbon_24")["model"]["decoder"]
        assert section["type"] == "gemnet_t"
        decoder = build_decoder(section, latent_dim=256)
        assert isinstance(decoder, GemNetTDecoder)
        assert (len(decoder.interactions), decoder.num_spherical, decoder.cutoff) == (3, 7, 7.0)
        assert decoder.rbf.offsets.shape == (128,)
    cdvae = build_decoder(load_config("cdvae", "paper", "carbon_24")["model"]["decoder"], 256)
    assert cdvae.atom_latent_emb.in_features == 128 + 256  # CDVAE: one Linear back to 128


def gemnet_t_parameter_count(atom: int, edge: int, conditioning_in: int, wide: bool) -> int:
    """Parameters of GemNet-T as GemNet's layer inventory builds it, written out by hand.

    num_radial 128, num_spherical 7, emb_size_rbf/cbf 16, trip/bil_trip 64, 3 blocks, num_atom 3,
    one residual layer before and two after the skip, num_concat 1; bias-free Dense layers; the
    energy branch of the output blocks is not counted (the decoders discard the energy), the
    type head Linear(atom → 100) is. ``atom`` / ``edge`` are the atom and edge widths.
    """
    radial, sph, rbf, cbf, trip, bil, blocks, n_atom = 128, 7, 16, 16, 64, 64, 3, 3

    def residual(units: int) -> int:
        return 2 * units * units

    shared = 3 * radial * rbf + sph * radial * cbf  # mlp_rbf3, _h, _out; mlp_cbf3
    if wide:  # MLP (Linear, ReLU, Linear) at the full width
        conditioning = 2 * (conditioning_in * conditioning_in + conditioning_in)
    else:  # Linear(128 + latent + extra -> 128)
        conditioning = conditioning_in * atom + atom
    embedding = 101 * 128 + conditioning + (2 * atom + radial) * edge
    triplet = edge * edge + rbf * edge + edge * trip + cbf * trip * bil + 2 * bil * edge
    atom_update = rbf * edge + edge * atom + n_atom * residual(atom)
    interaction = (
        edge * edge + triplet + 3 * residual(edge) + atom_update + (2 * atom + edge) * edge
    ) + residual(edge)
    force_output = edge * edge + n_atom * residual(edge) + rbf * edge + edge
    type_head = atom * 100 + 100
    return shared + embedding + blocks * interaction + (blocks + 1) * force_output + type_head


def test_published_gemnet_widths_and_parameter_count(
    make_crystals, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """DP-CDVAE's denoiser as published: atoms 128 + 256 + 128 + 36 = 548 wide (models.md:
    hidden 128, latent 256, time embedding 128, Fourier features 2·3·6 = 36), edges 128 wide,
    an MLP conditioning, and the type head on the final 548-wide h. CDVAE's stays 128 wide."""
    width = 128 + 256 + 128 + 2 * 3 * len(range(3, 9))
    assert width == 548
    model = build_model("dpcdvae", load_config("dpcdvae", "paper", "perov_5")["model"])
    decoder = model.decoder
    assert isinstance(decoder, GemNetTDecoder)
    linears = [m for m in decoder.atom_latent_emb if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(548, 548), (548, 548)]
    assert isinstance(decoder.atom_latent_emb[1], torch.nn.ReLU)
    assert (decoder.fc_atom.in_features, decoder.fc_atom.out_features) == (548, 100)
    assert not decoder.type_head_sees_conditioning
    block = decoder.interactions[0]
    assert block.atom_update.layers[0].linear.weight.shape == (548, 128)  # edge -> atom
    assert block.concat.dense.linear.weight.shape == (128, 2 * 548 + 128)  # [h_j, h_i, m]
    assert decoder.edge_emb.dense.linear.weight.shape == (128, 2 * 548 + 128)  # [h_j, h_i, rbf]
    assert isinstance(model.time_embedding[2], torch.nn.ReLU)
    count = sum(p.numel() for p in decoder.parameters())
    assert count == gemnet_t_parameter_count(548, 128, 548, wide=True) == 8_174_204
    cdvae = build_model("cdvae", load_config("cdvae", "paper", "perov_5")["model"]).decoder
    assert sum(p.numel() for p in cdvae.parameters()) == gemnet_t_parameter_count(
        128, 128, 128 + 256, wide=False
    )
    # the wide denoiser runs: [N, 3] vectors and [N, 100] logits
    monkeypatch.setenv("DFTLOOP_CACHE_DIR", str(tmp_path))  # the encoder's CrystalNN graphs
    monkeypatch.setattr(vae, "_GRAPH_STORES", {})
    batch = structures_to_batch(make_crystals(2, seed=4))
    model.fit_statistics(batch)
    with torch.no_grad():
        eps, logits = model.denoise(
            torch.randn(2, 256),
            batch.frac_coords,
            batch.atom_types,
            batch.lattice,
            batch.num_atoms,
            batch.batch,
            torch.tensor([10, 500]),
        )
    assert eps.shape == (len(batch.atom_types), 3) and logits.shape == (len(eps), 100)
    assert torch.isfinite(eps).all() and torch.isfinite(logits).all()


def test_decoder_selection_and_bad_options(make_vae_config) -> None:  # type: ignore[no-untyped-def]
    legacy = {k: v for k, v in make_vae_config("cdvae", decoder="dimenet_pp")["model"].items()}
    legacy["decoder"] = {k: v for k, v in legacy["decoder"].items() if k != "type"}
    assert isinstance(CDVAE(legacy).decoder, PeriodicDirectionalDecoder)  # no key: old decoder
    # switching the type over a DimeNet++-style section ignores the other decoder's keys
    switched = build_decoder({**legacy["decoder"], "type": "gemnet_t"}, latent_dim=8)
    assert isinstance(switched, GemNetTDecoder)
    with pytest.raises(ValueError, match="unknown decoder type 'gemnet'"):
        build_decoder({"type": "gemnet"}, latent_dim=8)
    with pytest.raises(ValueError, match="emb_size_quad"):
        build_decoder({"type": "gemnet_t", "emb_size_quad": 8}, latent_dim=8)


def test_checkpoint_without_decoder_type_loads_the_old_decoder(
    tmp_path: Path, perov_val_records, make_vae_config
) -> None:  # type: ignore[no-untyped-def]
    """A run started before ``decoder.type`` existed (config.json without it) loads unchanged."""
    data, errors = structures_to_data_list(perov_val_records[:4])
    assert not errors
    config = make_vae_config("dpcdvae", decoder="dimenet_pp")
    del config["model"]["decoder"]["type"]
    config["train"].update(batch_size=4, max_epochs=1, checkpoint_every=1, max_minutes=None)
    result = fit(
        build_model("dpcdvae", config["model"]),
        config,
        data,
        [],
        tmp_path,
        dataset="perov_5",
        progress=False,
    )
    model, meta = load_checkpoint(result.last_checkpoint)
    assert "type" not in meta["config"]["model"]["decoder"]
    assert isinstance(model.decoder, PeriodicDirectionalDecoder)
    for key, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("model_name", ["cdvae", "dpcdvae"])
def test_gemnet_t_training_smoke_run(
    model_name: str, tmp_path: Path, perov_val_records, make_vae_config
) -> None:  # type: ignore[no-untyped-def]
    """Two epochs through the trainer; the checkpoint restores GemNet-T and its scale factors."""
    data, errors = structures_to_data_list(perov_val_records[:8])
    assert not errors
    config = make_vae_config(model_name, decoder="gemnet_t")
    config["train"].update(batch_size=4, max_epochs=2, checkpoint_every=1, max_minutes=None)
    torch.manual_seed(0)
    result = fit(
        build_model(model_name, config["model"]),
        config,
        data,
        data[:4],
        tmp_path,
        dataset="perov_5",
        progress=False,
    )
    assert result.epochs == 2
    model, _ = load_checkpoint(result.last_checkpoint)
    assert isinstance(model.decoder, GemNetTDecoder)
    restored = [float(f.scale) for f in model.decoder.scale_factors()]
    assert restored == [float(f.scale) for f in result.model.decoder.scale_factors()]
    assert any(abs(v - 1.0) > 1e-3 for v in restored)
    model.configure_sampling(steps=50 if model_name == "cdvae" else 5)
    out = model.sample_generate(2, torch.Generator().manual_seed(0))
    assert out.num_atoms.shape == (2,) and torch.isfinite(out.frac_coords).all()
