"""CDVAE's property optimisation: the jointly trained property head, latent descent, SR5/10/15."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from generators.crystal import data_list_to_batch, structure_to_data
from generators.models.cdvae import CDVAE
from generators.property_optimization import (
    PAPER_PERCENTILES,
    optimize_latents,
    optimize_property,
    records_to_property_data,
    snapshot_steps,
    success_rates,
)
from generators.registry import build_model


def _property_batch(make_crystals, values):  # type: ignore[no-untyped-def]
    data = [structure_to_data(s) for s in make_crystals(len(values), seed=31)]
    for item, value in zip(data, values, strict=True):
        item.y = torch.tensor([value], dtype=torch.float32)
    return data_list_to_batch(data)


@pytest.fixture
def property_model(make_vae_config):  # type: ignore[no-untyped-def]
    def build(model_name: str = "cdvae"):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        config = make_vae_config(model_name, predict_property=True, property="heat_ref")
        return build_model(model_name, config["model"])

    return build


@pytest.mark.parametrize("model_name", ["cdvae", "dpcdvae"])
def test_property_loss_against_the_standardised_target(
    model_name: str, property_model, make_crystals
) -> None:  # type: ignore[no-untyped-def]
    values = [0.3, 1.7, math.nan, 2.9]
    batch = _property_batch(make_crystals, values)
    model = property_model(model_name)
    model.fit_statistics(batch)
    known = np.array([0.3, 1.7, 2.9])
    assert float(model.property_mean) == pytest.approx(known.mean(), rel=1e-5)
    assert float(model.property_std) == pytest.approx(known.std(), rel=1e-5)

    class Constant(nn.Module):  # the head predicts 0.25 (standardised) for every crystal
        def forward(self, z):  # type: ignore[no-untyped-def]
            return torch.full((len(z), 1), 0.25)

    model.fc_property = Constant()
    torch.manual_seed(4)
    terms = model.training_loss(batch, epoch=0)
    expected = np.mean((0.25 - (known - known.mean()) / known.std()) ** 2)  # NaN row skipped
    assert float(terms["property"]) == pytest.approx(expected, rel=1e-5)
    rest = (
        sum(model.config[f"cost_{k}"] * terms[k] for k in ("natom", "lattice", "composition"))
        + model.config["beta"] * terms["kl"]
        + model.coordinate_weight(0) * terms["coord"]
        + model.type_weight() * terms["type"]
    )
    assert float(terms["loss"].detach()) == pytest.approx(float(rest.detach()) + expected, rel=1e-5)
    back = 0.25 * known.std() + known.mean()
    predicted = model.predict_property(torch.zeros(2, model.latent_dim)).detach().numpy()
    assert predicted == pytest.approx([back, back], rel=1e-5)


def test_property_head_needs_property_values(
    property_model, make_crystals, make_vae_config
) -> None:  # type: ignore[no-untyped-def]
    batch = data_list_to_batch([structure_to_data(s) for s in make_crystals(2, seed=3)])
    with pytest.raises(ValueError, match="carry no heat_ref values"):
        property_model().fit_statistics(batch)
    with pytest.raises(ValueError, match=r"needs model\.property"):
        CDVAE(make_vae_config("cdvae", predict_property=True)["model"])
    with pytest.raises(ValueError, match="no property head"):
        CDVAE(make_vae_config("cdvae")["model"]).predict_property(torch.zeros(1, 64))


class _Linear(nn.Module):
    """A 'model' whose property head is w·z (Adam's first steps are then lr·sign(∂/∂z))."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def predict_property(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w


@pytest.mark.parametrize("direction", ["min", "max"])
def test_latent_descent_moves_against_the_gradient(direction: str) -> None:
    w = torch.tensor([0.5, -2.0, 1.0])
    z0 = torch.tensor([[0.1, 0.2, 0.3], [-1.0, 0.0, 1.0]])
    model = _Linear(w)
    snapshots, taken = optimize_latents(model, z0, steps=20, lr=0.01, saves=5, direction=direction)
    assert taken == [0, 5, 10, 15, 19]
    sign = -1.0 if direction == "min" else 1.0
    for z, step in zip(snapshots, taken, strict=True):  # constant gradient: lr·(step+1)·sign
        expected = z0 + sign * 0.01 * (step + 1) * torch.sign(w)
        assert torch.allclose(z, expected, atol=1e-6)
    assert model.w.requires_grad and model.w.grad is None  # frozen during, restored after


def test_snapshot_steps_as_the_original_loop() -> None:
    steps = snapshot_steps(5000, 10)  # i % 555 == 0 or the last step
    assert steps[:3] == [0, 555, 1110] and steps[-2:] == [4995, 4999] and len(steps) == 11
    with pytest.raises(ValueError, match="saves >= 2"):
        snapshot_steps(10, 1)


def test_success_rates_by_hand() -> None:
    best = np.array([0.2, 0.5, 0.7, 3.0, np.inf])  # the last start never gave a valid crystal
    rates = success_rates(best, PAPER_PERCENTILES["perov_5"])
    assert rates == {"SR5": 0.2, "SR10": 0.4, "SR15": 0.6}
    up = success_rates(np.array([1.0, 5.0, -np.inf]), (4.0, 2.0, 0.5), direction="max")
    assert up == pytest.approx({"SR5": 1 / 3, "SR10": 1 / 3, "SR15": 2 / 3})


def test_optimize_property_decodes_scores_and_counts(property_model, perov_val_records) -> None:  # type: ignore[no-untyped-def]
    records = perov_val_records[:4]
    data, errors = records_to_property_data(records, "heat_ref")
    assert not errors
    assert [float(d.y) for d in data] == pytest.approx([r.properties["heat_ref"] for r in records])
    batch = data_list_to_batch(data)
    model = property_model()
    model.fit_statistics(batch)
    model.eval()
    model.configure_sampling(steps=50)  # one Langevin step per level: a quick chain
    scored: list[int] = []

    def predictor(structures):  # type: ignore[no-untyped-def]
        scored.append(len(structures))
        return [s.volume / len(s) for s in structures]

    result = optimize_property(
        model,
        batch,
        predictor,
        (10.0, 20.0, 30.0),
        steps=6,
        lr=0.05,
        saves=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.steps == [0, 3, 5]
    assert result.valid.shape == result.scores.shape == result.head.shape == (3, 4)
    assert scored == [int(result.valid.sum())]
    for s, row in enumerate(result.structures):
        for c, structure in enumerate(row):
            if result.valid[s, c]:
                assert result.scores[s, c] == pytest.approx(structure.volume / len(structure))
    expected_best = np.where(result.valid, result.scores, np.inf).min(axis=0)
    assert np.array_equal(result.best, expected_best)
    assert result.rates == success_rates(expected_best, (10.0, 20.0, 30.0))
    assert result.head[-1].mean() < result.head[0].mean()  # the head's prediction went down


def test_cli_optimize_reports_success_rates(tmp_path, perov_val_records, make_vae_config) -> None:  # type: ignore[no-untyped-def]
    """``dftloop optimize`` on a one-epoch model with a property head: the summary's SR values
    are the success rates of its per-start best scores, and bad input is a clear error."""
    from typer.testing import CliRunner

    from flows.cli import app
    from generators.trainer import fit

    data, _ = records_to_property_data(perov_val_records[:6], "heat_ref")
    config = make_vae_config("cdvae", predict_property=True, property="heat_ref")
    config["train"].update(batch_size=6, max_epochs=1, checkpoint_every=1, max_minutes=None)
    torch.manual_seed(0)
    model = build_model("cdvae", config["model"])
    result = fit(model, config, data, [], tmp_path / "run", dataset="perov_5", progress=False)
    summary_path = tmp_path / "opt.json"
    common = ["optimize", "--checkpoint", str(result.last_checkpoint), "--split", "val"]
    args = [*common, "--predictor", "self", "--n", "2", "--steps", "3", "--saves", "2"]
    args += ["--chain-steps", "50", "--percentiles", "0.5,1.0,1.5", "--out", str(summary_path)]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    summary = __import__("json").loads(summary_path.read_text())
    assert summary["starts"] == 2 and summary["snapshot_steps"] == [0, 2]
    assert not summary["independent_predictor"]
    best = np.array([np.inf if b is None else b for b in summary["best"]])
    rates = success_rates(best, (0.5, 1.0, 1.5))
    assert {k: summary[k] for k in rates} == rates
    assert f"SR5: {rates['SR5']:.3f}" in run.output
    bad = CliRunner().invoke(app, [*common, "--predictor", "self", "--percentiles", "1,2"])
    assert bad.exit_code == 1 and "three comma-separated numbers" in bad.output
