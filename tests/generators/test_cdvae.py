"""CDVAE: decoder symmetries, noise and loss definitions, Langevin sampler, trainer round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from generators.crystal import batch_to_structures, random_rotation, structures_to_batch
from generators.models.cdvae import CDVAE, min_image_difference
from generators.registry import build_model
from generators.trainer import fit, load_checkpoint, structures_to_data_list


@pytest.fixture(scope="module")
def model(make_vae_config) -> CDVAE:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return CDVAE(make_vae_config("cdvae")["model"]).eval()


@pytest.fixture(scope="module")
def decoder_model(make_vae_config, decoder_type: str) -> CDVAE:  # type: ignore[no-untyped-def]
    """A CDVAE with each decoder type (symmetry tests run for GemNet-T and DimeNet++-style)."""
    torch.manual_seed(0)
    return CDVAE(make_vae_config("cdvae", decoder=decoder_type)["model"]).eval()


@pytest.fixture(scope="module")
def batch(make_crystals):  # type: ignore[no-untyped-def]
    return structures_to_batch(make_crystals(3, seed=2), ["a", "b", "c"])


def _decode(model: CDVAE, batch, z):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model.decoder(
            z, batch.frac_coords, batch.atom_types, batch.lattice, batch.num_atoms, batch.batch
        )


@pytest.fixture(scope="module")
def latent() -> torch.Tensor:
    return torch.randn(3, 64, generator=torch.Generator().manual_seed(1))


def test_decoder_outputs_depend_on_z(decoder_model: CDVAE, batch, latent) -> None:  # type: ignore[no-untyped-def]
    vec, logits = _decode(decoder_model, batch, latent)
    assert vec.shape == (len(batch.atom_types), 3) and logits.shape == (len(batch.atom_types), 100)
    vec2, _ = _decode(decoder_model, batch, latent + 1.0)
    assert (vec - vec2).abs().max() > 1e-5


def test_decoder_permutation_equivariant(decoder_model: CDVAE, batch, latent) -> None:  # type: ignore[no-untyped-def]
    n0 = int(batch.num_atoms[0])
    perm = torch.randperm(n0, generator=torch.Generator().manual_seed(0))
    permuted = batch.clone()
    permuted.frac_coords[:n0] = batch.frac_coords[:n0][perm]
    permuted.atom_types[:n0] = batch.atom_types[:n0][perm]
    vec, logits = _decode(decoder_model, batch, latent)
    pvec, plogits = _decode(decoder_model, permuted, latent)
    assert torch.allclose(pvec[:n0], vec[:n0][perm], atol=1e-4)
    assert torch.allclose(plogits[:n0], logits[:n0][perm], atol=1e-4)
    assert torch.allclose(pvec[n0:], vec[n0:], atol=1e-4)


def test_decoder_translation_invariant(decoder_model: CDVAE, batch, latent) -> None:  # type: ignore[no-untyped-def]
    shifted = batch.clone()
    shifted.frac_coords = torch.remainder(batch.frac_coords + torch.tensor([0.4, 0.13, 0.91]), 1)
    vec, logits = _decode(decoder_model, batch, latent)
    svec, slogits = _decode(decoder_model, shifted, latent)
    assert torch.allclose(vec, svec, atol=1e-4)
    assert torch.allclose(logits, slogits, atol=1e-4)


def test_decoder_scores_rotate_with_the_cell(decoder_model: CDVAE, batch, latent) -> None:  # type: ignore[no-untyped-def]
    rotation = random_rotation(torch.Generator().manual_seed(3))
    rotated = batch.clone()
    rotated.lattice = batch.lattice @ rotation.T
    vec, logits = _decode(decoder_model, batch, latent)
    rvec, rlogits = _decode(decoder_model, rotated, latent)
    assert torch.allclose(rvec, vec @ rotation.T, atol=1e-4)
    assert torch.allclose(rlogits, logits, atol=1e-4)
    assert vec.abs().max() > 1e-4  # not the trivial zero vector


def test_min_image_difference_is_the_shortest_periodic_vector() -> None:
    lattice = Lattice.from_parameters(4.0, 5.0, 6.0, 65.0, 110.0, 75.0)
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 3)), rng.random((8, 3))
    s = Structure(lattice, ["C"] * 8, a)
    got = min_image_difference(
        torch.tensor(a, dtype=torch.float32),
        torch.tensor(b, dtype=torch.float32),
        torch.tensor(lattice.matrix, dtype=torch.float32).unsqueeze(0),
        torch.tensor([8]),
    )
    for k in range(8):
        dist, image = lattice.get_distance_and_image(b[k], a[k])
        assert float(got[k].norm()) == pytest.approx(dist, abs=1e-4)
        expected = lattice.get_cartesian_coords(a[k] + image - b[k])
        assert np.allclose(got[k].numpy(), expected, atol=1e-4)
    assert s.num_sites == 8


def test_noise_levels_and_loss_terms(model: CDVAE, batch, make_vae_config) -> None:  # type: ignore[no-untyped-def]
    assert len(model.sigmas) == 50
    assert float(model.sigmas[0]) == pytest.approx(10.0)
    assert float(model.sigmas[-1]) == pytest.approx(0.01)
    ratio = model.sigmas[1:] / model.sigmas[:-1]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)  # geometric
    assert float(model.type_sigmas[0]) == pytest.approx(5.0)
    fresh = CDVAE(make_vae_config("cdvae")["model"])
    fresh.fit_statistics(batch)
    terms = fresh.training_loss(batch, epoch=0)
    expected = (
        terms["natom"]
        + 10 * terms["lattice"]
        + terms["composition"]
        + 0.01 * terms["kl"]
        + 10 * terms["coord"]
        + terms["type"]
    )
    assert torch.allclose(terms["loss"], expected)
    terms["loss"].backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for name, p in fresh.named_parameters()
        if name.startswith(("decoder.atom_latent_emb", "fc_lattice", "encoder.emb"))
    )
    val = fresh.validation_loss(batch, epoch=0)
    assert torch.allclose(val["loss"], 10 * val["coord"] + val["type"])


def test_teacher_forcing_switches_to_the_predicted_lattice(batch, make_vae_config) -> None:  # type: ignore[no-untyped-def]
    fresh = CDVAE(make_vae_config("cdvae", teacher_forcing_max_epoch=5)["model"])
    fresh.fit_statistics(batch)
    seen: list[torch.Tensor] = []
    hook = fresh.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[3]))
    fresh.training_loss(batch, epoch=4)
    fresh.training_loss(batch, epoch=5)
    hook.remove()
    assert torch.equal(seen[0], batch.lattice)
    assert not torch.allclose(seen[1], batch.lattice, atol=1e-3)


@pytest.mark.parametrize("model_name", ["cdvae", "dpcdvae"])
def test_validation_decodes_on_the_predicted_lattice(
    model_name: str, batch, make_vae_config
) -> None:  # type: ignore[no-untyped-def]
    """Validation never teacher-forces: during teacher forcing (epoch 0 of 10**6) its loss equals
    the training loss's terms *after* teacher forcing (same seed) and differs from the
    teacher-forced ones; the decoder sees the lattice the head predicts from z."""
    torch.manual_seed(0)
    fresh = build_model(
        model_name, make_vae_config(model_name, teacher_forcing_max_epoch=10**6)["model"]
    )
    fresh.fit_statistics(batch)
    fresh.eval()
    seen: list[torch.Tensor] = []
    hook = fresh.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[3]))

    def terms(call):  # type: ignore[no-untyped-def]
        torch.manual_seed(5)
        with torch.no_grad():
            return call()

    val = terms(lambda: fresh.validation_loss(batch, epoch=0))
    forced = terms(lambda: fresh.training_loss(batch, epoch=0))
    free = terms(lambda: fresh.training_loss(batch, epoch=10**6))
    hook.remove()
    weights = {"cdvae": (10.0, 1.0), "dpcdvae": (1.0, 0.1)}[model_name]
    expected = weights[0] * free["coord"] + weights[1] * free["type"]
    assert torch.allclose(val["loss"], expected)
    teacher = weights[0] * forced["coord"] + weights[1] * forced["type"]
    assert not torch.allclose(val["loss"], teacher, rtol=1e-3)
    # the lattice of the validation pass is the head's prediction from z (same seed: same z)
    torch.manual_seed(5)
    with torch.no_grad():
        mu, log_var = fresh.encode(batch)
        z = fresh.reparameterize(mu, log_var)
        predicted = fresh.unscale_lattice(fresh.predict_statistics(z)[1], batch.num_atoms)
    assert torch.allclose(seen[0], predicted, atol=1e-5)
    assert not torch.allclose(seen[0], batch.lattice, atol=1e-2)
    assert torch.equal(seen[1].view(-1, 3, 3), batch.lattice.view(-1, 3, 3))


def test_coordinate_target_is_measured_in_the_true_cell(batch, make_vae_config) -> None:  # type: ignore[no-untyped-def]
    """On a predicted cell the noise is added in that cell and the target is the way back in the
    true cell (CDVAE's coord_loss converts the noisy fractions with the true lattice)."""
    torch.manual_seed(0)
    fresh = CDVAE(make_vae_config("cdvae")["model"])
    fresh.fit_statistics(batch)
    captured: dict[str, torch.Tensor] = {}

    class Zero(torch.nn.Module):
        def forward(self, z, frac, types, lattice, num_atoms, index):  # type: ignore[no-untyped-def]
            captured["frac"] = frac
            return torch.zeros_like(frac), torch.zeros(len(frac), 100)

    fresh.decoder = Zero()
    other = batch.lattice.view(-1, 3, 3) * 1.1
    torch.manual_seed(3)
    terms = fresh.denoising_loss(batch, torch.zeros(3, 64), other, torch.zeros(3, 100), 0)
    torch.manual_seed(3)
    level = torch.randint(0, 50, (3,))
    sigma = fresh.sigmas[level][batch.batch].unsqueeze(-1)
    # independent: pymatgen's minimum-image vector from the noisy site to the true one
    lattices = batch.lattice.view(-1, 3, 3).double().numpy()
    noisy = captured["frac"].double().numpy()
    per_atom = []
    for k in range(len(noisy)):
        lattice = Lattice(lattices[int(batch.batch[k])])
        _, image = lattice.get_distance_and_image(noisy[k], batch.frac_coords[k].double().numpy())
        d = lattice.get_cartesian_coords(batch.frac_coords[k].double().numpy() + image - noisy[k])
        s = float(sigma[k])
        per_atom.append(0.5 * float(np.sum((d / s**2) ** 2)) * s**2)  # prediction 0
    per_atom_t = torch.tensor(per_atom)
    means = [per_atom_t[batch.batch == b].mean() for b in range(3)]
    assert float(terms["coord"]) == pytest.approx(float(torch.stack(means).mean()), rel=1e-4)


@pytest.mark.parametrize("model_name", ["cdvae", "dpcdvae"])
def test_denoising_samples_average_independent_draws(
    model_name: str, batch, make_vae_config
) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    fresh = build_model(model_name, make_vae_config(model_name, denoising_samples=3)["model"])
    fresh.fit_statistics(batch)
    draws: list[dict[str, torch.Tensor]] = []
    original = fresh.denoising_loss

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        draws.append(original(*args, **kwargs))
        return draws[-1]

    fresh.denoising_loss = recording  # type: ignore[method-assign]
    terms = fresh.training_loss(batch, epoch=0)
    assert len(draws) == 3
    assert not torch.equal(draws[0]["coord"], draws[1]["coord"])  # independent noise
    for key in ("coord", "type"):
        assert torch.allclose(terms[key], torch.stack([d[key] for d in draws]).mean())
    with pytest.raises(ValueError, match="denoising_samples must be >= 1"):
        build_model(model_name, make_vae_config(model_name, denoising_samples=0)["model"])


def test_langevin_sampler_steps_and_outputs(model: CDVAE, make_crystals) -> None:  # type: ignore[no-untyped-def]
    model.fit_statistics(structures_to_batch(make_crystals(4, seed=5)))
    model.configure_sampling(steps=100)  # 2 steps per level
    assert model.langevin_steps_per_level() == 2
    calls = []
    hook = model.decoder.register_forward_hook(lambda *_: calls.append(1))
    out = model.sample_generate(3, torch.Generator().manual_seed(0))
    hook.remove()
    assert len(calls) == 100
    assert out.num_atoms.shape == (3,) and out.lattice.shape == (3, 3, 3)
    assert ((out.frac_coords >= 0) & (out.frac_coords < 1)).all()
    structures, _ = batch_to_structures(out)
    assert len(structures) == 3
    model.configure_sampling()
    assert model.langevin_steps_per_level() == 100  # the paper's default


def test_trainer_round_trip_and_reconstruction(
    tmp_path: Path, perov_val_records, make_vae_config
) -> None:  # type: ignore[no-untyped-def]
    data, errors = structures_to_data_list(perov_val_records[:8])
    assert not errors
    config = make_vae_config("cdvae")
    config["train"].update(batch_size=4, max_epochs=2, checkpoint_every=1, max_minutes=None)
    result = fit(
        build_model("cdvae", config["model"]),
        config,
        data,
        data[:4],
        tmp_path,
        dataset="perov_5",
        progress=False,
    )
    assert result.epochs == 2
    model, meta = load_checkpoint(result.last_checkpoint)
    assert meta["model"] == "cdvae"
    assert torch.allclose(model.lattice_std, result.model.lattice_std)
    model.eval().configure_sampling(steps_per_level=1)
    batch = structures_to_batch([r.structure for r in perov_val_records[:3]], ["x", "y", "z"])
    out = model.reconstruct(batch, torch.Generator().manual_seed(0))
    assert list(out.material_id) == ["x", "y", "z"]


@pytest.mark.parametrize("model_name", ["cdvae", "dpcdvae"])
def test_cli_train_then_reconstruct_and_generate(
    model_name: str, tmp_path: Path, data_dir: Path
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app
    from generators.sampler import load_samples

    runner = CliRunner()
    run_dir = tmp_path / "run"
    common = ["--data-dir", str(data_dir), "--no-progress"]
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            model_name,
            "--dataset",
            "perov_5",
            "--config",
            "cpu-small",
            "--max-epochs",
            "1",
            "--limit",
            "4",
            "--out",
            str(run_dir),
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    checkpoint = run_dir / "last.pt"
    assert checkpoint.is_file()
    for mode in (["--reconstruct", "val", "--limit", "2"], ["--n", "2"]):
        out = tmp_path / f"samples{mode[0]}"
        result = runner.invoke(
            app,
            [
                "sample",
                "--checkpoint",
                str(checkpoint),
                *mode,
                "--steps",
                "50",
                "--out",
                str(out),
                *common,
            ],
        )
        assert result.exit_code == 0, result.output
        records = load_samples(out)
        assert len(records) == 2
        # one epoch on 4 crystals already decodes usable cells (the lattice head starts at the
        # training cells' mean): every record is a crystal of 1..max_atoms atoms, no error
        assert [r.error for r in records] == [None, None]
        assert all(
            r.structure is not None and 1 <= len(r.structure) <= 20 and r.structure.volume > 1.0
            for r in records
        )
    # reconstructions are tied to the crystals they reconstruct, generated crystals to none
    from generators.data import load_split

    val = load_split("perov_5", "val", data_dir=data_dir, limit=2, progress=False).records
    reconstructed = load_samples(tmp_path / "samples--reconstruct")
    assert sorted(r.target_id for r in reconstructed) == sorted(r.material_id for r in val)
    assert all(r.target_id is None for r in load_samples(tmp_path / "samples--n"))
