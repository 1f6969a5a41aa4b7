"""Training losses of DiffCSP, CDVAE, DP-CDVAE and ContinuouSP against a computation by hand.

The network is replaced by a known function, the random draws of the loss are replayed from
the same seed, and the expected loss is recomputed in numpy from the papers' formulas
(:mod:`numpy_reference`: schedules, the wrapped-normal score by an explicit image sum,
minimum-image vectors), without the models' helpers. The known functions are correlated with
the true targets (they return a fraction of the exact target plus a smooth offset), so that a
target with the wrong sign or scale changes the loss: each test also checks that the model's
loss is far from the loss such an error would give (measured: the wrong-target losses are
0.05 to 470 times the model's; the closest, CDVAE's flipped target, 1.46 times).

The VAE heads (atom count, lattice, composition, KL) are checked with known encoder and head
outputs against targets computed from pymatgen's lattice parameters; ContinuouSP's
contrastive divergence against energies recomputed on the negatives its loss drew.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.data import Batch

from generators.crystal import structures_to_batch
from generators.models.cdvae import CDVAE
from generators.models.continuousp import ContinuouSP
from generators.models.diffcsp import DiffCSP
from generators.models.dpcdvae import DPCDVAE

from .conftest import TINY_MODEL, random_crystals, vae_config
from .numpy_reference import (
    cosine_alpha_bar,
    crystal_mean,
    diffcsp_sigmas,
    dpcdvae_alpha_bar,
    geometric_ladder,
    min_image,
    recentre,
    wrapped_normal_score,
)

FAR = 0.2
"""A wrong-target loss must differ from the model's by more than this fraction of it."""


def _batch(n: int = 6, seed: int = 11) -> Batch:
    return structures_to_batch(random_crystals(n, seed=seed), [f"c{i}" for i in range(n)])


