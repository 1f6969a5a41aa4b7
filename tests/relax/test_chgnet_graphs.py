"""CHGNet graphs with reused neighbour candidates: same graph, same energies, forces and stress."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from relax.chgnet_graphs import GraphCache, IsolatedAtomError
from relax.chgnet_model import evaluate_graphs, load_chgnet, model_energy

FCC = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def carbon_cell(seed: int) -> Structure:
    """A rattled, sheared 16-atom diamond supercell (atoms partly outside the unit cell)."""
    s = Structure(
        Lattice.cubic(3.57),
        ["C"] * 8,
        [*FCC, *(np.array(FCC) + 0.25).tolist()],
    )
    s.make_supercell([[2, 0, 0], [0, 1, 0], [0, 0, 1]])
    rng = np.random.default_rng(seed)
    shear = np.eye(3) + 0.04 * rng.standard_normal((3, 3))
    cart = s.cart_coords @ shear + rng.normal(0, 0.1, (len(s), 3))
    return Structure(Lattice(s.lattice.matrix @ shear), s.species, cart, coords_are_cartesian=True)


def edge_sets(graph) -> tuple[set, set]:
    """Directed edges ``(i, j, image)`` and angles ``(atom, edge1, edge2)`` of a CrystalGraph."""
    pairs = graph.atom_graph.numpy()
    images = np.rint(graph.neighbor_image.numpy()).astype(int)
    edges = [(int(i), int(j), tuple(n)) for (i, j), n in zip(pairs, images, strict=True)]
    angles = {(int(a[0]), edges[a[2]], edges[a[4]]) for a in graph.bond_graph.numpy()}
    return set(edges), angles


def state(graph_cache: GraphCache, model, index: int, s: Structure, cart, cell):
    (ev,) = evaluate_graphs(model, [graph_cache.graph(index, cart, cell)], stress=True)
    assert ev.error is None
    return ev


@pytest.fixture(scope="module")
def model():
    return load_chgnet()


def test_graph_has_the_edges_and_angles_of_chgnets_converter(model) -> None:
    for seed in (0, 1):
        s = carbon_cell(seed)
        ours = GraphCache([[site.specie.Z for site in s]]).graph(0, s.cart_coords, s.lattice.matrix)
        theirs = model.graph_converter(s)
        our_edges, our_angles = edge_sets(ours)
        their_edges, their_angles = edge_sets(theirs)
        assert len(our_edges) == len(ours.atom_graph) > 500
        assert our_edges == their_edges
        assert len(our_angles) == len(ours.bond_graph) > 1000
        assert our_angles == their_angles
        # each directed edge maps to an undirected bond whose representative is it or its reverse
        d2u = ours.directed2undirected.numpy()
        u2d = ours.undirected2directed.numpy()
        assert len(u2d) * 2 == len(d2u)
        np.testing.assert_array_equal(d2u[u2d], np.arange(len(u2d)))


def test_reused_neighbours_give_the_same_energy_forces_stress_as_a_new_search(model) -> None:
    s = carbon_cell(2)
    z = [[site.specie.Z for site in s]]
    reused = GraphCache(z, skin=1.0)
    fresh_each_time = GraphCache(z, skin=0.0)
    rng = np.random.default_rng(3)
    cart, cell = s.cart_coords, s.lattice.matrix
    state(reused, model, 0, s, cart, cell)
    for _ in range(4):  # small steps, as in a relaxation: no new neighbour search needed
        strain = np.eye(3) + 0.003 * rng.standard_normal((3, 3))
        cart = cart @ strain + rng.normal(0, 0.03, cart.shape)
        cell = cell @ strain
        a = state(reused, model, 0, s, cart, cell)
        b = state(fresh_each_time, model, 0, s, cart, cell)
        assert a.energy == pytest.approx(b.energy, abs=1e-6)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-6)
        np.testing.assert_allclose(a.stress, b.stress, atol=1e-6)
    assert reused.n_searches == 1 and fresh_each_time.n_searches == 4
    # a large move triggers a new search, and the result is still that of a new search
    cart = cart + rng.normal(0, 0.4, cart.shape)
    a = state(reused, model, 0, s, cart, cell)
    b = state(fresh_each_time, model, 0, s, cart, cell)
    assert reused.n_searches == 2
    assert a.energy == pytest.approx(b.energy, abs=1e-6)
    np.testing.assert_allclose(a.forces, b.forces, atol=1e-6)


def test_energy_matches_chgnet_converter_and_calculator(model) -> None:
    from chgnet.model.dynamics import CHGNetCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    s = carbon_cell(4)
    graph = GraphCache([[site.specie.Z for site in s]]).graph(0, s.cart_coords, s.lattice.matrix)
    (ev,) = evaluate_graphs(model, [graph])
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = CHGNetCalculator(model=model, use_device="cpu")
    # only the order of float32 sums differs from CHGNet's own converter and two-gradient code
    assert ev.energy / len(s) == pytest.approx(atoms.get_potential_energy() / len(s), abs=1e-5)
    np.testing.assert_allclose(ev.forces, atoms.get_forces(), atol=1e-3)
    np.testing.assert_allclose(ev.stress, atoms.get_stress(voigt=False), atol=1e-5)


def test_model_energy_skips_only_dead_computation(model) -> None:
    import torch
    from chgnet.model.model import BatchedGraph

    structures = [carbon_cell(5), carbon_cell(6)]
    graphs = [model.graph_converter(s) for s in structures]
    g = BatchedGraph.from_graphs(
        graphs,
        bond_basis_expansion=model.bond_basis_expansion,
        angle_basis_expansion=model.angle_basis_expansion,
        compute_stress=True,
    )
    with torch.no_grad():
        torch.testing.assert_close(model_energy(model, g), model._compute(g)["e"])


def test_isolated_atom_is_an_error() -> None:
    lone = Structure(Lattice.cubic(14.0), ["C"], [[0, 0, 0]])
    with pytest.raises(IsolatedAtomError, match="1 isolated atom"):
        GraphCache([[6]]).graph(0, lone.cart_coords, lone.lattice.matrix, graph_id="lone")
