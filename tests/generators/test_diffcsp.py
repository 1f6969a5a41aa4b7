"""DiffCSP: symmetries of CSPNet and of the loss on random crystals, sampling shapes, configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from generators.configs import load_config
from generators.crystal import random_rotation, structures_to_batch
from generators.models.cspnet import CSPNet
from generators.models.diffcsp import DiffCSP

from .conftest import TINY_MODEL


def _random_batch(seed: int = 0, n: int = 4):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    structures = []
    while len(structures) < n:
        lengths = rng.uniform(3.0, 7.0, 3)
        angles = rng.uniform(70.0, 110.0, 3)
        try:
            lattice = Lattice.from_parameters(*lengths, *angles)
        except ValueError:
            continue
        k = int(rng.integers(2, 7))
        species = rng.choice(["C", "O", "Si", "Ba", "Ti"], k).tolist()
        structures.append(Structure(lattice, species, rng.random((k, 3))))
    return structures_to_batch(structures, [f"rand-{i}" for i in range(n)])


def _within_crystal_permutation(num_atoms: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    parts, start = [], 0
    for n in num_atoms.tolist():
        parts.append(start + torch.randperm(n, generator=gen))
        start += n
    return torch.cat(parts)


def _orthogonal_with_reflection(gen: torch.Generator) -> torch.Tensor:
    reflection = torch.diag(torch.tensor([1.0, 1.0, -1.0]))
    return random_rotation(gen) @ reflection


@pytest.mark.parametrize("smooth_types", [False, True])
def test_cspnet_symmetries(smooth_types: bool) -> None:
    torch.manual_seed(0)
    net = CSPNet(hidden_dim=32, num_layers=2, num_freqs=8, time_dim=16, smooth_types=smooth_types)
    batch = _random_batch()
    gen = torch.Generator().manual_seed(1)
    time_emb = torch.randn(batch.num_graphs, 16, generator=gen)
    if smooth_types:
        atoms = torch.randn(len(batch.atom_types), 100, generator=gen)
    else:
        atoms = batch.atom_types
    lattice = batch.lattice + 0.3 * torch.randn(batch.lattice.shape, generator=gen)
    frac = batch.frac_coords
    args = (batch.num_atoms, batch.batch)
    lat, coord, types = net(time_emb, atoms, frac, lattice, *args)
    assert coord.abs().mean() > 1e-3 and lat.abs().mean() > 1e-3  # not trivially zero

    # permutation of the atoms of each crystal: coordinates permute, lattice unchanged
    perm = _within_crystal_permutation(batch.num_atoms, gen)
    lat_p, coord_p, types_p = net(time_emb, atoms[perm], frac[perm], lattice, *args)
    torch.testing.assert_close(coord_p, coord[perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lat_p, lat, atol=1e-5, rtol=1e-4)
    if smooth_types:
        torch.testing.assert_close(types_p, types[perm], atol=1e-5, rtol=1e-4)

    # a translation of all fractional coordinates of a crystal: nothing changes
    shift = torch.rand(batch.num_graphs, 3, generator=gen)[batch.batch]
    lat_t, coord_t, types_t = net(
        time_emb, atoms, torch.remainder(frac + shift, 1.0), lattice, *args
    )
    torch.testing.assert_close(coord_t, coord, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lat_t, lat, atol=1e-4, rtol=1e-4)
    if smooth_types:
        torch.testing.assert_close(types_t, types, atol=1e-4, rtol=1e-4)

    # O(3) (rotation times a reflection) of the lattice rows: coordinates invariant, lattice
    # output rotates with the lattice
    q = _orthogonal_with_reflection(gen)
    assert torch.det(q) < 0
    lat_r, coord_r, types_r = net(time_emb, atoms, frac, lattice @ q.T, *args)
    torch.testing.assert_close(coord_r, coord, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lat_r, lat @ q.T, atol=1e-4, rtol=1e-4)
    if smooth_types:
        torch.testing.assert_close(types_r, types, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["csp", "generate"])
def test_diffcsp_loss_invariant(mode: str) -> None:
    torch.manual_seed(0)
    model = DiffCSP({**TINY_MODEL, "mode": mode, "hidden_dim": 32, "num_layers": 2})
    batch = _random_batch(seed=3)
    gen = torch.Generator().manual_seed(2)
    times = torch.randint(1, 1001, (batch.num_graphs,), generator=gen)
    lat_noise = torch.randn(batch.lattice.shape, generator=gen)
    coord_noise = torch.randn(batch.frac_coords.shape, generator=gen)
    type_noise = (
        torch.randn(len(batch.atom_types), 100, generator=gen) if mode == "generate" else None
    )
    base = model.loss_terms(batch, times, lat_noise, coord_noise, type_noise)

    rotated = batch.clone()
    q = _orthogonal_with_reflection(gen)
    rotated.lattice = batch.lattice @ q.T
    out = model.loss_terms(rotated, times, lat_noise @ q.T, coord_noise, type_noise)
    for key in base:
        torch.testing.assert_close(out[key], base[key], atol=1e-5, rtol=1e-4)

    shifted = batch.clone()
    shift = torch.rand(batch.num_graphs, 3, generator=gen)[batch.batch]
    shifted.frac_coords = torch.remainder(batch.frac_coords + shift, 1.0)
    out = model.loss_terms(shifted, times, lat_noise, coord_noise, type_noise)
    for key in base:
        torch.testing.assert_close(out[key], base[key], atol=1e-4, rtol=1e-4)

    perm = _within_crystal_permutation(batch.num_atoms, gen)
    permuted = batch.clone()
    permuted.frac_coords = batch.frac_coords[perm]
    permuted.atom_types = batch.atom_types[perm]
    noise_p = None if type_noise is None else type_noise[perm]
    out = model.loss_terms(permuted, times, lat_noise, coord_noise[perm], noise_p)
    for key in base:
        torch.testing.assert_close(out[key], base[key], atol=1e-5, rtol=1e-4)


def test_sampling_shapes_strides_and_step_lr() -> None:
    torch.manual_seed(0)
    model = DiffCSP({**TINY_MODEL, "step_lr": {"csp": 1e-5, "csp_multi": 2e-6, "generate": 3e-6}})
    batch = _random_batch(seed=4)
    assert model.step_lr("csp") == 1e-5
    model.configure_sampling(steps=5, candidates=20)
    assert model.step_lr("csp") == 2e-6
    calls = []
    model.denoiser.register_forward_hook(lambda *_: calls.append(1))
    out = model.sample_csp(batch, torch.Generator().manual_seed(0))
    assert len(calls) == 10  # predictor + corrector per step
    assert torch.equal(out.atom_types, batch.atom_types)
    assert out.lattice.shape == batch.lattice.shape and torch.isfinite(out.lattice).all()
    assert ((out.frac_coords >= 0) & (out.frac_coords < 1)).all()
    again = model.sample_csp(batch, torch.Generator().manual_seed(0))
    assert torch.equal(again.frac_coords, out.frac_coords)  # seeded
    with pytest.raises(ValueError, match="trained for CSP"):
        model.sample_generate(3)


def test_generation_draws_atom_counts_from_training() -> None:
    model = DiffCSP({**TINY_MODEL, "mode": "generate", "max_atoms": 24})
    with pytest.raises(ValueError, match="not fitted"):
        model.sample_generate(2)
    counts = torch.tensor([6, 8, 8, 10, 24, 24])
    batch = _random_batch(n=len(counts))
    batch.num_atoms = counts  # only the counts are read
    model.fit_statistics(batch)
    assert model.num_atoms_distribution[8] == pytest.approx(2 / 6)
    model.configure_sampling(steps=2)
    out = model.sample_generate(40, torch.Generator().manual_seed(0))
    assert set(out.num_atoms.tolist()) <= {6, 8, 10, 24}
    assert ((out.atom_types >= 1) & (out.atom_types <= 100)).all()
    with pytest.raises(ValueError, match="trained for generation"):
        model.sample_csp(batch)


def test_configs_follow_the_paper() -> None:
    perov = load_config("diffcsp", "paper", "perov_5")
    assert (perov["model"]["hidden_dim"], perov["model"]["num_layers"]) == (256, 4)
    assert (perov["train"]["batch_size"], perov["train"]["max_epochs"]) == (1024, 3500)
    mp = load_config("diffcsp", "paper", "mp_20")
    assert (mp["model"]["hidden_dim"], mp["model"]["num_layers"]) == (512, 6)
    assert mp["train"]["scheduler"] == {
        "name": "plateau",
        "factor": 0.6,
        "patience": 30,
        "min_lr": 1e-4,
    }
    assert mp["train"]["grad_clip_value"] == 0.5 and mp["train"]["lr"] == 1e-3
    carbon = load_config("diffcsp", "paper", "carbon_24")
    assert carbon["model"]["step_lr"] == {"csp": 5e-6, "csp_multi": 5e-7, "generate": 1e-5}
    gen = load_config("diffcsp", "paper-generate", "carbon_24")
    assert gen["model"]["mode"] == "generate" and gen["model"]["cost_type"] == 20
    assert gen["train"]["max_epochs"] == 4000
    with pytest.raises(ValueError, match="unknown model config keys"):
        DiffCSP({"hidden": 3})


def test_perov5_paper_net_has_the_original_parameter_count() -> None:
    # DiffCSP's published CSPNet for Perov-5 (4 x 256, 128 frequencies, CSP): 2,535,168
    # parameters; a lattice head with a bias would give 2,535,177.
    # Its graph is fully connected with the self-pairs, as the original's ones(n, n).
    model = DiffCSP(load_config("diffcsp", "paper", "perov_5")["model"])
    assert sum(p.numel() for p in model.denoiser.parameters()) == 2_535_168
    assert model.denoiser.lattice_head.bias is None
    assert model.denoiser.self_edges is True
    crystals = [
        Structure(
            Lattice.cubic(3.9), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
        ),
        Structure(Lattice.cubic(3.0), ["Si"], [[0.1, 0.2, 0.3]]),
    ]
    batch = structures_to_batch(crystals, ["three", "one"])
    graph = model.denoiser.build_graph(batch.num_atoms, batch.batch)
    pairs = sorted(map(tuple, graph.edge_index.t().tolist()))
    # every ordered pair (j, i) of atoms of one crystal, (i, i) included: 3² + 1² edges
    assert pairs == sorted([(j, i) for i in range(3) for j in range(3)] + [(3, 3)])


def test_cspnet_self_edges_carry_the_lattice_to_a_single_atom() -> None:
    # With the self-pair, a 1-atom crystal's node state sees L·Lᵀ, so its coordinate score
    # changes with the lattice; without it the node gets no message and the score cannot.
    torch.manual_seed(0)
    one = Structure(Lattice.cubic(3.0), ["Si"], [[0.1, 0.2, 0.3]])
    batch = structures_to_batch([one], ["one"])
    other_lattice = batch.lattice * 1.3
    time_emb = torch.randn(1, 16)
    outputs = {}
    for self_edges in (True, False):
        torch.manual_seed(1)
        net = CSPNet(hidden_dim=32, num_layers=2, num_freqs=8, time_dim=16, self_edges=self_edges)
        args = (time_emb, batch.atom_types, batch.frac_coords)
        first = net(*args, batch.lattice, batch.num_atoms, batch.batch)[1]
        second = net(*args, other_lattice, batch.num_atoms, batch.batch)[1]
        outputs[self_edges] = (second - first).abs().max().item()
    assert outputs[True] > 1e-4
    assert outputs[False] == 0.0
