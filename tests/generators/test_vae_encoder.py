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


# ----------------------------------------------------------------------------- CrystalNN graph
def _pymatgen_crystalnn_edges(structure: Structure) -> set[tuple[int, int, tuple[int, ...]]]:
    """Directed edges (j, i, image of j) straight from pymatgen's CrystalNN, with CDVAE's
    settings, closed under reversal (a bond found from either end is a bond both ways)."""
    from pymatgen.analysis.local_env import CrystalNN

    strategy = CrystalNN(distance_cutoffs=None, x_diff_weight=-1, porous_adjustment=False)
    edges: set[tuple[int, int, tuple[int, ...]]] = set()
    for i, neighbours in enumerate(strategy.get_all_nn_info(structure)):
        for info in neighbours:
            image = tuple(round(float(x)) for x in info["image"])
            edges.add((info["site_index"], i, image))
            edges.add((i, info["site_index"], tuple(-x for x in image)))
    return edges


@pytest.fixture
def graph_cache(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A fresh data cache directory for the CrystalNN graph store."""
    from generators.models import vae

    monkeypatch.setenv("DFTLOOP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(vae, "_GRAPH_STORES", {})
    return tmp_path


def test_crystalnn_edges_equal_pymatgens(perov_val_records, make_crystals) -> None:  # type: ignore[no-untyped-def]
    from generators.data.preprocessing import crystalnn_graph

    structures = [r.structure for r in perov_val_records[:4]] + make_crystals(2, seed=21)
    for structure in structures:
        graph = crystalnn_graph(structure)
        ours = list(zip(graph.sources, graph.targets, map(tuple, graph.offsets), strict=True))
        assert len(ours) == len(set(ours))  # no edge twice
        assert set(ours) == _pymatgen_crystalnn_edges(structure)
        assert len(ours) >= len(structure)  # every site bonded


def test_encoder_runs_on_the_crystalnn_graph(
    perov_val_records, make_vae_config, graph_cache
) -> None:  # type: ignore[no-untyped-def]
    """The edges the encoder gets are CrystalNN's, with the vectors pymatgen gives its
    neighbours; they are stored once in the data cache and read back by a new store."""
    from generators.data import cache as data_cache
    from generators.data import preprocessing
    from generators.models import vae

    records = perov_val_records[:3]
    batch = structures_to_batch([r.structure for r in records], [r.material_id for r in records])
    torch.manual_seed(0)
    model = CDVAE(make_vae_config("cdvae", encoder={"graph": "crystalnn"})["model"])
    edge_index, offsets = model.encoder_edges(batch)
    lattice = batch.lattice.view(-1, 3, 3)
    cart = torch.einsum("ni,nij->nj", batch.frac_coords, lattice[batch.batch])
    vectors = (
        cart[edge_index[0]]
        + torch.einsum("ek,ekl->el", offsets, lattice[batch.batch[edge_index[1]]])
        - cart[edge_index[1]]
    )
    start, checked = 0, 0
    for k, record in enumerate(records):
        n = len(record.structure)
        mine = (batch.batch[edge_index[1]] == k).nonzero().view(-1)
        got = {
            (
                int(edge_index[0, e]) - start,
                int(edge_index[1, e]) - start,
                tuple(int(x) for x in offsets[e]),
            )
            for e in mine
        }
        assert got == _pymatgen_crystalnn_edges(record.structure)
        # vectors from pymatgen's neighbour sites (Cartesian coordinates of the image)
        from pymatgen.analysis.local_env import CrystalNN

        nn_info = CrystalNN(
            distance_cutoffs=None, x_diff_weight=-1, porous_adjustment=False
        ).get_all_nn_info(record.structure)
        for e in mine:
            j, i = int(edge_index[0, e]) - start, int(edge_index[1, e]) - start
            image = tuple(int(x) for x in offsets[e])
            for info in nn_info[i]:
                found = tuple(round(float(x)) for x in info["image"])
                if info["site_index"] == j and found == image:
                    expected = info["site"].coords - record.structure[i].coords
                    assert np.allclose(vectors[e].numpy(), expected, atol=1e-4)
                    checked += 1
        start += n
    assert checked >= len(edge_index[0]) // 2  # each bond's vector seen from one end at least
    latent = model.encode(batch)[0]
    assert latent.shape == (3, 64) and torch.isfinite(latent).all()
    # stored in the data cache under the settings' key; a new store reads, never recomputes
    chunks = list(graph_cache.glob("encoder-graphs/crystalnn-*/*.json.gz"))
    assert len(chunks) == 1
    fresh = data_cache.EncoderGraphStore(graph_cache)
    assert len(fresh) == 3

    def refuse(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("graph recomputed although stored")

    vae._GRAPH_STORES.clear()
    original = preprocessing.crystalnn_graphs
    preprocessing.crystalnn_graphs = refuse  # type: ignore[assignment]
    try:
        again = model.encoder_edges(batch)
    finally:
        preprocessing.crystalnn_graphs = original  # type: ignore[assignment]
    assert torch.equal(again[0], edge_index) and torch.equal(again[1], offsets)


def test_changed_crystalnn_setting_recomputes(graph_cache, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from generators.data import cache as data_cache

    before = data_cache.EncoderGraphStore(graph_cache).directory
    monkeypatch.setattr(
        data_cache, "CRYSTALNN_OPTIONS", {**data_cache.CRYSTALNN_OPTIONS, "x_diff_weight": 3.0}
    )
    assert data_cache.EncoderGraphStore(graph_cache).directory != before


def test_crystalnn_graphs_in_parallel_equal_serial(perov_val_records, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from generators.data import preprocessing

    structures = [r.structure for r in perov_val_records[:6]]
    serial = preprocessing.crystalnn_graphs(structures, workers=1)
    monkeypatch.setattr(preprocessing, "PARALLEL_GRAPHS", 2)
    parallel = preprocessing.crystalnn_graphs(structures, workers=2)
    assert parallel == serial


def test_crystalnn_encoder_requires_edges_and_names_bad_crystals(
    make_vae_config, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from pymatgen.analysis.graphs import StructureGraph

    from generators.data.preprocessing import EncoderGraphError, crystalnn_graph

    torch.manual_seed(0)
    model = CDVAE(make_vae_config("cdvae", encoder={"graph": "crystalnn"})["model"])
    batch = structures_to_batch([Structure(Lattice.cubic(4.0), ["Si"], [[0, 0, 0]])])
    with pytest.raises(ValueError, match="needs the precomputed edges"):
        model.encoder(
            batch.frac_coords, batch.atom_types, batch.lattice, batch.num_atoms, batch.batch
        )
    with pytest.raises(ValueError, match="encoder graph must be one of"):
        CDVAE(make_vae_config("cdvae", encoder={"graph": "voronoi"})["model"])

    def fail(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("No Voronoi neighbors found")

    monkeypatch.setattr(StructureGraph, "from_local_env_strategy", fail)
    with pytest.raises(EncoderGraphError, match="bad-one: CrystalNN failed: No Voronoi"):
        crystalnn_graph(batch_to_structures(batch)[0][0], "bad-one")
