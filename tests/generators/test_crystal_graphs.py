"""Crystal tensor conversion and periodic graphs against pymatgen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from generators.crystal import (
    batch_to_structures,
    cart_to_frac,
    frac_to_cart,
    lattice_from_params,
    lattice_from_scaled_features,
    lattice_to_params,
    scaled_lattice_features,
    structures_to_batch,
)
from generators.graphs import fully_connected_edges, radius_graph_pbc


def _random_structures(n: int, seed: int = 0) -> list[Structure]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lengths = rng.uniform(3.0, 7.0, 3)
        angles = rng.uniform(65.0, 115.0, 3)
        try:
            lattice = Lattice.from_parameters(*lengths, *angles)
        except ValueError:
            continue
        if lattice.volume < 5:
            continue
        k = int(rng.integers(1, 7))
        out.append(Structure(lattice, rng.choice(["C", "O", "Si"], k), rng.random((k, 3))))
    return out


def test_round_trip_structure_batch() -> None:
    structures = _random_structures(6)
    batch = structures_to_batch(structures, [f"s{i}" for i in range(len(structures))])
    back, errors = batch_to_structures(batch)
    assert errors == [None] * len(structures)
    for a, b in zip(structures, back, strict=True):
        assert b is not None
        assert np.allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-5)
        assert [s.specie.Z for s in a] == [s.specie.Z for s in b]
        diff = a.frac_coords - b.frac_coords
        assert np.allclose(diff - np.round(diff), 0.0, atol=1e-5)
    assert batch.material_id[2] == "s2"


def test_bad_crystals_are_reported_not_raised() -> None:
    batch = structures_to_batch(_random_structures(3, seed=1))
    batch.frac_coords[0, 0] = float("nan")
    batch.lattice[2] = 0.0
    structures, errors = batch_to_structures(batch)
    assert structures[0] is None and "non-finite" in errors[0]
    assert structures[1] is not None and errors[1] is None
    assert structures[2] is None and "volume" in errors[2]


def test_lattice_params_match_pymatgen() -> None:
    params = torch.tensor([[3.1, 4.2, 5.3, 80.0, 95.0, 110.0], [4.0, 4.0, 4.0, 90.0, 90.0, 90.0]])
    matrix = lattice_from_params(params[:, :3], params[:, 3:])
    for row, m in zip(params.tolist(), matrix, strict=True):
        expected = Lattice.from_parameters(*row).matrix
        assert np.allclose(m.numpy(), expected, atol=1e-4)
    lengths, angles = lattice_to_params(matrix)
    assert torch.allclose(torch.cat([lengths, angles], -1), params, atol=1e-3)
    num_atoms = torch.tensor([5, 8])
    feats = scaled_lattice_features(matrix, num_atoms)
    assert torch.allclose(lattice_from_scaled_features(feats, num_atoms), matrix, atol=1e-4)


def test_frac_cart_inverse() -> None:
    batch = structures_to_batch(_random_structures(4, seed=2))
    cart = frac_to_cart(batch.frac_coords, batch.lattice, batch.num_atoms)
    frac = cart_to_frac(cart, batch.lattice, batch.num_atoms)
    assert torch.allclose(frac, batch.frac_coords, atol=1e-5)


def test_fully_connected_edges() -> None:
    num_atoms = torch.tensor([1, 3, 2])
    edges = fully_connected_edges(num_atoms)
    assert edges.shape == (2, 0 + 6 + 2)
    pairs = set(map(tuple, edges.t().tolist()))
    assert pairs == {(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2), (4, 5), (5, 4)}


@pytest.mark.parametrize("cutoff", [3.0, 6.0])
def test_radius_graph_matches_pymatgen_neighbor_list(cutoff: float) -> None:
    structures = _random_structures(5, seed=3)
    batch = structures_to_batch(structures)
    cart = frac_to_cart(batch.frac_coords, batch.lattice, batch.num_atoms)
    graph = radius_graph_pbc(cart, batch.lattice, batch.num_atoms, cutoff)
    start = 0
    for b, s in enumerate(structures):
        centre, neighbour, _images, dist = s.get_neighbor_list(cutoff)
        ours_mask = (graph.edge_index[1] >= start) & (graph.edge_index[1] < start + len(s))
        ours = sorted(
            zip(
                (graph.edge_index[1][ours_mask] - start).tolist(),
                (graph.edge_index[0][ours_mask] - start).tolist(),
                np.round(graph.distances[ours_mask].double().numpy(), 3).tolist(),
                strict=True,
            )
        )
        theirs = sorted(
            zip(centre.tolist(), neighbour.tolist(), np.round(dist, 3).tolist(), strict=True)
        )
        assert len(ours) == len(theirs), f"crystal {b}"
        assert np.allclose([o[2] for o in ours], [t[2] for t in theirs], atol=2e-3)
        start += len(s)


def test_radius_graph_neighbour_cap_and_unwrapped_positions() -> None:
    structure = Structure(Lattice.cubic(3.0), ["Si", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    batch = structures_to_batch([structure])
    cart = frac_to_cart(batch.frac_coords, batch.lattice, batch.num_atoms)
    full = radius_graph_pbc(cart, batch.lattice, batch.num_atoms, 5.0)
    capped = radius_graph_pbc(cart, batch.lattice, batch.num_atoms, 5.0, max_neighbors=8)
    assert torch.bincount(capped.edge_index[1]).tolist() == [8, 8]
    assert torch.allclose(capped.distances, torch.full((16,), 3.0 * 3**0.5 / 2), atol=1e-5)
    # shifting an atom by a lattice vector changes nothing physical
    shifted = cart.clone()
    shifted[1] += batch.lattice[0, 2] * 2
    moved = radius_graph_pbc(shifted, batch.lattice, batch.num_atoms, 5.0)
    assert torch.allclose(moved.distances.sort().values, full.distances.sort().values, atol=1e-5)


def test_radius_graph_gradients_flow_to_positions_and_cell() -> None:
    batch = structures_to_batch(_random_structures(2, seed=4))
    lattice = batch.lattice.clone().requires_grad_(True)
    cart = frac_to_cart(batch.frac_coords, lattice, batch.num_atoms)
    graph = radius_graph_pbc(cart, lattice, batch.num_atoms, torch.tensor([4.0, 5.0]))
    graph.distances.sum().backward()
    assert lattice.grad is not None and torch.isfinite(lattice.grad).all()
    assert lattice.grad.abs().sum() > 0


def test_fully_connected_edges_with_self_loops() -> None:
    num_atoms = torch.tensor([1, 2])
    edges = fully_connected_edges(num_atoms, self_loops=True)
    pairs = sorted(map(tuple, edges.t().tolist()))
    assert pairs == [(0, 0), (1, 1), (1, 2), (2, 1), (2, 2)]
