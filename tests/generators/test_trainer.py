"""Trainer: config validation, checkpoints, exact resume, NaN guard, DDP on 2 CPU processes."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor
from torch_geometric.data import Batch

from generators.ema import WeightAverage
from generators.models.base import CrystalGenerator
from generators.models.diffcsp import DiffCSP
from generators.trainer import (
    CHECKPOINT_FORMAT,
    TrainingDivergedError,
    TrainResult,
    evaluate_loss,
    fit,
    initial_model,
    load_checkpoint,
    read_checkpoint,
    train,
    validate_train_config,
)

from .conftest import TINY_MODEL, tiny_config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": -1e-3}, "lr must be a positive number"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"scheduler": {"name": "cosine_warmup"}}, "unknown scheduler"),
        ({"scheduler": {"name": "plateau", "factor": 1.5}}, "scheduler.factor"),
        ({"max_epochs": 2.5}, "max_epochs"),
        ({"learning_rate": 1e-3}, "unknown train config keys"),
        ({"grad_clip_value": 0}, "grad_clip_value"),
        ({"ema_decay": 1.0}, "ema_decay must be in"),
        ({"scheduler": {"name": "cosine", "min_lr": 0.1}}, "scheduler.min_lr must be in"),
        ({"scheduler": {"name": "cosine", "epochs": 0}}, "scheduler.epochs"),
        ({"train_split": "val"}, "val_split must differ from train_split"),
        ({"train_split": None}, "train_split must be a split name"),
    ],
)
def test_invalid_train_config_is_rejected(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_train_config(change)


def test_invalid_config_rejected_before_training(tmp_path: Path, perov_val_data) -> None:
    config = tiny_config(lr=0.0)
    with pytest.raises(ValueError, match="lr must be a positive"):
        fit(DiffCSP(config["model"]), config, perov_val_data, [], tmp_path, dataset="perov_5")
    assert not (tmp_path / "last.pt").exists()


def test_empty_training_set(tmp_path: Path) -> None:
    config = tiny_config()
    with pytest.raises(ValueError, match="training set is empty"):
        fit(DiffCSP(config["model"]), config, [], [], tmp_path, dataset="perov_5")


def test_train_writes_checkpoints_and_log(tmp_path: Path, perov_val_data) -> None:
    config = tiny_config(max_epochs=3)
    torch.manual_seed(0)
    model = DiffCSP(config["model"])
    result = fit(
        model, config, perov_val_data[:8], perov_val_data[8:12], tmp_path, dataset="perov_5"
    )
    assert result.epochs == 3 and result.stop_reason == "max_epochs"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert all(x["train"]["loss"] > 0 and "loss_coord" in x["val"] for x in lines)
    best = read_checkpoint(tmp_path / "best.pt")
    assert best["format"] == CHECKPOINT_FORMAT and best["model"] == "diffcsp"
    assert best["best_val"] == pytest.approx(min(x["val"]["loss"] for x in lines))
    assert set(best) >= {"optimizer", "scheduler", "epoch", "rng", "code_version", "config"}
    # the statistics travel with the checkpoint
    loaded, meta = load_checkpoint(tmp_path / "last.pt", expect_model="diffcsp")
    assert meta["epoch"] == 3 and meta["dataset"] == "perov_5"
    assert loaded.num_atoms_distribution[5] == pytest.approx(1.0)
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), loaded.state_dict()[key])
    with pytest.raises(ValueError, match="model 'diffcsp', not 'cdvae'"):
        load_checkpoint(tmp_path / "last.pt", expect_model="cdvae")
    with pytest.raises(ValueError, match="dataset 'perov_5', not 'carbon_24'"):
        load_checkpoint(tmp_path / "last.pt", expect_dataset="carbon_24")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a dftloop checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a dftloop checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


class _Stop(Exception):
    pass


def interrupted_after_two_epochs_and_resumed(
    config: dict[str, Any], train: list[Any], val: list[Any], out: Path
) -> TrainResult:
    """Train a DiffCSP (seed 1) with ``config``, stop it after epoch 2, resume from
    ``last.pt`` and return the resumed run."""

    def stop_after_two(epoch: int, _: dict[str, Any]) -> None:
        if epoch == 2:
            raise _Stop

    torch.manual_seed(1)
    with pytest.raises(_Stop):
        fit(
            DiffCSP(config["model"]),
            config,
            train,
            val,
            out,
            dataset="perov_5",
            on_epoch_end=stop_after_two,
        )
    state = read_checkpoint(out / "last.pt")
    assert state["epoch"] == 2
    return fit(
        DiffCSP(config["model"]),
        state["config"],
        train,
        val,
        out,
        dataset="perov_5",
        resume_state=state,
    )


@pytest.mark.parametrize(
    "scheduler",
    [{"name": "plateau", "patience": 0}, {"name": "cosine", "epochs": 3, "min_lr": 2e-4}],
    ids=["plateau", "cosine"],
)
def test_resume_equals_uninterrupted_run(
    tmp_path: Path, perov_val_data, scheduler: dict[str, Any]
) -> None:
    config = tiny_config(max_epochs=4, scheduler=scheduler)
    train, val = perov_val_data[:8], perov_val_data[8:12]
    torch.manual_seed(1)
    full = fit(DiffCSP(config["model"]), config, train, val, tmp_path / "a", dataset="perov_5")
    resumed = interrupted_after_two_epochs_and_resumed(config, train, val, tmp_path / "b")
    assert resumed.epochs == 4
    assert [h["epoch"] for h in resumed.history] == [3, 4]
    assert resumed.history[-1]["lr"] == full.history[-1]["lr"]
    if scheduler["name"] == "cosine":  # 1e-3 decays to 2e-4 over 3 epochs, then stays
        lr = [h["lr"] for h in full.history]
        assert lr == pytest.approx([1e-3, 1e-3 - 8e-4 * 0.25, 1e-3 - 8e-4 * 0.75, 2e-4])
    assert resumed.best_val == pytest.approx(full.best_val, rel=1e-6)
    for key, value in full.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key


def test_train_seed_fixes_the_initial_weights(tmp_path: Path, data_dir: Path) -> None:
    """``train.seed`` fixes the whole run, initial weights included, whatever state the
    process's global generator is in (each new process starts from a random one)."""

    def one_epoch(seed: int, name: str) -> dict[str, Tensor]:
        torch.seed()  # a fresh process's random global state
        result = train(
            "diffcsp",
            "perov_5",
            "cpu-small",
            tmp_path / name,
            limit=8,
            overrides={
                "model": TINY_MODEL,
                "train": {"batch_size": 4, "max_epochs": 1, "seed": seed, "val_split": None},
            },
            data_dir=data_dir,
            progress=False,
        )
        return result.model.state_dict()

    first, again, other = one_epoch(3, "a"), one_epoch(3, "b"), one_epoch(4, "c")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_untrained_baseline_weights_are_the_ones_train_starts_from(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``initial_model`` (what benchmarks/untrained_baseline.py writes) gives the weights that
    ``train`` hands to the optimiser, whatever the global generator did in between."""
    import generators.trainer as trainer

    started: dict[str, Tensor] = {}

    def capture(model: CrystalGenerator, config: dict[str, Any], *args: Any, **kwargs: Any):
        started.update({k: v.clone() for k, v in model.state_dict().items()})
        return config

    monkeypatch.setattr(trainer, "fit", capture)
    overrides = {"model": TINY_MODEL, "train": {"batch_size": 4, "seed": 5, "val_split": None}}
    config = train(
        "diffcsp",
        "perov_5",
        "cpu-small",
        tmp_path / "run",
        limit=8,
        overrides=overrides,
        data_dir=data_dir,
        progress=False,
    )
    torch.seed()
    baseline = initial_model("diffcsp", config).state_dict()
    assert started.keys() == baseline.keys()
    assert all(torch.equal(started[key], baseline[key]) for key in started)
    other = initial_model("diffcsp", {**config, "train": {**config["train"], "seed": 6}})
    assert not all(torch.equal(started[k], v) for k, v in other.state_dict().items())


def _progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "generators.trainer"]


def test_progress_goes_to_the_trainer_logger(
    tmp_path: Path, perov_val_data, caplog: pytest.LogCaptureFixture
) -> None:
    config = tiny_config(max_epochs=4, val_every=2)
    train, val = perov_val_data[:8], perov_val_data[8:12]
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="generators.trainer"):
        result = fit(
            DiffCSP(config["model"]), config, train, val, tmp_path / "a", dataset="perov_5"
        )
    lines = _progress_lines(caplog)
    assert lines[0] == (
        "training diffcsp/perov_5 on cpu: 8 training and 4 validation crystals, epochs 1-4"
    )
    epoch_lines = [line for line in lines if re.match(r"diffcsp/perov_5 epoch \d", line)]
    # epochs take well under 30 s here: only the first and the last are logged
    assert [line.split(":")[0] for line in epoch_lines] == [
        "diffcsp/perov_5 epoch 1/4",
        "diffcsp/perov_5 epoch 4/4",
    ]
    first, last = result.history[0], result.history[-1]
    assert f"train loss {first['train']['loss']:.4g}, val loss n/a, lr 0.001" in epoch_lines[0]
    assert (
        f"train loss {last['train']['loss']:.4g}, val loss {last['val']['loss']:.4g}"
        in (epoch_lines[1])
    )
    assert re.search(r"[0-9.]+ crystals/s, ETA \d+ s$", epoch_lines[0])
    assert epoch_lines[1].endswith("ETA 0 s")
    assert lines[-1].startswith("diffcsp/perov_5 stopped after epoch 4 (max_epochs)")

    caplog.clear()
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="generators.trainer"):
        every = fit(
            DiffCSP(config["model"]),
            config,
            train,
            val,
            tmp_path / "b",
            dataset="perov_5",
            log_every_s=0.0,
        )
    epoch_lines = [
        line for line in _progress_lines(caplog) if re.match(r"diffcsp/perov_5 epoch \d", line)
    ]
    epochs = [line.split(":")[0].split()[-1] for line in epoch_lines]
    assert epochs == ["1/4", "2/4", "3/4", "4/4"]
    # logging changes nothing in the training
    assert every.history[-1]["train"] == result.history[-1]["train"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="generators.trainer"):
        interrupted_after_two_epochs_and_resumed(config, train, val, tmp_path / "c")
    starts = [line for line in _progress_lines(caplog) if line.startswith("training ")]
    assert starts[-1].endswith("epochs 3-4, resumed after epoch 2")


def test_early_stopping_without_validation_watches_the_training_loss_and_says_so(
    tmp_path: Path, perov_val_data, caplog: pytest.LogCaptureFixture
) -> None:
    """With no validation split the training loss is watched: a loss that rises after epoch 1
    (learning rate 0.5) stops a patience-2 run at epoch 3, with a warning at the start that
    names the setting to change; with patience null the run trains every epoch."""
    config = tiny_config(max_epochs=6, early_stopping_patience=2, lr=0.5, ema_decay=None)
    train = perov_val_data[:8]
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="generators.trainer"):
        result = fit(DiffCSP(config["model"]), config, train, [], tmp_path / "a", dataset="perov_5")
    losses = [h["train"]["loss"] for h in result.history]
    best = min(range(len(losses)), key=losses.__getitem__) + 1
    assert result.stop_reason == "early_stopping" and result.epochs == best + 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "no validation split, so early stopping (patience 2) watches the training loss" in w
        and "train.early_stopping_patience=null to train all 6 epochs" in w
        for w in warnings
    ), warnings
    config["train"]["early_stopping_patience"] = None
    torch.manual_seed(0)
    full = fit(DiffCSP(config["model"]), config, train, [], tmp_path / "b", dataset="perov_5")
    assert full.epochs == 6 and full.stop_reason == "max_epochs"


def test_weight_average_follows_its_formula_and_restores_the_model() -> None:
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    average = WeightAverage(layer, decay=0.9)
    expected = torch.ones(1, 2)
    for n, value in enumerate([3.0, -1.0, 2.0], start=1):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.update(layer)
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
        assert torch.allclose(average.shadow["weight"], expected)
    with average.applied(layer):
        assert torch.allclose(layer.weight, expected)
    assert torch.all(layer.weight == 2.0)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(layer, decay=1.0)


def test_weight_average_is_validated_checkpointed_and_resumed(
    tmp_path: Path, perov_val_data
) -> None:
    config = tiny_config(max_epochs=4, ema_decay=0.9)
    train, val = perov_val_data[:8], perov_val_data[8:12]
    torch.manual_seed(1)
    full = fit(DiffCSP(config["model"]), config, train, val, tmp_path / "a", dataset="perov_5")
    last = read_checkpoint(tmp_path / "a" / "last.pt")
    averaged = last["ema_state_dict"]
    assert last["ema"]["updates"] == 4 * 2  # 4 epochs of 2 batches
    # the returned model and load_checkpoint carry the average, not the last iterate
    assert any(not torch.equal(averaged[k], last["state_dict"][k]) for k in averaged)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, averaged[key]), key
    loaded, meta = load_checkpoint(tmp_path / "a" / "last.pt")
    assert meta["weights"] == "average"
    assert all(torch.equal(v, averaged[k]) for k, v in loaded.state_dict().items())
    raw, meta = load_checkpoint(tmp_path / "a" / "last.pt", averaged=False)
    assert meta["weights"] == "last"
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in raw.state_dict().items())
    # the validation loss that picked best.pt is the averaged weights' loss
    best = read_checkpoint(tmp_path / "a" / "best.pt")
    best_model, _ = load_checkpoint(tmp_path / "a" / "best.pt")
    val_loss = evaluate_loss(
        best_model, val, 4, best["epoch"], torch.device("cpu"), config["train"]["seed"]
    )
    assert val_loss["loss"] == pytest.approx(best["best_val"], rel=1e-6)

    resumed = interrupted_after_two_epochs_and_resumed(config, train, val, tmp_path / "b")
    for key, value in full.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key


class NaNAfterTwoEpochs(CrystalGenerator):
    """A tiny linear model whose loss turns NaN at epoch 3."""

    name: ClassVar[str] = "nan-test"
    supports: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.weight = torch.nn.Parameter(torch.ones(3))

    def training_loss(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        coord = ((batch.frac_coords * self.weight).sum(-1) ** 2).mean()
        if epoch >= 3:
            coord = coord * torch.tensor(float("nan"))
        return {"loss": coord, "loss_coord": coord}


def test_nan_loss_stops_and_keeps_good_checkpoint(tmp_path: Path, perov_val_data) -> None:
    config = tiny_config(max_epochs=5)
    model = NaNAfterTwoEpochs({})
    with pytest.raises(TrainingDivergedError, match=r"epoch 3, batch 0.*loss_coord"):
        fit(model, config, perov_val_data[:8], perov_val_data[8:12], tmp_path, dataset="perov_5")
    for name in ("best.pt", "last.pt"):
        state = read_checkpoint(tmp_path / name)
        assert state["epoch"] <= 2
        assert torch.isfinite(state["state_dict"]["weight"]).all()
    loaded, _ = load_checkpoint(tmp_path / "best.pt", model_cls=NaNAfterTwoEpochs)
    assert torch.isfinite(loaded.weight).all()


class FloatingPointErrorAtEpochThree(NaNAfterTwoEpochs):
    """Like :class:`NaNAfterTwoEpochs`, but the forward pass itself refuses at epoch 3."""

    name: ClassVar[str] = "fpe-test"

    def training_loss(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        if epoch >= 3:
            raise FloatingPointError("non-finite composition logits for crystals [1] of the batch")
        return super().training_loss(batch, epoch)


def test_forward_floating_point_error_stops_and_keeps_good_checkpoint(
    tmp_path: Path, perov_val_data
) -> None:
    model = FloatingPointErrorAtEpochThree({})
    with pytest.raises(
        TrainingDivergedError, match=r"epoch 3, batch 0.*forward pass.*crystals \[1\]"
    ):
        fit(
            model,
            tiny_config(max_epochs=5),
            perov_val_data[:8],
            perov_val_data[8:12],
            tmp_path,
            dataset="perov_5",
        )
    state = read_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2
    assert torch.isfinite(state["state_dict"]["weight"]).all()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_two_cpu_processes_keep_identical_parameters(tmp_path: Path, data_dir: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
    }
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            str(Path(__file__).with_name("ddp_worker.py")),
            str(tmp_path),
            str(data_dir),
        ],
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # rank 0 alone wrote the run, and training moved the weights away from rank 0's start
    assert (tmp_path / "run" / "last.pt").is_file()
    torch.manual_seed(100)
    start = DiffCSP(tiny_config()["model"]).state_dict()
    assert not torch.equal(start["denoiser.coord_head.weight"], a["denoiser.coord_head.weight"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one writer
