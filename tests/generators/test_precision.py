"""Training precision (``train.precision``): fp32 in every ``paper`` configuration, fp16 refused
without CUDA, and bf16 autocast on the CPU kept out of ContinuouSP's MCMC.

The trainer wraps the loss's forward pass in ``torch.autocast`` for ``fp16``/``bf16``; ContinuouSP
draws its contrastive negatives by MALA inside that forward pass and switches autocast off for
the chain, whose Metropolis acceptance at T = 1e-3 needs full-precision energies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pymatgen.core import Lattice, Structure

from generators.configs import CONFIG_DIR, load_config
from generators.crystal import structure_to_data
from generators.models.continuousp import ContinuouSP
from generators.models.diffcsp import DiffCSP
from generators.trainer import fit, validate_train_config

from .conftest import tiny_config

MODELS = ("cdvae", "continuousp", "diffcsp", "dpcdvae")
DATASETS = ("perov_5", "carbon_24", "mp_20", "mpts_52")


def _paper_configs() -> list[tuple[str, str, str]]:
    """(model, paper configuration, dataset) for every ``paper*`` section of the four files and
    every dataset they name (plus the four benchmark datasets)."""
    cases = []
    for model in MODELS:
        sections = yaml.safe_load((CONFIG_DIR / f"{model}.yaml").read_text())
        for name, section in sections.items():
            if not name.startswith("paper"):
                continue
            named = {key for key in (section or {}) if key != "defaults"}
            cases += [(model, name, dataset) for dataset in sorted(named | set(DATASETS))]
    return cases


def test_every_model_has_paper_configurations() -> None:
    cases = _paper_configs()
    assert {model for model, _, _ in cases} == set(MODELS)
    assert sorted(path.stem for path in CONFIG_DIR.glob("*.yaml")) == sorted(MODELS)
    assert ("diffcsp", "paper-generate", "mp_20") in cases


@pytest.mark.parametrize(("model", "name", "dataset"), _paper_configs())
def test_paper_configs_train_in_fp32(model: str, name: str, dataset: str) -> None:
    """Both originals train in full precision (models.md): every resolved ``paper`` section,
    validated as the trainer validates it, says ``fp32``."""
    train = validate_train_config(load_config(model, name, dataset)["train"])
    assert train["precision"] == "fp32"


def test_unknown_precision_is_rejected() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        validate_train_config({"precision": "fp8"})


def test_fp16_without_cuda_is_refused(tmp_path: Path, perov_val_data) -> None:  # type: ignore[no-untyped-def]
    """fp16 autocast needs a GradScaler on CUDA: on a CPU the trainer raises before any step
    (no silent fall-back to another precision) and writes no checkpoint."""
    config = tiny_config(precision="fp16", max_epochs=1)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device, got cpu; use fp32 or bf16"):
        fit(
            DiffCSP(config["model"]),
            config,
            perov_val_data[:4],
            [],
            tmp_path,
            dataset="perov_5",
            device="cpu",
            progress=False,
        )
    assert not (tmp_path / "last.pt").exists()


TINY_ENERGY = {
    "embedding_size": 16,
    "edge_feat_size": 16,
    "fc_size": 16,
    "num_conv_layers": 2,
    "num_fc_layers": 2,
}


def _two_crystals() -> list[Any]:
    lattice = Lattice.from_parameters(4.1, 4.6, 5.3, 81.0, 97.0, 104.0)
    frac = [[0.02, 0.03, 0.01], [0.51, 0.47, 0.55], [0.49, 0.11, 0.62], [0.13, 0.58, 0.41]]
    first = Structure(lattice, ["Sr", "Ti", "O", "O"], frac)
    second = Structure(Lattice.cubic(3.9), ["Ba", "O"], [[0, 0, 0], [0.5, 0.45, 0.52]])
    return [structure_to_data(first, "a"), structure_to_data(second, "b")]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_bf16_keeps_continuousp_mcmc_in_float32(tmp_path: Path, precision: str) -> None:
    """One trained step of ContinuouSP through the trainer. Every energy evaluation is recorded
    (the energy network's output dtype, whether CPU autocast was on, train or eval mode): the
    MALA chains for the negatives (eval mode) must see float32 energies with autocast off under
    bf16 too, while the contrastive-divergence forward (train mode) runs in bfloat16 under bf16
    (showing autocast really was on) and in float32 under fp32. The step updates the weights."""
    config = load_config(
        "continuousp",
        "cpu-small",
        "perov_5",
        {
            "model": {**TINY_ENERGY, "train_mcmc_steps": 3},
            "train": {"max_epochs": 1, "batch_size": 2, "precision": precision},
        },
    )
    torch.manual_seed(0)
    model = ContinuouSP(config["model"])
    seen: list[tuple[bool, torch.dtype, bool]] = []

    def record(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        seen.append((module.training, output.dtype, torch.is_autocast_enabled("cpu")))

    model.energy_net.register_forward_hook(record)
    before = [p.detach().clone() for p in model.parameters()]
    result = fit(
        model, config, _two_crystals(), [], tmp_path, dataset="perov_5", device="cpu",
        progress=False,
    )  # fmt: skip
    assert result.epochs == 1
    assert torch.isfinite(torch.tensor(result.history[0]["train"]["loss"]))
    chain = [(dtype, autocast) for training, dtype, autocast in seen if not training]
    loss = [(dtype, autocast) for training, dtype, autocast in seen if training]
    # 3 MALA steps: the starting state and the 3 proposals; then E(real) and E(sample)
    assert len(chain) == 4 and len(loss) == 2
    assert set(chain) == {(torch.float32, False)}
    expected = (torch.bfloat16, True) if precision == "bf16" else (torch.float32, False)
    assert set(loss) == {expected}
    changed = [
        not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True)
    ]
    assert any(changed)
