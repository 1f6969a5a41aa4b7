"""CDVAE / DP-CDVAE sampling after the speed work: same graphs, same fixed-seed samples.

Two kinds of check:

* the periodic radius graph (which now enumerates for each atom pair only the lattice
  translations that can reach the cutoff) and GemNet-T's triplet gather against
  straightforward references written here: every translation of a large box, and a
  per-triplet Python loop;
* short fixed-seed sampling chains (CDVAE: 2 noise levels × 3 Langevin steps; DP-CDVAE: 2
  reverse steps) of small untrained models with both decoders (DimeNet++-style and GemNet-T),
  compared with **numbers recorded from the code before the speed work** (commit 73365c3) with
  the same seed and weights, all in float64 so that they hold on any CPU. Recorded values are
  the point here: the test says that the outputs did not change. They depend on the models'
  initialisation order and the random streams of torch; if a deliberate model change moves
  them, re-record them with :func:`short_chain` on the code before that change.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from generators.configs import load_config
from generators.crystal import frac_to_cart
from generators.graphs import radius_graph_pbc
from generators.models.dimenet_pbc import periodic_triplets
from generators.models.gemnet_t import TripletBasis
from generators.registry import build_model

LATTICES = torch.tensor(
    [
        [[2.46, 0.0, 0.0], [-1.23, 2.1304, 0.0], [0.0, 0.0, 6.7]],  # graphite-like, short a, b
        [[4.1, 0.0, 0.0], [1.9, 3.6, 0.0], [0.7, -1.2, 3.9]],  # skewed triclinic
        [[3.57, 0.0, 0.0], [0.0, 3.57, 0.0], [0.0, 0.0, 3.57]],  # cubic
    ]
)
NUM_ATOMS = torch.tensor([4, 6, 3])

GEMNET_SMALL = {
    "type": "gemnet_t",
    "hidden_dim": 32,
    "num_blocks": 2,
    "num_radial": 16,
    "emb_size_trip": 16,
    "emb_size_rbf": 8,
    "emb_size_cbf": 8,
    "emb_size_bil_trip": 16,
    "num_atom": 1,
}


def reference_radius_graph(
    cart: Tensor, lattice: Tensor, num_atoms: Tensor, cutoff: float, box: int
) -> list[tuple[int, int, tuple[int, int, int], float]]:
    """All (centre, neighbour, translation, distance) within ``cutoff``, by brute force.

    Every translation in [−box, box]³ of every ordered atom pair of each crystal.
    """
    grid = torch.arange(-box, box + 1, dtype=cart.dtype)
    translations = torch.cartesian_prod(grid, grid, grid)  # [M, 3]
    edges = []
    start = 0
    for b, n in enumerate(num_atoms.tolist()):
        x = cart[start : start + n]
        shifts = translations @ lattice[b]  # [M, 3]
        vectors = x[None, :, None, :] + shifts[None, None] - x[:, None, None, :]  # [i, j, M, 3]
        dist = vectors.norm(dim=-1)
        for i, j, m in ((dist <= cutoff) & (dist > 1e-8)).nonzero().tolist():
            k = tuple(int(v) for v in translations[m].tolist())
            edges.append((start + i, start + j, k, float(dist[i, j, m])))
        start += n
    return edges


@pytest.mark.parametrize("cutoff", [4.0, 7.0])
def test_radius_graph_equals_brute_force(cutoff: float) -> None:
    """Same edges, translations and distances as every translation of a 25³ box.

    The coordinates are not wrapped (fractional in [−1, 2)), so the graph's translations
    relative to the input positions are checked as well; the edges come sorted by centre,
    then distance.
    """
    generator = torch.Generator().manual_seed(3)
    frac = torch.rand(int(NUM_ATOMS.sum()), 3, generator=generator, dtype=torch.float64) * 3 - 1
    lattice = LATTICES.double()
    cart = frac_to_cart(frac, lattice, NUM_ATOMS)
    graph = radius_graph_pbc(cart, lattice, NUM_ATOMS, cutoff)
    expected = sorted(reference_radius_graph(cart, lattice, NUM_ATOMS, cutoff, box=12))
    neighbour, centre = graph.edge_index
    got = sorted(
        (int(c), int(j), tuple(int(v) for v in k.round().tolist()), float(d))
        for c, j, k, d in zip(centre, neighbour, graph.cell_offsets, graph.distances, strict=True)
    )
    assert len(got) > 10 * len(cart)
    assert [e[:3] for e in got] == [e[:3] for e in expected]
    assert [e[3] for e in got] == pytest.approx([e[3] for e in expected], rel=1e-12)
    key = centre.double() * 1e3 + graph.distances
    assert bool((key[1:] >= key[:-1] - 1e-9).all())  # ties may differ in the last bits


def test_triplet_gather_equals_a_loop() -> None:
    """TripletBasis.gather: row (ji, r) holds the value of the r-th triplet's edge kj."""
    generator = torch.Generator().manual_seed(5)
    frac = torch.rand(int(NUM_ATOMS.sum()), 3, generator=generator)
    graph = radius_graph_pbc(frac_to_cart(frac, LATTICES, NUM_ATOMS), LATTICES, NUM_ATOMS, 4.0)
    num_edges = graph.edge_index.shape[1]
    triplets = periodic_triplets(graph.edge_index, graph.cell_offsets, int(NUM_ATOMS.sum()))
    angles = torch.rand(len(triplets.idx_ji), generator=generator)
    basis = TripletBasis(triplets, angles, num_edges, 3)
    values = torch.randn(num_edges, 5, generator=generator)
    dense = basis.gather(values)
    expected = torch.zeros(num_edges, basis.kmax, 5)
    filled = [0] * num_edges
    for kj, ji in zip(triplets.idx_kj.tolist(), triplets.idx_ji.tolist(), strict=True):
        expected[ji, filled[ji]] = values[kj]
        filled[ji] += 1
    assert torch.equal(dense, expected)


