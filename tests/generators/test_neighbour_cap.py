"""The tie-aware neighbour cap of :func:`generators.graphs.radius_graph_pbc`."""

from __future__ import annotations

import torch
from pymatgen.core import Lattice, Structure

from generators.crystal import frac_to_cart, structures_to_batch
from generators.graphs import cap_neighbors, radius_graph_pbc


def _cart(batch):  # type: ignore[no-untyped-def]
    return frac_to_cart(batch.frac_coords, batch.lattice, batch.num_atoms)


def test_cap_keeps_every_neighbour_tied_with_the_last() -> None:
    # simple cubic: 6 images at a, 12 at a·√2; a cap of 4 cuts into the first shell
    batch = structures_to_batch([Structure(Lattice.cubic(3.0), ["Po"], [[0, 0, 0]])])
    capped = radius_graph_pbc(_cart(batch), batch.lattice, batch.num_atoms, 5.0, max_neighbors=4)
    assert len(capped.distances) == 6
    assert torch.allclose(capped.distances, torch.full((6,), 3.0), atol=1e-5)
    # the six images cancel: no preferred direction survives the cap
    assert torch.allclose(capped.edge_vectors.sum(0), torch.zeros(3), atol=1e-5)


def test_cap_is_the_same_as_capping_the_full_graph() -> None:
    structure = Structure(
        Lattice.from_parameters(3.1, 3.4, 4.0, 85, 95, 100),
        ["Si", "O", "O"],
        [[0, 0, 0], [0.3, 0.2, 0.1], [0.6, 0.7, 0.4]],
    )
    batch = structures_to_batch([structure, structure])
    cart = _cart(batch)
    capped = radius_graph_pbc(cart, batch.lattice, batch.num_atoms, 6.0, max_neighbors=10)
    full = radius_graph_pbc(cart, batch.lattice, batch.num_atoms, 6.0)
    again = cap_neighbors(full, len(cart), 10)
    assert torch.equal(capped.edge_index, again.edge_index)
    assert torch.bincount(capped.edge_index[1]).min() >= 10
    # edges stay sorted by centre, then by distance
    centre = capped.edge_index[1]
    assert bool((centre[1:] >= centre[:-1]).all())
    same = centre[1:] == centre[:-1]
    assert bool((capped.distances[1:][same] >= capped.distances[:-1][same] - 1e-6).all())
