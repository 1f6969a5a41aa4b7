"""CSPNet's fast evaluation against the straightforward one (the concatenated edge input).

The reference below is CSPNet as first written: each layer builds
cat([h_i, h_j, L·Lᵀ, fourier((f_j − f_i) mod 1)]) for every edge, applies the edge MLP and
averages with a scatter mean; the fast path in :mod:`generators.models.cspnet` splits the first
Linear into per-atom, per-crystal and per-pair products. Same weights, so the outputs, the
training loss and its gradients, and fixed-seed samples must agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch import Tensor, nn
from torch_geometric.utils import scatter

from generators.crystal import structures_to_batch
from generators.diffusion import fourier_features, wrapped_difference
from generators.graphs import fully_connected_edges
from generators.models.cspnet import CSPNet, build_graph
from generators.models.diffcsp import DiffCSP


def reference_layer(
    layer: nn.Module, h: Tensor, frac: Tensor, ips: Tensor, edges: Tensor, edge_crystal: Tensor
) -> Tensor:
    """One CSPLayer in the concatenated form."""
    residual = h
    h = layer.norm(h)
    j, i = edges
    diff = fourier_features(wrapped_difference(frac[i], frac[j]), layer.frequencies)
    messages = layer.edge_mlp(torch.cat([h[i], h[j], ips[edge_crystal], diff], dim=-1))
    aggregated = scatter(messages, i, dim=0, dim_size=h.shape[0], reduce="mean")
    return residual + layer.node_mlp(torch.cat([h, aggregated], dim=-1))


class ReferenceCSPNet(nn.Module):
    """CSPNet's forward in the concatenated form, on the parameters of ``net``."""

    def __init__(self, net: CSPNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        time_emb: Tensor,
        atom_input: Tensor,
        frac: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        atom_crystal: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        net = self.net
        h = net.node_embedding(atom_input if net.smooth_types else atom_input - 1)
        h = net.atom_latent(torch.cat([h, time_emb[atom_crystal]], dim=-1))
        edges = fully_connected_edges(num_atoms, self_loops=net.self_edges)
        edge_crystal = atom_crystal[edges[1]]
        ips = (lattice @ lattice.transpose(-1, -2)).flatten(1)
        for layer in net.layers:
            h = reference_layer(layer, h, frac, ips, edges, edge_crystal)
        h = net.final_norm(h)
        pooled = scatter(h, atom_crystal, dim=0, dim_size=len(num_atoms), reduce="mean")
        lattice_out = torch.einsum("bij,bjk->bik", net.lattice_head(pooled).view(-1, 3, 3), lattice)
        types = net.type_head(h) if net.type_head is not None else None
        return lattice_out, net.coord_head(h), types


def _crystals(sizes: list[int], seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    structures = []
    for k in sizes:
        lattice = Lattice.from_parameters(*rng.uniform(3.0, 7.0, 3), *rng.uniform(75, 105, 3))
        species = rng.choice(["C", "O", "Si", "Ba", "Ti"], k).tolist()
        structures.append(Structure(lattice, species, rng.random((k, 3))))
    return structures_to_batch(structures, [f"c{i}" for i in range(len(sizes))])


def _inputs(batch, smooth_types: bool, dtype: torch.dtype, seed: int = 1):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    time_emb = torch.randn(batch.num_graphs, 16, generator=gen, dtype=dtype)
    if smooth_types:
        atoms = torch.randn(len(batch.atom_types), 100, generator=gen, dtype=dtype)
    else:
        atoms = batch.atom_types
    lattice = batch.lattice.to(dtype)
    lattice = lattice + 0.3 * torch.randn(lattice.shape, generator=gen, dtype=dtype)
    # coordinates on both sides of the cell edges, so wrapped differences occur both ways
    frac = torch.remainder(batch.frac_coords.to(dtype) - 0.5, 1.0)
    return time_emb, atoms, frac, lattice, batch.num_atoms, batch.batch


SIZES = {"uniform": [5, 5, 5, 5], "mixed": [1, 3, 6, 2, 4], "single": [1, 1]}


@pytest.mark.parametrize("sizes", list(SIZES))
@pytest.mark.parametrize("self_edges", [True, False])
@pytest.mark.parametrize("smooth_types", [False, True])
def test_fast_cspnet_equals_the_concatenated_form(
    sizes: str, self_edges: bool, smooth_types: bool
) -> None:
    """Outputs of the split evaluation against the concatenated one, in float64 (agreement to
    rounding: measured ≤ 1e-7, the reverse edge's features being (−sin, cos) of the pair's with
    the float32 frequencies 2πk) and in float32 (the fast form as close to the float64
    reference as the float32 concatenated form is, within a factor 2 and 2e-6)."""
    torch.manual_seed(0)
    net = CSPNet(
        hidden_dim=32,
        num_layers=3,
        num_freqs=8,
        time_dim=16,
        smooth_types=smooth_types,
        self_edges=self_edges,
    )
    batch = _crystals(SIZES[sizes])
    with torch.no_grad():
        net64 = net.double()
        args64 = _inputs(batch, smooth_types, torch.float64)
        exact = ReferenceCSPNet(net64)(*args64)
        fast64 = net64(*args64)
        net32 = net.float()
        args32 = _inputs(batch, smooth_types, torch.float32)
        ref32 = ReferenceCSPNet(net32)(*args32)
        fast32 = net32(*args32)
    assert exact[1].abs().mean() > 1e-2 and exact[0].abs().mean() > 1e-2
    for want, got64, ref, got32 in zip(exact, fast64, ref32, fast32, strict=True):
        if want is None:
            assert got64 is None and got32 is None
            continue
        torch.testing.assert_close(got64, want, rtol=0, atol=1e-6)
        ref_error = float((ref.double() - want).abs().max())
        fast_error = float((got32.double() - want).abs().max())
        assert fast_error <= 2 * ref_error + 2e-6, (fast_error, ref_error)


def test_graph_bookkeeping_of_a_two_atom_crystal_and_a_single_atom() -> None:
    # edges centre-major: (i, j) = (0,0) (0,1) (1,0) (1,1) and (2,2); one unordered pair (0, 1)
    graph = build_graph(torch.tensor([2, 1]), torch.tensor([0, 0, 1]))
    assert graph.edge_index.tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 1, 2]]
    assert graph.pair_centre.tolist() == [0] and graph.pair_neighbour.tolist() == [1]
    assert graph.edge_code.tolist() == [2, 0, 1, 2, 2]  # pair, reverse U + 0, self 2U
    assert graph.block is None
    no_self = build_graph(torch.tensor([2, 1]), torch.tensor([0, 0, 1]), self_edges=False)
    assert no_self.edge_index.tolist() == [[1, 0], [0, 1]]
    assert no_self.edge_code.tolist() == [0, 1]
    assert no_self.centre_counts.flatten().tolist() == [1, 1, 1]
    assert build_graph(torch.tensor([3, 3]), torch.tensor([0, 0, 0, 1, 1, 1])).block == 3