def short_chain(model_name: str, decoder: str) -> tuple[Tensor, Tensor]:
    """A short fixed-seed chain of a small untrained CDVAE / DP-CDVAE on three crystals.

    ``cpu-small`` carbon_24 networks (seed 0), with the DimeNet++-style decoder
    (``dimenet_pp``) or a small GemNet-T (``gemnet_t``, scale factors set to 0.7, 0.75, ...);
    CDVAE runs 2 noise levels (levels 0 and 25: σ = 10 and 0.295 Å) × 3 Langevin steps,
    DP-CDVAE 2 strided reverse steps. Everything runs in float64 (weights, inputs, the
    chain): in float32 the chains of these untrained networks amplify the last-bit differences
    between CPUs' kernels (AVX2 or AVX-512 matrix products) past any tolerance; in float64 the
    outputs agree across thread counts and kernel choices to 1e-12. Returns the fractional
    coordinates and atom types.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        config = load_config(model_name, "cpu-small", "carbon_24")["model"]
        if decoder == "gemnet_t":
            config["decoder"] = dict(GEMNET_SMALL)
        torch.manual_seed(0)
        model = build_model(model_name, config)
        model.eval()
        model.progress = False
        if decoder == "gemnet_t":
            for k, factor in enumerate(model.decoder.scale_factors()):
                factor.scale.fill_(0.7 + 0.05 * k)
        if model_name == "cdvae":
            model.sigmas = model.sigmas[[0, 25]].clone()
            model.configure_sampling(steps_per_level=3)
        else:
            model.configure_sampling(steps=2)
        generator = torch.Generator().manual_seed(1)
        z = torch.randn(len(NUM_ATOMS), model.latent_dim, generator=generator)
        types = torch.full((int(NUM_ATOMS.sum()),), 6, dtype=torch.long)
        with torch.no_grad():
            return model.sample_structure(z, NUM_ATOMS, LATTICES.double(), types, generator)
    finally:
        torch.set_default_dtype(previous)


RECORDED: dict[tuple[str, str], tuple[list[list[float]], list[int]]] = {
    ("cdvae", "dimenet_pp"): (
        [
            [0.0154861506, 0.1294030464, 0.3550387333],
            [0.0330428284, 0.0888800010, 0.9991223059],
            [0.0687696573, 0.8164696220, 0.8508945278],
            [0.4257959346, 0.9774693993, 0.8217618883],
            [0.3575413160, 0.0086234698, 0.8570317433],
            [0.5929210545, 0.5294424767, 0.8320551497],
            [0.2320875281, 0.1992558266, 0.2761257689],
            [0.6705048642, 0.7463924321, 0.5609508743],
            [0.0212596345, 0.4214272536, 0.8285081543],
            [0.9953909616, 0.5404311366, 0.0991582188],
            [0.5962664563, 0.8411767941, 0.2405610928],
            [0.4491554034, 0.0580259168, 0.7173796878],
            [0.9879980136, 0.0720034605, 0.6218300439],
        ],
        [81, 81, 81, 81, 81, 81, 4, 81, 81, 81, 4, 81, 4],
    ),
    ("cdvae", "gemnet_t"): (
        [
            [0.8868680566, 0.8113174430, 0.2088333626],
            [0.9858920860, 0.6962432798, 0.1545935063],
            [0.1243071463, 0.5693135564, 0.8430566241],
            [0.4883148098, 0.9719770012, 0.9287487396],
            [0.3526139373, 0.0181882726, 0.8423225374],
            [0.5973633494, 0.5259641408, 0.8264523560],
            [0.2295080497, 0.2043044167, 0.2820712565],
            [0.6488671757, 0.7578597185, 0.5634351499],
            [0.0213884124, 0.4262985927, 0.8146316142],
            [0.9871343433, 0.5490073887, 0.1033793024],
            [0.6182189735, 0.8461906146, 0.2179153501],
            [0.4204718666, 0.0241089370, 0.7176013192],
            [0.9936306428, 0.1127526154, 0.6427689792],
        ],
        [83, 83, 83, 83, 27, 27, 27, 27, 27, 27, 85, 85, 85],
    ),
    ("dpcdvae", "dimenet_pp"): (
        [
            [0.7933183713, 0.6260775333, 0.8783899787],
            [0.9293776064, 0.7371571361, 0.7886695948],
            [0.2700056291, 0.8864196506, 0.4524761189],
            [0.0072983932, 0.7503456799, 0.8804643076],
            [0.8150760445, 0.0776153569, 0.6587199203],
            [0.2384528009, 0.1132604949, 0.9542624895],
            [0.6705044352, 0.9901424752, 0.3220338827],
            [0.2978289498, 0.9556641331, 0.0772477534],
            [0.2440029763, 0.0580270380, 0.9165068085],
            [0.7341347933, 0.8052905019, 0.0712291457],
            [0.1025717847, 0.1101521193, 0.2849480691],
            [0.3161714163, 0.7350327746, 0.7401940072],
            [0.5812567990, 0.1548151061, 0.9748579237],
        ],
        [81, 6, 95, 6, 81, 65, 27, 65, 65, 6, 17, 14, 47],
    ),
    ("dpcdvae", "gemnet_t"): (
        [
            [0.3215909145, 0.7664111689, 0.0237479533],
            [0.8506688987, 0.2783926635, 0.4118645177],
            [0.9570907689, 0.8108028990, 0.7595898414],
            [0.8706494179, 0.1443932686, 0.8047976875],
            [0.0741958460, 0.1546561520, 0.0803273580],
            [0.5991372493, 0.4226719506, 0.7189859215],
            [0.2273041338, 0.1572897046, 0.1415562598],
            [0.4296352803, 0.7511927688, 0.3461098592],
            [0.8805923759, 0.6217607945, 0.7004486354],
            [0.7891351146, 0.8924286294, 0.0125719660],
            [0.0621361490, 0.8314635217, 0.8819981083],
            [0.7681224166, 0.1394162557, 0.9160783160],
            [0.1697414345, 0.0291202226, 0.2019235757],
        ],
        [7, 53, 7, 7, 23, 38, 4, 89, 38, 23, 95, 18, 95],
    ),
}
""":func:`short_chain` (float64) run on the code before the speed work (73365c3, whose
``sinusoidal_embedding`` then computed in float32 whatever the default dtype: that one line was
given the default dtype for the recording): fractional coordinates (10 decimals) and atom
types."""


@pytest.mark.parametrize("decoder", ["dimenet_pp", "gemnet_t"])
@pytest.mark.parametrize("model_name", ["cdvae", "dpcdvae"])
def test_fixed_seed_chain_is_unchanged(model_name: str, decoder: str) -> None:
    """The short chain gives the recorded coordinates (to 1e-8) and types."""
    frac, types = short_chain(model_name, decoder)
    recorded_frac, recorded_types = RECORDED[(model_name, decoder)]
    difference = frac.double() - torch.tensor(recorded_frac, dtype=torch.float64)
    difference = difference - torch.round(difference)  # the same point modulo 1
    assert float(difference.abs().max()) < 1e-8
    assert types.tolist() == recorded_types
