"""ContinuouSP: energy invariances and continuity, CD training, CSP sampling through the
trainer and the sampler, and (slow) a memorisation run on perov_5 matched with StructureMatcher.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from generators.crystal import random_rotation, structure_to_data, structures_to_batch
from generators.models.continuousp import ContinuouSP

from .memorisation_gates import check_validity, random_coordinate_validity, validity_fraction

TINY = {
    "embedding_size": 16,
    "edge_feat_size": 16,
    "fc_size": 16,
    "num_conv_layers": 2,
    "num_fc_layers": 2,
}


def _model(seed: int = 0, **overrides) -> ContinuouSP:
    torch.manual_seed(seed)
    return ContinuouSP({**TINY, **overrides}).double().eval()


def _crystal() -> Structure:
    """A low-symmetry 5-atom cell (no accidental symmetry hides a bug)."""
    lattice = Lattice.from_parameters(4.1, 4.6, 5.3, 81.0, 97.0, 104.0)
    frac = [
        [0.02, 0.03, 0.01],
        [0.51, 0.47, 0.55],
        [0.49, 0.11, 0.62],
        [0.13, 0.58, 0.41],
        [0.71, 0.36, 0.09],
    ]
    return Structure(lattice, ["Sr", "Ti", "O", "O", "O"], frac)


def _energy(model: ContinuouSP, structure: Structure, reduce: bool = True) -> float:
    cart = torch.tensor(structure.cart_coords, dtype=torch.float64)
    lattice = torch.tensor(structure.lattice.matrix, dtype=torch.float64)[None]
    types = torch.tensor([s.specie.Z for s in structure])
    energy = model.energy(cart, types, lattice, torch.tensor([len(structure)]), reduce=reduce)
    return float(energy.detach())


# ----------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("reduce", [True, False])
def test_energy_is_invariant(reduce: bool) -> None:
    model = _model()
    crystal = _crystal()
    reference = _energy(model, crystal, reduce)
    assert math.isfinite(reference)
    # rotation of cell and positions together
    rot = random_rotation(torch.Generator().manual_seed(1)).double().numpy()
    rotated = Structure(
        Lattice(crystal.lattice.matrix @ rot.T),
        crystal.species,
        crystal.cart_coords @ rot.T,
        coords_are_cartesian=True,
    )
    # translation of every atom
    shifted = crystal.copy()
    shifted.translate_sites(list(range(len(crystal))), [0.37, -0.21, 0.55], to_unit_cell=False)
    # permutation of the atoms
    order = [3, 0, 4, 2, 1]
    permuted = Structure(
        crystal.lattice, [crystal.species[i] for i in order], crystal.frac_coords[order]
    )
    # another basis of the same lattice (unimodular, det +1) and a left-handed one (det -1)
    for name, other in [("rotation", rotated), ("translation", shifted), ("permutation", permuted)]:
        assert _energy(model, other, reduce) == pytest.approx(reference, abs=1e-9), name
    for matrix in ([[1, 1, 0], [0, 1, 0], [0, 2, 1]], [[0, 1, 0], [1, 0, 0], [1, 1, -1]]):
        m = np.array(matrix)
        new_lattice = Lattice(m @ crystal.lattice.matrix)
        rebased = Structure(
            new_lattice, crystal.species, crystal.cart_coords, coords_are_cartesian=True
        )
        assert _energy(model, rebased, reduce) == pytest.approx(reference, abs=1e-9), matrix


def test_energy_of_a_supercell_equals_the_cell() -> None:
    model = _model(seed=3)
    crystal = _crystal()
    reference = _energy(model, crystal)
    for scaling in ([2, 1, 1], [1, 2, 1], [[1, 1, 0], [0, 1, 0], [0, 0, 2]]):
        supercell = crystal.make_supercell(scaling, in_place=False)
        assert len(supercell) == len(crystal) * round(
            abs(
                np.linalg.det(np.atleast_2d(scaling if np.ndim(scaling) == 2 else np.diag(scaling)))
            )
        )
        assert _energy(model, supercell) == pytest.approx(reference, abs=1e-9), scaling
    # a different composition/structure gives a different energy (the test can fail)
    other = crystal.copy()
    other.replace(0, "Ba")
    assert abs(_energy(model, other) - reference) > 1e-4


# ----------------------------------------------------------------------------- continuity


def test_energy_is_continuous_when_a_neighbour_crosses_the_cutoff() -> None:
    model = _model(seed=5)
    crystal = _crystal()
    lattice = torch.tensor(crystal.lattice.matrix, dtype=torch.float64)[None]
    num_atoms = torch.tensor([len(crystal)])
    types = torch.tensor([s.specie.Z for s in crystal])
    radius = float(model.energy_net.radius(lattice, num_atoms))
    base = torch.tensor(crystal.cart_coords, dtype=torch.float64)
    # move atom 1 along x; find a displacement t* where some pair distance equals the radius
    direction = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)

    def state(t: float) -> torch.Tensor:
        cart = base.clone()
        cart[1] = cart[1] + t * direction
        return cart

    def edges(t: float) -> int:
        return model.energy_net.graph(state(t), lattice, num_atoms).edge_index.shape[1]

    ts = np.linspace(0.0, 0.5, 501)
    counts = [edges(t) for t in ts]
    change = next(i for i in range(1, len(ts)) if counts[i] != counts[i - 1])
    lo, hi = ts[change - 1], ts[change]
    for _ in range(40):  # bisect the crossing to ~1e-13
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if edges(mid) == counts[change - 1] else (lo, mid)
    assert edges(lo) != edges(hi), "the graph changes at the crossing"

    def energy(t: float) -> float:
        return float(model.energy(state(t), types, lattice, num_atoms).detach())

    jump = abs(energy(hi) - energy(lo))
    assert jump < 1e-9, f"energy jumps by {jump} when a neighbour crosses r = {radius:.3f}"
    # and a small displacement changes it a little, consistently with the gradient
    cart = state(0.0).requires_grad_(True)
    e0 = model.energy(cart, types, lattice, num_atoms).sum()
    (grad,) = torch.autograd.grad(e0, cart)
    delta = 1e-6 * torch.randn_like(cart)
    e1 = model.energy(cart.detach() + delta, types, lattice, num_atoms).sum()
    change = float((e1 - e0).detach())
    assert change == pytest.approx(float((grad * delta).sum()), rel=1e-3, abs=1e-12)


def test_edge_weight_vanishes_at_the_radius() -> None:
    """The weight the convolutions receive is w = cos(π·d/r) + 1 with r = 3·(V/N)^(1/3), and
    it is zero for a pair at the radius: a two-atom cubic cell (a = 3 Å, r = 7.143 Å) with the
    second atom placed so that one of its images sits 1e-9·r inside the radius."""
    model = _model()
    net = model.energy_net
    a = 3.0
    radius = 3.0 * (a**3 / 2) ** (1 / 3)
    x = radius * (1 - 1e-9) / a - 2.0  # image (x + 2, 0, 0) of atom 1 at distance r(1 - 1e-9)
    crystal = Structure(Lattice.cubic(a), ["Sr", "O"], [[0, 0, 0], [x, 0, 0]])
    cart = torch.tensor(crystal.cart_coords, dtype=torch.float64)
    lattice = torch.tensor(crystal.lattice.matrix, dtype=torch.float64)[None]
    num_atoms = torch.tensor([2])
    types = torch.tensor([38, 8])
    assert float(net.radius(lattice, num_atoms)) == pytest.approx(radius, rel=1e-12)
    received: list[torch.Tensor] = []
    hook = net.convs[0].register_forward_pre_hook(lambda _m, args: received.append(args[3]))
    with torch.no_grad():
        net(cart, types, lattice, num_atoms)
    hook.remove()
    graph = net.graph(cart, lattice, num_atoms)
    distances = graph.distances.detach().numpy()
    weight = received[0].numpy()
    assert weight.shape == distances.shape
    np.testing.assert_allclose(weight, np.cos(np.pi * distances / radius) + 1.0, atol=1e-12)
    at_radius = np.abs(distances - radius) < 1e-6
    assert at_radius.sum() == 2  # the pair, seen from both atoms
    assert np.all(weight[at_radius] < 1e-12)
    assert weight.max() > 1.0  # nearer pairs do carry weight
    # every periodic pair within r is in the graph: compare with pymatgen's neighbour list
    expected = sum(len(n) for n in crystal.get_all_neighbors(radius))
    assert graph.edge_index.shape[1] == expected


# ----------------------------------------------------------------------------- training, sampling


def test_negative_compositions_reduce_by_gcd_and_multiply() -> None:
    model = _model(max_negative_atoms=None)
    sr2ti2o6 = Structure(
        Lattice.cubic(7.8),
        ["Sr", "Sr", "Ti", "Ti"] + ["O"] * 6,
        np.random.default_rng(0).random((10, 3)),
    )
    batch = structures_to_batch([sr2ti2o6] * 400)
    types, counts = model.negative_compositions(batch, torch.Generator().manual_seed(0))
    assert bool((counts % 5 == 0).all())
    k = (counts // 5).double()
    # k = 1 + Geometric(0.5): P(k = 1) = 1/2, E[k] = 2
    assert float((k == 1).double().mean()) == pytest.approx(0.5, abs=0.08)
    assert float(k.mean()) == pytest.approx(2.0, abs=0.2)
    first = types[: int(counts[0])].tolist()
    assert sorted(first).count(8) == 3 * len(first) // 5
    capped = _model(max_negative_atoms=10)
    _, counts = capped.negative_compositions(batch, torch.Generator().manual_seed(0))
    assert int(counts.max()) <= 10 and int(counts.min()) == 5


def test_training_loss_is_contrastive_divergence_with_gradients() -> None:
    """The loss in train mode: its reported terms add up, the chains leave the model in train
    mode, and every parameter gets a finite gradient. The loss against the reference definition,
    with energies recomputed on the negatives, is checked in test_loss_targets.py."""
    model = ContinuouSP({**TINY, "train_mcmc_steps": 3}).double().train()
    crystal = _crystal()
    batch = structures_to_batch([crystal, crystal.make_supercell([1, 1, 2], in_place=False)])
    batch.frac_coords = batch.frac_coords.double()
    batch.lattice = batch.lattice.double()
    terms = model.training_loss(batch, epoch=1)
    assert model.training, "the MCMC switches back to train mode"
    expected = terms["cd"] + 0.1 * terms["regulariser"]
    assert float(terms["loss"].detach()) == pytest.approx(float(expected), rel=1e-9)
    assert float(terms["cd"]) == pytest.approx(
        float(terms["energy_real"] - terms["energy_sample"]), rel=1e-9, abs=1e-12
    )
    terms["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_tail_schedule_follows_the_annealing_path() -> None:
    model = _model()
    full = model.schedule(1000)
    tail = model.tail_schedule(20, 0.01)
    temps, steps = full.temperatures(), full.step_sizes()
    at = 666  # T = 1e-2 exactly two thirds of the way down (999 intervals)
    assert float(temps[at]) == pytest.approx(0.01)
    assert float(tail.temperatures()[0]) == pytest.approx(0.01)
    assert float(tail.step_sizes()[0]) == pytest.approx(float(steps[at]), rel=1e-6)
    assert float(tail.temperatures()[-1]) == pytest.approx(1e-3)
    assert float(tail.step_sizes()[-1]) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="data_start_temperature"):
        model.tail_schedule(20, 2.0)


def test_data_started_negatives_start_at_the_training_crystal() -> None:
    """CD-k option: chains that start AT the crystal stay near it at low temperature, and
    their energies join E(sample) (one extra negative per data-started crystal)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    model = _model(data_start_fraction=0.5, data_start_temperature=1e-3, train_mcmc_steps=4)
    crystal = _crystal()
    batch = structures_to_batch([crystal, crystal.make_supercell([1, 1, 2], in_place=False)])
    batch.frac_coords = batch.frac_coords.double()
    batch.lattice = batch.lattice.double()
    head = structures_to_batch([crystal])
    head.frac_coords = head.frac_coords.double()
    head.lattice = head.lattice.double()
    result = model.data_started_chains(head, 4, torch.Generator().manual_seed(0))
    moved = Structure(
        Lattice(result.lattice[0].numpy()),
        crystal.species,
        result.cart_coords.numpy(),
        coords_are_cartesian=True,
    )
    rms = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(crystal, moved)
    assert rms is not None and rms[0] < 0.1
    # a random start at the same schedule would not be near the crystal
    random = model.run_chains(
        head.atom_types,
        head.num_atoms,
        generator=torch.Generator().manual_seed(0),
        schedule=model.tail_schedule(4, 1e-3),
    )
    far = Structure(
        Lattice(random.lattice[0].numpy()),
        crystal.species,
        random.cart_coords.numpy(),
        coords_are_cartesian=True,
    )
    assert StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(crystal, far) is None
    model.train()
    generator = torch.Generator().manual_seed(3)
    terms = model.contrastive_divergence(batch, 4, generator)
    plain = _model(train_mcmc_steps=4).train()
    plain_terms = plain.contrastive_divergence(batch, 4, torch.Generator().manual_seed(3))
    # same noise-started negatives (same seed, drawn first), plus one data-started chain
    assert float(terms["energy_real"]) == pytest.approx(float(plain_terms["energy_real"]))
    assert float(terms["energy_sample"]) != pytest.approx(float(plain_terms["energy_sample"]))
    terms["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_csp_sampling_keeps_compositions() -> None:
    model = _model(seed=2)
    crystal = _crystal()
    other = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    template = structures_to_batch([crystal, other], ["a", "b"])
    model.configure_sampling(steps=30)
    out = model.sample_csp(template, torch.Generator().manual_seed(0))
    assert out.num_atoms.tolist() == [5, 2]
    assert list(out.material_id) == ["a", "b"]
    assert sorted(out.atom_types[:5].tolist()) == sorted(template.atom_types[:5].tolist())
    assert bool(((out.frac_coords >= 0) & (out.frac_coords < 1)).all())
    volumes = torch.linalg.det(out.lattice).abs()
    assert bool(torch.isfinite(out.lattice).all()) and bool((volumes > 1.0).all())
    assert bool(((out.acceptance > 0) & (out.acceptance <= 1)).all())
    again = model.sample_csp(template, torch.Generator().manual_seed(0))
    assert torch.equal(again.lattice, out.lattice), "seeded sampling is reproducible"


def test_trainer_and_sampler_run_continuousp(tmp_path: Path) -> None:
    from dftloop_io.samples import load_samples
    from generators.configs import load_config
    from generators.registry import build_model
    from generators.sampler import plan_items, run_sampling
    from generators.trainer import fit, load_checkpoint

    config = load_config(
        "continuousp",
        "cpu-small",
        "perov_5",
        {"model": {**TINY, "train_mcmc_steps": 5}, "train": {"max_epochs": 2, "batch_size": 2}},
    )
    crystal = _crystal()
    data = [
        structure_to_data(crystal, "x1"),
        structure_to_data(crystal.make_supercell([2, 1, 1], in_place=False), "x2"),
    ]
    model = build_model("continuousp", config["model"])
    result = fit(model, config, data, [], tmp_path / "run", dataset="perov_5", progress=False)
    assert result.epochs == 2
    assert all(math.isfinite(r["train"]["loss"]) for r in result.history)
    loaded, meta = load_checkpoint(result.last_checkpoint, expect_model="continuousp")
    assert meta["config"]["model"]["train_mcmc_steps"] == 5
    records = [type("R", (), {"material_id": "x1", "structure": crystal})()]
    items = plan_items("csp", records=records, k=3)
    summary = run_sampling(
        loaded,
        tmp_path / "samples",
        "csp",
        items,
        dataset="perov_5",
        checkpoint_sha256="test",
        steps=10,
        k=3,
        progress=False,
    )
    assert summary.failed == 0
    samples = load_samples(tmp_path / "samples")
    assert [s.candidate for s in samples] == [0, 1, 2]
    assert all(s.structure.composition == crystal.composition for s in samples)


# ----------------------------------------------------------------------------- memorisation


def stay_count(model: ContinuouSP, structures: list, seed: int = 0, steps: int = 50) -> int:
    """Training crystals still matched after a chain started AT them over the schedule's tail
    from T = 0.01 (``data_started_chains``): a necessary condition for memorisation."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    model.eval()
    batch = structures_to_batch(structures)
    result = model.data_started_chains(batch, steps, torch.Generator().manual_seed(seed))
    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    count, start = 0, 0
    for b, crystal in enumerate(structures):
        n = len(crystal)
        moved = Structure(
            Lattice(result.lattice[b].detach().double().numpy()),
            crystal.species,
            result.cart_coords[start : start + n].detach().double().numpy(),
            coords_are_cartesian=True,
        )
        start += n
        count += matcher.get_rms_dist(crystal, moved) is not None
    return count


def memorisation_run(
    out_dir: Path,
    n_structures: int,
    minutes: float,
    k: int,
    sample_steps: int | None = None,
    seed: int = 0,
    with_baseline: bool = False,
    config_name: str = "cpu-small",
    model_overrides: dict | None = None,
    max_epochs: int = 10_000,
    csp_steps: int | None = None,
) -> dict:
    """Train ``config_name`` on the first perov_5 training structures, CSP-sample them, match.

    Training stops after ``minutes`` or ``max_epochs``, whichever comes first. ``seed`` seeds
    the initial weights, training and sampling; the untrained baseline is the network before
    training. ``sample_steps`` None samples with the config's ``mcmc_steps``; the stay test
    always runs ``sample_steps``, the CSP chains (trained and untrained) ``csp_steps`` when
    given.
    """
    from analysis.matching import csp_match
    from generators.configs import load_config
    from generators.data import load_split
    from generators.registry import build_model
    from generators.sampler import plan_items, run_sampling
    from generators.trainer import fit

    split = load_split("perov_5", "train", limit=n_structures, progress=False)
    data = [structure_to_data(r.structure, r.material_id) for r in split.records]
    config = load_config(
        "continuousp",
        config_name,
        "perov_5",
        {
            "model": dict(model_overrides or {}),
            "train": {
                "max_minutes": minutes,
                "max_epochs": max_epochs,
                "checkpoint_every": 50,
                "seed": seed,
            },
        },
    )
    torch.manual_seed(seed)  # the initial weights (torch's own start seed varies by process)
    model = build_model("continuousp", config["model"])
    tic = time.monotonic()
    result = fit(model, config, data, [], out_dir / "run", dataset="perov_5", progress=False)
    train_s = time.monotonic() - tic
    model = result.model.eval()
    sample_steps = int(sample_steps or config["model"]["mcmc_steps"])
    csp_steps = int(csp_steps or sample_steps)
    items = plan_items("csp", records=split.records, k=k)
    tic = time.monotonic()
    run_sampling(
        model,
        out_dir / "samples",
        "csp",
        items,
        dataset="perov_5",
        checkpoint_sha256="memorisation",
        chunk_size=len(items),
        steps=csp_steps,
        k=k,
        seed=seed,
        progress=False,
    )
    sample_s = time.monotonic() - tic
    from dftloop_io.samples import load_samples

    samples = load_samples(out_dir / "samples")
    by_target: dict[str, list] = {r.material_id: [] for r in split.records}
    for s in samples:
        by_target[s.target_id].append(s.structure)
    ids = [r.material_id for r in split.records]
    metrics = csp_match([by_target[i] for i in ids], split.structures, "continuousp", ids=ids)
    single = csp_match([by_target[i][:1] for i in ids], split.structures, "continuousp", ids=ids)
    baseline: dict = {}
    if with_baseline:  # the same sampling with an untrained energy (same seed)
        torch.manual_seed(seed)  # the trained network's starting weights
        untrained = build_model("continuousp", config["model"]).eval()
        run_sampling(
            untrained,
            out_dir / "baseline",
            "csp",
            items,
            dataset="perov_5",
            checkpoint_sha256="untrained",
            chunk_size=len(items),
            steps=csp_steps,
            k=k,
            seed=seed,
            progress=False,
        )
        base_by_target: dict[str, list] = {i: [] for i in ids}
        for s in load_samples(out_dir / "baseline"):
            base_by_target[s.target_id].append(s.structure)
        base = csp_match([base_by_target[i] for i in ids], split.structures, "continuousp", ids=ids)
        baseline = {
            "untrained_match_rate_k": base["match_rate"].value,
            "untrained_stay": stay_count(untrained, split.structures, seed, sample_steps),
        }
    summary = {
        "stay": stay_count(model, split.structures, seed, sample_steps),
        **baseline,
        "config": config_name,
        "model_overrides": model_overrides or {},
        "n_structures": n_structures,
        "k": k,
        "sample_steps": sample_steps,
        "csp_steps": csp_steps,
        "train_minutes": train_s / 60,
        "epochs": result.epochs,
        "stop_reason": result.stop_reason,
        "sample_minutes": sample_s / 60,
        "match_rate_k": metrics["match_rate"].value,
        "rmse_k": metrics["rmse"].value,
        "match_rate_1": single["match_rate"].value,
        "validity": validity_fraction([s.structure for s in samples]),
        "random_coordinate_validity": random_coordinate_validity(
            [s.structure for s in samples], seed=seed
        ),
        "final_train": result.history[-1]["train"],
    }
    (out_dir / "memorisation.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def test_memorisation_pipeline_reports_what_it_sampled(tmp_path: Path) -> None:
    """``memorisation_run`` on 4 structures (2 epochs of one batch, 2 candidates of 20 steps):
    it trains the epochs it was given, the samples it wrote keep their targets' compositions,
    and its match rates and stay count agree with a recount here, StructureMatcher(stol 0.5,
    angle_tol 10, ltol 0.3) on each target's candidates (any of the k; candidate 0 alone) and
    on chains started at the targets, run here from the saved checkpoint."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from dftloop_io.samples import load_samples
    from generators.data import load_split
    from generators.trainer import load_checkpoint

    summary = memorisation_run(
        tmp_path, n_structures=4, minutes=10.0, k=2, sample_steps=20, max_epochs=2
    )
    assert (summary["epochs"], summary["stop_reason"]) == (2, "max_epochs")
    targets = {r.material_id: r.structure for r in load_split("perov_5", "train", limit=4).records}
    samples = load_samples(tmp_path / "samples")
    assert sorted((s.target_id, s.candidate) for s in samples) == sorted(
        (i, c) for i in targets for c in range(2)
    )
    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    any_k, first = 0, 0
    for target_id, truth in targets.items():
        mine = sorted((s for s in samples if s.target_id == target_id), key=lambda s: s.candidate)
        assert all(s.structure.composition == truth.composition for s in mine)
        hits = [matcher.get_rms_dist(truth, s.structure) is not None for s in mine]
        any_k += any(hits)
        first += hits[0]
    assert summary["match_rate_k"] == pytest.approx(any_k / 4)
    assert summary["match_rate_1"] == pytest.approx(first / 4)
    # the stay test recounted: chains from the targets' own coordinates and cells, the same
    # seed and the schedule's tail from T = 0.01 over the 20 steps; from random coordinates in
    # the same cells fewer chains end at their targets (measured 1 of 4, against 4 of 4)
    model, _ = load_checkpoint(tmp_path / "run" / "last.pt", expect_model="continuousp")
    crystals = list(targets.values())

    def stays(frac_coords: list[np.ndarray]) -> int:
        cart = [f @ s.lattice.matrix for f, s in zip(frac_coords, crystals, strict=True)]
        chains = model.run_chains(
            torch.tensor([site.specie.Z for s in crystals for site in s]),
            torch.tensor([len(s) for s in crystals]),
            generator=torch.Generator().manual_seed(0),
            start=(
                torch.tensor(np.concatenate(cart), dtype=torch.float32),
                torch.tensor(np.stack([s.lattice.matrix for s in crystals]), dtype=torch.float32),
            ),
            schedule=model.tail_schedule(20, 0.01),
        )
        count, start = 0, 0
        for b, truth in enumerate(crystals):
            moved = Structure(
                Lattice(chains.lattice[b].double().numpy()),
                truth.species,
                chains.cart_coords[start : start + len(truth)].double().numpy(),
                coords_are_cartesian=True,
            )
            start += len(truth)
            count += matcher.get_rms_dist(truth, moved) is not None
        return count

    assert summary["stay"] == stays([s.frac_coords for s in crystals])
    rng = np.random.default_rng(0)
    assert stays([rng.random((len(s), 3)) for s in crystals]) < summary["stay"]
    assert summary["validity"] == pytest.approx(validity_fraction([s.structure for s in samples]))


STAY_FLOOR = 4
"""Hard floor of the slow test's stay test: half of the 8 crystals (measured 8/8, the untrained
energy 3/8; docs/continuousp.md)."""


@pytest.mark.slow
@pytest.mark.timeout(2 * 3600)
def test_memorisation_on_perov5(tmp_path: Path) -> None:
    """8 perov_5 structures, 15 min of ``cpu-memorise`` training; the stay test with chains of
    50 steps (the training chain), CSP with k = 4 chains of 1000 steps (ContinuouSP's sampling
    chain); both against the same sampling with an untrained energy.

    Measured (docs/continuousp.md): 293 Adam steps in 15 min on one core, stay 8/8 (untrained
    3/8), CSP 2/8 with k = 4 (untrained 0/8), 0/8 with k = 1, 32/32 samples valid against
    91.3 % for random coordinates in their cells. An earlier run with 50-step CSP chains (338
    Adam steps): CSP 0/8, samples 87.5 % valid against 90 % (below the validity bar). The CSP
    match rate is near chance level, so it is reported, not asserted.

    Asserted:

    * the stay test: a hard floor of :data:`STAY_FLOOR` of the 8 crystals held as minima, and
      one more than the untrained energy (the same network before training) holds;
    * the validity gate of the other memorisation tests
      (:func:`memorisation_gates.check_validity`): the 32 samples (8 compositions x 4 chains)
      valid by the 0.5 Å / 0.1 Å³ rule must remove at least half of the invalid fraction that
      uniformly random fractional coordinates leave in the samples' own cells and compositions
      (10 placements per sample, seeded).

    The printed summary holds every figure (``stay``, ``untrained_stay``, ``match_rate_k``,
    ``match_rate_1``, ``validity``, ``random_coordinate_validity``, epochs, minutes).
    """
    out = Path(os.environ.get("DFTLOOP_MEMORISATION_DIR", tmp_path))
    summary = memorisation_run(
        out,
        n_structures=8,
        minutes=15.0,
        k=4,
        with_baseline=True,
        config_name="cpu-memorise",
        csp_steps=1000,
    )
    print(json.dumps(summary, indent=2, default=str))
    assert summary["stay"] >= STAY_FLOOR
    assert summary["stay"] >= summary["untrained_stay"] + 1
    check_validity(summary["validity"], summary["random_coordinate_validity"])


def test_dftloop_cli_trains_and_samples_continuousp(tmp_path: Path, data_dir: Path) -> None:
    from typer.testing import CliRunner

    from dftloop_io.samples import load_samples
    from flows.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    common = ["--data-dir", str(data_dir), "--no-progress"]
    result = runner.invoke(
        app,
        ["train", "--model", "continuousp", "--dataset", "perov_5", "--config", "cpu-small",
         "--out", str(run), "--limit", "4", "--max-epochs", "1", "--device", "cpu", *common],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    samples = tmp_path / "samples"
    result = runner.invoke(
        app,
        ["sample", "--checkpoint", str(run / "last.pt"), "--csp-split", "val", "--k", "2",
         "--limit", "2", "--steps", "5", "--out", str(samples), *common],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = load_samples(samples)
    assert len(records) == 4 and {r.candidate for r in records} == {0, 1}
    assert all(r.structure is not None and len(r.structure) == 5 for r in records)