def test_state_dict_keys_are_those_of_the_module_tree() -> None:
    net = CSPNet(hidden_dim=8, num_layers=1, num_freqs=2, time_dim=4)
    assert list(net.state_dict()) == [
        "node_embedding.weight", "atom_latent.weight", "atom_latent.bias",
        "layers.0.edge_mlp.0.weight", "layers.0.edge_mlp.0.bias",
        "layers.0.edge_mlp.2.weight", "layers.0.edge_mlp.2.bias",
        "layers.0.node_mlp.0.weight", "layers.0.node_mlp.0.bias",
        "layers.0.node_mlp.2.weight", "layers.0.node_mlp.2.bias",
        "layers.0.norm.weight", "layers.0.norm.bias",
        "final_norm.weight", "final_norm.bias", "coord_head.weight", "lattice_head.weight",
    ]  # fmt: skip
    assert net.layers[0].edge_mlp[0].weight.shape == (8, 2 * 8 + 9 + 6 * 2)


def _model(mode: str) -> DiffCSP:
    torch.manual_seed(0)
    return DiffCSP(
        {
            "mode": mode,
            "hidden_dim": 32,
            "num_layers": 2,
            "num_freqs": 8,
            "time_dim": 16,
            "max_atoms": 8,
        }
    )


@pytest.mark.parametrize("sizes", ["uniform", "mixed"])
@pytest.mark.parametrize("mode", ["csp", "generate"])
def test_training_loss_and_gradients_equal_the_reference(mode: str, sizes: str) -> None:
    model = _model(mode)
    batch = _crystals(SIZES[sizes], seed=3)
    results = []
    for denoiser in (model.denoiser, ReferenceCSPNet(model.denoiser)):
        model.zero_grad()
        original, model.denoiser = model.denoiser, denoiser
        torch.manual_seed(5)
        loss = model.training_loss(batch, 1)
        loss["loss"].backward()
        model.denoiser = original
        grads = {k: p.grad.clone() for k, p in model.denoiser.named_parameters()}
        results.append(({k: float(v.detach()) for k, v in loss.items()}, grads))
    (fast_loss, fast_grads), (ref_loss, ref_grads) = results
    assert fast_loss == pytest.approx(ref_loss, rel=1e-5)
    assert fast_loss["loss"] > 0.1
    assert fast_grads.keys() == ref_grads.keys()
    for key, ref in ref_grads.items():
        torch.testing.assert_close(
            fast_grads[key], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()) + 1e-7, msg=key
        )