def _array(x: Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def _assert_far(value: float, wrong: float, what: str) -> None:
    assert abs(value - wrong) > FAR * abs(value), f"{what}: {value} vs wrong target {wrong}"


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def _per_crystal_then_batch(values: np.ndarray, crystal: np.ndarray, count: int) -> float:
    return float(crystal_mean(values, crystal, count).mean())


# ----------------------------------------------------------------------------- DiffCSP


class _StepAsEmbedding(nn.Module):
    def forward(self, t: Tensor) -> Tensor:
        return t.float().unsqueeze(-1)


def _diffcsp_known_outputs(
    t: np.ndarray,
    noisy_lattice: np.ndarray,
    noisy_frac: np.ndarray,
    noisy_types: np.ndarray | None,
    truth: dict[str, np.ndarray],
    norms: np.ndarray,
) -> list[np.ndarray]:
    """The known network: half the exact targets plus a smooth offset (t per crystal)."""
    alpha_bar = cosine_alpha_bar(1000)[t]
    sigma = diffcsp_sigmas(1000)[t][truth["crystal"]]
    keep, spread = np.sqrt(alpha_bar)[:, None, None], np.sqrt(1 - alpha_bar)[:, None, None]
    lattice = 0.5 * (noisy_lattice - keep * truth["lattice"]) / spread + 0.1
    score = wrapped_normal_score(noisy_frac - truth["frac"], sigma[:, None])
    coord = 0.5 * score / np.sqrt(norms[t][truth["crystal"]])[:, None]
    coord = coord + 0.2 * np.sin(2 * np.pi * noisy_frac)
    out = [lattice, coord]
    if noisy_types is not None:
        atom_keep = keep[truth["crystal"], 0]
        atom_spread = spread[truth["crystal"], 0]
        out.append(0.5 * (noisy_types - atom_keep * truth["onehot"]) / atom_spread - 0.05)
    return out


class DiffCSPKnownNet(nn.Module):
    """CSPNet's place: :func:`_diffcsp_known_outputs` of whatever the model feeds it."""

    def __init__(self, truth: dict[str, np.ndarray], norms: np.ndarray) -> None:
        super().__init__()
        self.truth = truth
        self.norms = norms

    def forward(
        self,
        time_emb: Tensor,
        atom_input: Tensor,
        frac: Tensor,
        lattice: Tensor,
        num_atoms: Tensor,
        atom_crystal: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        types = _array(atom_input) if atom_input.dim() == 2 else None
        outputs = _diffcsp_known_outputs(
            time_emb[:, 0].long().numpy(),
            _array(lattice),
            _array(frac),
            types,
            self.truth,
            self.norms,
        )
        tensors = [torch.tensor(x, dtype=torch.float32) for x in outputs]
        return tensors[0], tensors[1], tensors[2] if len(tensors) == 3 else None


@pytest.mark.parametrize("mode", ["csp", "generate"])
def test_diffcsp_loss_matches_the_hand_computed_targets(mode: str) -> None:
    """loss = cost_lattice·MSE(ε̂_L, ε_L) + cost_coord·MSE(ŝ, ∇log N_w(σ_t ε; σ_t)/sqrt(λ_t⁻¹))
    (+ cost_type·MSE(ε̂_A, ε_A) for generation), with L_t, F_t and A_t built here from the
    cosine ᾱ and the geometric σ. λ_t⁻¹ is the model's Monte-Carlo normaliser (checked on its
    own below)."""
    torch.manual_seed(0)
    model = DiffCSP({**TINY_MODEL, "mode": mode})
    batch = _batch()
    norms = _array(model.coord_schedule.score_norms)
    crystal = batch.batch.numpy()
    truth = {
        "frac": _array(batch.frac_coords),
        "lattice": _array(batch.lattice),
        "onehot": _array(F.one_hot(batch.atom_types - 1, 100).float()),
        "crystal": crystal,
    }
    model.time_embedding = _StepAsEmbedding()
    model.denoiser = DiffCSPKnownNet(truth, norms)

    gen = torch.Generator().manual_seed(4)
    times = torch.randint(1, 1001, (batch.num_graphs,), generator=gen)
    eps_lattice = torch.randn(batch.lattice.shape, generator=gen)
    eps_frac = torch.randn(batch.frac_coords.shape, generator=gen)
    eps_types = torch.randn(len(crystal), 100, generator=gen) if mode == "generate" else None
    terms = model.loss_terms(batch, times, eps_lattice, eps_frac, eps_types)

    # by hand
    t = times.numpy()
    alpha_bar = cosine_alpha_bar(1000)[t]
    sigma = diffcsp_sigmas(1000)[t][crystal][:, None]
    keep, spread = np.sqrt(alpha_bar), np.sqrt(1 - alpha_bar)
    noisy_lattice = keep[:, None, None] * truth["lattice"] + spread[:, None, None] * _array(
        eps_lattice
    )
    noisy_frac = np.mod(truth["frac"] + sigma * _array(eps_frac), 1.0)
    noisy_types = None
    if eps_types is not None:
        noisy_types = keep[crystal][:, None] * truth["onehot"]
        noisy_types = noisy_types + spread[crystal][:, None] * _array(eps_types)
    outputs = _diffcsp_known_outputs(t, noisy_lattice, noisy_frac, noisy_types, truth, norms)
    target = wrapped_normal_score(sigma * _array(eps_frac), sigma)
    target = target / np.sqrt(norms[t][crystal])[:, None]
    lattice_loss = float(((outputs[0] - _array(eps_lattice)) ** 2).mean())
    coord_loss = float(((outputs[1] - target) ** 2).mean())
    expected = {"loss_lattice": lattice_loss, "loss_coord": coord_loss}
    weights = {"loss_lattice": 1.0, "loss_coord": 1.0}
    if noisy_types is not None:
        expected["loss_type"] = float(((outputs[2] - _array(eps_types)) ** 2).mean())
        weights["loss_type"] = 20.0
    expected["loss"] = sum(weights[k] * expected[k] for k in weights)
    for key, value in expected.items():
        assert float(terms[key]) == pytest.approx(value, rel=2e-4), key

    # a wrong target would be seen: sign flipped, or the normaliser left out (the raw score)
    got = float(terms["loss_coord"])
    _assert_far(got, float(((outputs[1] + target) ** 2).mean()), "flipped score")
    raw = target * np.sqrt(norms[t][crystal])[:, None]
    _assert_far(got, float(((outputs[1] - raw) ** 2).mean()), "unnormalised score")
    _assert_far(
        float(terms["loss_lattice"]),
        float(((outputs[0] + _array(eps_lattice)) ** 2).mean()),
        "flipped lattice ε",
    )


def test_diffcsp_score_normaliser_is_the_mean_squared_score() -> None:
    """λ_t⁻¹ = E‖∇log N_w(x; σ_t)‖² over x ~ N_w(0, σ_t²) (DiffCSP's ``sigma_norm``), estimated
    here with 40,000 independent samples and the explicit image sum: agrees within 4 % (the
    model's 10,000-sample estimate has a relative error of sqrt(2/10,000) = 1.4 % for a
    Gaussian; small σ gives λ⁻¹ ≈ 1/σ², so a missing square root or square would be off by
    far more)."""
    model = DiffCSP(TINY_MODEL)
    norms = _array(model.coord_schedule.score_norms)
    sigmas = diffcsp_sigmas(1000)
    rng = np.random.default_rng(0)
    for t in (1, 200, 500, 800, 1000):
        x = np.mod(sigmas[t] * rng.standard_normal(40_000), 1.0)
        estimate = float((wrapped_normal_score(x, sigmas[t]) ** 2).mean())
        assert norms[t] == pytest.approx(estimate, rel=0.04), t
    assert norms[1] == pytest.approx(1 / sigmas[1] ** 2, rel=0.04)


# ----------------------------------------------------------------------------- CDVAE

KAPPA = 0.7
"""Å⁻¹: the known CDVAE decoder predicts κ·d, d the way back; pred/σ equals the target d/σ²
at σ = 1/κ = 1.43 Å, lies above it for larger and below it for smaller σ."""


def test_cdvae_denoising_loss_matches_the_hand_computed_target() -> None:
    """coord = 0.5·‖pred/σ − d/σ²‖²·σ² per atom (d: minimum-image Cartesian vector from the
    noisy to the true position), type = CE/σ_type per atom, each averaged per crystal and then
    over the crystals; σ geometric 10 → 0.01 Å and σ_type 5 → 0.01 (50 levels), one level of
    each per crystal, noise added in Cartesian space. The known decoder returns κ·d and fixed
    logits. The cell the decoder sees is the true one (teacher forcing)."""
    torch.manual_seed(0)
    model = CDVAE(vae_config("cdvae")["model"])
    batch = _batch(8, seed=12)
    crystal, count = batch.batch.numpy(), batch.num_graphs
    frac0 = _array(batch.frac_coords)
    cells = _array(batch.lattice)[crystal]
    logits = torch.randn(len(crystal), 100, generator=torch.Generator().manual_seed(9))

    class KnownDecoder(nn.Module):
        def forward(self, z, frac, atom_types, lattice, num_atoms, index):  # type: ignore[no-untyped-def]
            back = min_image(frac0, _array(frac), cells)
            return torch.tensor(KAPPA * back, dtype=torch.float32), logits

    model.decoder = KnownDecoder()
    z = torch.zeros(count, model.latent_dim)
    composition = torch.zeros(count, 100)
    torch.manual_seed(21)
    terms = model.denoising_loss(batch, z, batch.lattice, composition, epoch=0)

    # replay the draws: a noise level and a type level per crystal, then Gaussian noise
    torch.manual_seed(21)
    level = torch.randint(0, 50, (count,)).numpy()
    type_level = torch.randint(0, 50, (count,)).numpy()
    sigma = geometric_ladder(10.0, 0.01, 50)[level][crystal][:, None]
    noise = _array(torch.randn(len(crystal), 3)) * sigma
    cart = np.einsum("ni,nij->nj", frac0, cells) + noise
    noisy = np.mod(np.einsum("ni,nij->nj", cart, np.linalg.inv(cells)), 1.0)
    back = min_image(frac0, noisy, cells)
    pred = KAPPA * back
    target = back / sigma**2

    def coord_loss(target: np.ndarray) -> float:
        per_atom = 0.5 * ((pred / sigma - target) ** 2).sum(-1) * sigma[:, 0] ** 2
        return _per_crystal_then_batch(per_atom, crystal, count)

    type_sigma = geometric_ladder(5.0, 0.01, 50)[type_level][crystal]
    ce = _cross_entropy(_array(logits), batch.atom_types.numpy() - 1) / type_sigma
    assert float(terms["coord"]) == pytest.approx(coord_loss(target), rel=1e-4)
    assert float(terms["type"]) == pytest.approx(
        _per_crystal_then_batch(ce, crystal, count), rel=1e-5
    )
    got = float(terms["coord"])
    _assert_far(got, coord_loss(-target), "flipped target")
    _assert_far(got, coord_loss(back / sigma), "target d/σ")
    _assert_far(got, coord_loss(noise / sigma**2), "target along the noise")


# ----------------------------------------------------------------------------- DP-CDVAE


def test_dpcdvae_eps_loss_matches_the_hand_computed_target() -> None:
    """coord = Σ_dims (ε̂ − ε)² per atom, mean per crystal then over crystals, with
    r_t = sqrt(ᾱ_t)·r₀ + sqrt(1 − ᾱ_t)·ε on re-centred r₀ and ε, t ~ U{1..T−1} per crystal,
    the denoiser seeing r_t − floor(r_t); type = CE/σ_s with σ_s geometric 0.01 → 5 over the
    T indices. The known denoiser returns half of the ε that the bounded input implies (taking
    each atom's image nearest sqrt(ᾱ_t)·r₀) plus an offset, so that ε enters the loss with its
    sign."""
    torch.manual_seed(0)
    model = DPCDVAE(vae_config("dpcdvae")["model"])
    batch = _batch(8, seed=13)
    crystal, count = batch.batch.numpy(), batch.num_graphs
    r0 = recentre(_array(batch.frac_coords), crystal, count)
    alpha_bar = dpcdvae_alpha_bar(1000)
    logits = torch.randn(len(crystal), 100, generator=torch.Generator().manual_seed(9))

    def known_eps(bounded: np.ndarray, t: np.ndarray) -> np.ndarray:
        keep = np.sqrt(alpha_bar[t])[crystal][:, None]
        spread = np.sqrt(1 - alpha_bar[t])[crystal][:, None]
        unwrapped = bounded + np.round(keep * r0 - bounded)  # the image nearest sqrt(ᾱ)·r₀
        return 0.5 * (unwrapped - keep * r0) / spread + 0.1 * np.cos(2 * np.pi * bounded)

    def denoise(z, frac, atom_types, lattice, num_atoms, index, t):  # type: ignore[no-untyped-def]
        eps = known_eps(_array(frac), t.numpy())
        return torch.tensor(eps, dtype=torch.float32), logits

    model.denoise = denoise  # type: ignore[method-assign]
    z = torch.zeros(count, model.latent_dim)
    torch.manual_seed(22)
    terms = model.denoising_loss(batch, z, batch.lattice, torch.zeros(count, 100), epoch=0)

    torch.manual_seed(22)
    t = torch.randint(1, 1000, (count,)).numpy()
    s = torch.randint(1, 1000, (count,)).numpy()
    eps = recentre(_array(torch.randn(len(crystal), 3)), crystal, count)
    keep = np.sqrt(alpha_bar[t])[crystal][:, None]
    spread = np.sqrt(1 - alpha_bar[t])[crystal][:, None]
    r_t = keep * r0 + spread * eps
    bounded = r_t - np.floor(r_t)
    eps_hat = known_eps(bounded, t)

    def coord_loss(target: np.ndarray) -> float:
        return _per_crystal_then_batch(((eps_hat - target) ** 2).sum(-1), crystal, count)

    type_sigma = geometric_ladder(0.01, 5.0, 1000)[s][crystal]
    ce = _cross_entropy(_array(logits), batch.atom_types.numpy() - 1) / type_sigma
    assert float(terms["coord"]) == pytest.approx(coord_loss(eps), rel=1e-4)
    assert float(terms["type"]) == pytest.approx(
        _per_crystal_then_batch(ce, crystal, count), rel=1e-5
    )
    got = float(terms["coord"])
    _assert_far(got, coord_loss(-eps), "flipped ε")
    _assert_far(got, coord_loss(2 * eps), "doubled ε")
    _assert_far(got, coord_loss(math.sqrt(2) * spread * eps), "ε scaled by its std")


# ----------------------------------------------------------------------------- VAE heads

VAE_HEAD_WEIGHTS = {"cdvae": (1.0, 10.0, 1.0, 0.01), "dpcdvae": (1.0, 100.0, 1.0, 0.01)}
"""cost_natom, cost_lattice, cost_composition and β of the papers (models.md §1 and §2)."""


def _lattice_features(structures: list[Structure]) -> np.ndarray:
    """Lengths / N^(1/3) and the angles α, β, γ (degrees), from pymatgen's lattice parameters."""
    return np.array(
        [[*(np.array(s.lattice.abc) / len(s) ** (1 / 3)), *s.lattice.angles] for s in structures]
    )


@pytest.mark.parametrize("model_name", ["cdvae", "dpcdvae"])
def test_vae_head_losses_match_the_hand_computed_targets(model_name: str) -> None:
    """natom = CE(atom-count logits, N) over crystals; lattice = MSE(prediction, (f − mean)/std)
    with f = (a, b, c)/N^(1/3) and (α, β, γ) in degrees, mean and population std fitted on the
    training crystals (a StandardScaler), not on the batch; composition = CE(composition
    logits, Z − 1) per atom, mean per crystal then over crystals; KL to N(0, I) summed over the
    latent, mean over crystals; loss = cost_natom·natom + cost_lattice·lattice +
    cost_composition·composition + β·KL (the coordinate and type terms are zeroed here; their
    targets are checked above). Encoder and heads are replaced by known outputs: the lattice
    prediction is half the hand-computed target plus noise, the logits favour the true classes,
    so that a target with a wrong sign, scale or class is far from the model's loss (measured:
    1.5 to 2·10⁴ times it for the wrong targets below)."""
    torch.manual_seed(0)
    model = {"cdvae": CDVAE, "dpcdvae": DPCDVAE}[model_name](vae_config(model_name)["model"])
    train = random_crystals(12, seed=31)
    model.fit_statistics(structures_to_batch(train, [f"t{i}" for i in range(12)]))
    crystals = random_crystals(6, seed=32)
    batch = structures_to_batch(crystals, [f"c{i}" for i in range(6)])
    count, crystal = len(crystals), batch.batch.numpy()
    sizes = np.array([len(s) for s in crystals])
    numbers = np.array([site.specie.Z for s in crystals for site in s])

    train_features = _lattice_features(train)
    mean, std = train_features.mean(0), train_features.std(0)  # population std
    target = (_lattice_features(crystals) - mean) / std
    rng = np.random.default_rng(5)
    lattice_pred = 0.5 * target + 0.1 * rng.standard_normal(target.shape)
    natom_logits = rng.standard_normal((count, model.max_atoms + 1))
    natom_logits[np.arange(count), sizes] += 2.0
    comp_logits = rng.standard_normal((count, 100))
    np.add.at(comp_logits, (crystal, numbers - 1), 1.0)
    mu = 0.3 * rng.standard_normal((count, model.latent_dim))
    log_var = 0.2 * rng.standard_normal((count, model.latent_dim))

    def tensor(x: np.ndarray) -> Tensor:
        return torch.tensor(x, dtype=torch.float32)

    model.encode = lambda _batch: (tensor(mu), tensor(log_var))  # type: ignore[method-assign]
    model.predict_statistics = lambda _z: (  # type: ignore[method-assign]
        tensor(natom_logits),
        tensor(lattice_pred),
        tensor(comp_logits),
    )
    model.denoising_loss = lambda *_args: {"coord": torch.zeros(()), "type": torch.zeros(())}  # type: ignore[method-assign]
    terms = model.training_loss(batch, epoch=0)

    def natom(labels: np.ndarray) -> float:
        return float(_cross_entropy(natom_logits, labels).mean())

    def lattice(target: np.ndarray) -> float:
        return float(((lattice_pred - target) ** 2).mean())

    def composition(labels: np.ndarray) -> float:
        return _per_crystal_then_batch(_cross_entropy(comp_logits[crystal], labels), crystal, count)

    kl = float((-0.5 * (1 + log_var - mu**2 - np.exp(log_var)).sum(1)).mean())
    expected = {
        "natom": natom(sizes),
        "lattice": lattice(target),
        "composition": composition(numbers - 1),
        "kl": kl,
    }
    for key, value in expected.items():
        assert float(terms[key]) == pytest.approx(value, rel=1e-5), key
    weights = VAE_HEAD_WEIGHTS[model_name]
    total = sum(w * expected[k] for w, k in zip(weights, expected, strict=True))
    assert float(terms["loss"]) == pytest.approx(total, rel=1e-5)

    # wrong targets would be seen
    got = float(terms["lattice"])
    _assert_far(got, lattice(-target), "flipped lattice target")
    _assert_far(got, lattice(_lattice_features(crystals)), "unstandardised lattice")
    raw = np.array([[*s.lattice.abc, *s.lattice.angles] for s in crystals])
    raw_train = np.array([[*s.lattice.abc, *s.lattice.angles] for s in train])
    unscaled = (raw - raw_train.mean(0)) / raw_train.std(0)
    _assert_far(got, lattice(unscaled), "lengths not divided by N^(1/3)")
    own = _lattice_features(crystals)
    _assert_far(got, lattice((own - own.mean(0)) / own.std(0)), "scaler fitted on the batch")
    _assert_far(float(terms["natom"]), natom(sizes - 1), "atom count off by one class")
    _assert_far(float(terms["composition"]), composition(numbers), "Z instead of Z − 1")


# ----------------------------------------------------------------------------- ContinuouSP

CONTINUOUSP_TINY = {
    "embedding_size": 16,
    "edge_feat_size": 16,
    "fc_size": 16,
    "num_conv_layers": 2,
    "num_fc_layers": 2,
}
"""A small energy network with the paper's structure (a spectral-normalised hidden layer)."""

CD_LAMBDA = 0.1
"""ContinuouSP's ``regularization_lambda`` (models.md §4)."""


def _energy_of(model: ContinuouSP, structure: Structure) -> Tensor:
    """The model's energy of one pymatgen structure, from its Cartesian coordinates."""
    return model.energy(
        torch.tensor(structure.cart_coords, dtype=torch.float64),
        torch.tensor([site.specie.Z for site in structure]),
        torch.tensor(structure.lattice.matrix, dtype=torch.float64)[None],
        torch.tensor([len(structure)]),
    )[0]


def test_continuousp_loss_is_the_reference_contrastive_divergence() -> None:
    """loss = mean E(real) − mean E(sample) + λ·(mean E(real)² + mean E(sample)²), λ = 0.1
    (models.md §4): E(real) over the batch's crystals, E(sample) over the negatives the loss
    drew by MALA. The chain's final states are captured, and every energy is recomputed here,
    crystal by crystal, with the model's energy function (the real crystals from pymatgen's
    Cartesian coordinates; the batch holds them in float32, hence rel 1e-6); the loss and its
    gradients must equal the formula's, and the loss with the contrastive sign flipped must be
    far from it (measured: −1.85 times the model's loss). The model is in eval mode, so that
    the spectral normalisation's power iteration does not change the head's weights between
    the loss and the recomputation."""
    torch.manual_seed(0)
    model = ContinuouSP({**CONTINUOUSP_TINY, "train_mcmc_steps": 3}).double().eval()
    crystals = [
        Structure(
            Lattice.from_parameters(4.1, 4.6, 5.3, 81.0, 97.0, 104.0),
            ["Sr", "Ti", "O", "O", "O"],
            [[0.02, 0.03, 0.01], [0.51, 0.47, 0.55], [0.49, 0.11, 0.62], [0.13, 0.58, 0.41],
             [0.71, 0.36, 0.09]],
        ),
        Structure(Lattice.cubic(3.2), ["Na", "Cl"], [[0.0, 0.0, 0.0], [0.47, 0.52, 0.5]]),
    ]  # fmt: skip
    batch = structures_to_batch(crystals, ["a", "b"])
    batch.frac_coords, batch.lattice = batch.frac_coords.double(), batch.lattice.double()
    chains: dict[str, Any] = {}
    run_chains = model.run_chains

    def capture(atom_types: Tensor, num_atoms: Tensor, **options: Any) -> Any:
        result = run_chains(atom_types, num_atoms, **options)
        chains.update(types=atom_types, counts=num_atoms, result=result)
        return result

    model.run_chains = capture  # type: ignore[method-assign]
    terms = model.contrastive_divergence(batch, 3, torch.Generator().manual_seed(0))
    model.zero_grad()
    terms["loss"].backward()
    loss_grads = [p.grad.clone() for p in model.parameters()]

    negatives = []
    result, start = chains["result"], 0
    for b, n in enumerate(chains["counts"].tolist()):
        negatives.append(
            Structure(
                Lattice(result.lattice[b].numpy()),
                [int(z) for z in chains["types"][start : start + n]],
                result.cart_coords[start : start + n].numpy(),
                coords_are_cartesian=True,
            )
        )
        start += n
    assert len(negatives) == 2
    real = torch.stack([_energy_of(model, s) for s in crystals])
    sample = torch.stack([_energy_of(model, s) for s in negatives])
    regulariser = (real**2).mean() + (sample**2).mean()
    reference = real.mean() - sample.mean() + CD_LAMBDA * regulariser
    assert float(terms["loss"].detach()) == pytest.approx(float(reference.detach()), rel=1e-6)
    model.zero_grad()
    reference.backward()
    for got, want in zip(loss_grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    flipped = sample.mean() - real.mean() + CD_LAMBDA * regulariser
    _assert_far(float(terms["loss"].detach()), float(flipped.detach()), "E(sample) − E(real)")