@pytest.mark.parametrize("steps", [1000, 40])
def test_fixed_seed_csp_sample_equals_the_reference(steps: int) -> None:
    model = _model("csp").eval()
    model.configure_sampling(steps=steps)
    template = _crystals(SIZES["mixed"], seed=4)
    fast = model.sample_csp(template, torch.Generator().manual_seed(11))
    model.denoiser = ReferenceCSPNet(model.denoiser)
    ref = model.sample_csp(template, torch.Generator().manual_seed(11))
    diff = fast.frac_coords - ref.frac_coords
    assert float((diff - diff.round()).abs().max()) < 1e-4
    scale = float(ref.lattice.abs().max())
    assert float((fast.lattice - ref.lattice).abs().max()) <= 1e-5 * scale
    # a different seed gives a different sample (the comparison can fail)
    other = model.sample_csp(template, torch.Generator().manual_seed(12))
    far = other.frac_coords - ref.frac_coords
    assert float((far - far.round()).abs().max()) > 0.1


def test_fixed_seed_generation_sample_equals_the_reference() -> None:
    model = _model("generate").eval()
    model.fit_statistics(_crystals([2, 3, 3, 4, 5, 5], seed=6))
    model.configure_sampling(steps=100)
    fast = model.sample_generate(6, torch.Generator().manual_seed(2))
    model.denoiser = ReferenceCSPNet(model.denoiser)
    ref = model.sample_generate(6, torch.Generator().manual_seed(2))
    assert torch.equal(fast.num_atoms, ref.num_atoms)
    assert torch.equal(fast.atom_types, ref.atom_types)
    diff = fast.frac_coords - ref.frac_coords
    assert float((diff - diff.round()).abs().max()) < 1e-4
    scale = float(ref.lattice.abs().max())
    assert float((fast.lattice - ref.lattice).abs().max()) <= 1e-5 * scale


@pytest.mark.slow
def test_compiled_sampling_equals_eager() -> None:
    """The optional ``torch.compile`` of the denoiser (sampling option ``compile``) gives the
    eager sample to float rounding and leaves the state_dict as it was."""
    model = _model("csp").eval()
    keys = list(model.state_dict())
    template = _crystals(SIZES["uniform"], seed=7)
    model.configure_sampling(steps=20)
    eager = model.sample_csp(template, torch.Generator().manual_seed(1))
    model.configure_sampling(steps=20, compile=True)
    compiled = model.sample_csp(template, torch.Generator().manual_seed(1))
    assert "compiled" in model.__dict__["_compiled"]
    diff = compiled.frac_coords - eager.frac_coords
    assert float((diff - diff.round()).abs().max()) < 1e-4
    scale = float(eager.lattice.abs().max())
    assert float((compiled.lattice - eager.lattice).abs().max()) <= 1e-5 * scale
    assert list(model.state_dict()) == keys
