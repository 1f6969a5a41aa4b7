"""Training of any :class:`~generators.models.base.CrystalGenerator`, checkpoints, resume.

``train(model_name, dataset, config_name, out_dir)`` loads the splits with
:func:`generators.data.load_split`, converts them with
:func:`generators.crystal.structure_to_data` (bad rows are reported and skipped), fits the
model's statistics on the training split and runs Adam with gradient clipping by value and a
learning-rate schedule (``train.scheduler.name``: ``plateau``, the papers' ReduceLROnPlateau,
by default; ``cosine`` annealing to ``min_lr``; ``none``). It writes into ``out_dir``:

* ``last.pt`` every ``checkpoint_every`` epochs and at the end, ``best.pt`` at each new best
  validation loss (format ``dftloop-checkpoint/1``, ``docs/architecture.md`` §4);
* ``metrics.jsonl``: one JSON line per epoch (train/val loss terms, lr, crystals/s);
* ``config.json``: the resolved configuration.

Progress (epoch, losses, learning rate, crystals/s, time left) is logged with :mod:`logging` on
the ``generators.trainer`` logger at INFO, at most one epoch line every
:data:`PROGRESS_LOG_SECONDS` plus the first and last epoch; a flow that trains forwards this
logger to its run logs.

With ``ema_decay`` set (e.g. 0.999; off by default, not in the papers' recipes) an exponential
moving average of the weights is kept (:class:`generators.ema.WeightAverage`): validation, the
checkpoints' ``ema_state_dict`` (which :func:`load_checkpoint` loads for sampling) and the
returned model use the averaged weights; ``state_dict`` keeps the optimiser's for resuming.

Devices: CUDA when available, else CPU (``device=`` overrides). Precision is a setting
(``train.precision``, :data:`PRECISIONS`): ``fp32`` by default as in the papers; autocast is
opt-in (``fp16`` with a GradScaler on CUDA, ``bf16`` on CUDA or CPU). Launched by ``torchrun``
(``WORLD_SIZE`` > 1) it runs data-parallel
(DDP; NCCL on CUDA, gloo on CPU) with a ``DistributedSampler``; only rank 0 writes files.

A non-finite loss, or a ``FloatingPointError`` raised by the model's forward pass (non-finite
values where it cannot go on, e.g. the type noise of the VAEs), stops training with
:class:`TrainingDivergedError` before the optimiser step, so no checkpoint ever holds the
diverged weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from generators.crystal import data_list_to_batch, structure_to_data
from generators.ema import WeightAverage
from generators.models.base import CrystalGenerator
from generators.registry import build_model, model_class

CHECKPOINT_FORMAT = "dftloop-checkpoint/1"

logger = logging.getLogger(__name__)
"""Progress of the training (``generators.trainer``, INFO), see :func:`fit`."""

PROGRESS_LOG_SECONDS = 30.0
"""Least time between two epoch lines of the progress log (the first and last are always
written)."""

TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 64,
    "val_batch_size": None,
    "max_epochs": 100,
    "lr": 1e-3,
    "betas": [0.9, 0.999],
    "weight_decay": 0.0,
    "scheduler": {
        "name": "plateau",
        "factor": 0.6,
        "patience": 30,
        "min_lr": 1e-4,
        "epochs": None,
    },
    "grad_clip_value": 0.5,
    "seed": 42,
    "early_stopping_patience": None,
    "checkpoint_every": 10,
    "val_every": 1,
    "max_minutes": None,
    "max_train_crystals": None,
    "max_val_crystals": None,
    "train_split": "train",
    "val_split": "val",
    "find_unused_parameters": False,
    "ema_decay": None,
    "precision": "fp32",
}
"""Training settings and their defaults (the ``train`` section of a model config)."""

PRECISIONS = ("fp32", "fp16", "bf16")
"""``fp32``: full precision (the papers; the default of every config). ``fp16``: CUDA autocast
with a gradient scaler (CUDA only). ``bf16``: autocast to bfloat16 (CUDA or CPU), no scaler.
Autocast covers the loss's forward pass only; MCMC inside a loss (ContinuouSP's contrastive
negatives) switches it off for itself."""

SCHEDULERS = ("plateau", "cosine", "none")
"""``plateau``: the papers' ReduceLROnPlateau on the validation loss (the training loss without a
validation set); ``cosine``: cosine decay from ``lr`` to ``min_lr`` over ``epochs`` epochs
(``max_epochs`` if null), then constant; ``none``: constant ``lr``."""


class TrainingDivergedError(RuntimeError):
    """Raised when a loss becomes NaN or infinite."""


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model
        The trained model (unwrapped from DDP, on its training device; with the moving
        average of its weights when ``ema_decay`` is set).
    epochs
        Last finished epoch (1-based; 0 if none ran).
    best_val
        Best validation loss seen (``inf`` if none).
    stop_reason
        ``max_epochs``, ``early_stopping`` or ``time_budget``.
    out_dir
        Where the checkpoints and logs are.
    history
        The per-epoch metrics (as written to ``metrics.jsonl``).
    """

    model: CrystalGenerator
    epochs: int
    best_val: float
    stop_reason: str
    out_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_checkpoint(self) -> Path:
        """Path of ``best.pt``."""
        return self.out_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        """Path of ``last.pt``."""
        return self.out_dir / "last.pt"


# --------------------------------------------------------------------------- configuration


def validate_train_config(train: dict[str, Any]) -> dict[str, Any]:
    """Merge the ``train`` section over :data:`TRAIN_DEFAULTS` and check every value.

    Raises
    ------
    ValueError
        Naming the offending key: unknown keys, non-positive learning rate or batch size,
        an unknown scheduler, a plateau factor outside (0, 1), ...
    """
    unknown = set(train) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown train config keys: {sorted(unknown)}")
    cfg = {**TRAIN_DEFAULTS, **train}
    sched = {**TRAIN_DEFAULTS["scheduler"], **(cfg["scheduler"] or {"name": "none"})}
    cfg["scheduler"] = sched
    problems: list[str] = []

    def positive_int(key: str, value: Any, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{key} must be a positive integer, got {value!r}")

    def positive_number(key: str, value: Any, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            problems.append(f"{key} must be a positive number, got {value!r}")

    positive_int("batch_size", cfg["batch_size"])
    positive_int("val_batch_size", cfg["val_batch_size"], allow_none=True)
    positive_int("max_epochs", cfg["max_epochs"])
    positive_int("checkpoint_every", cfg["checkpoint_every"])
    positive_int("val_every", cfg["val_every"])
    positive_int("early_stopping_patience", cfg["early_stopping_patience"], allow_none=True)
    positive_int("max_train_crystals", cfg["max_train_crystals"], allow_none=True)
    positive_int("max_val_crystals", cfg["max_val_crystals"], allow_none=True)
    positive_number("lr", cfg["lr"])
    positive_number("grad_clip_value", cfg["grad_clip_value"], allow_none=True)
    positive_number("max_minutes", cfg["max_minutes"], allow_none=True)
    ema = cfg["ema_decay"]
    if ema is not None and (
        isinstance(ema, bool) or not isinstance(ema, int | float) or not 0 < ema < 1
    ):
        problems.append(f"ema_decay must be in (0, 1) or null, got {ema!r}")
    if not isinstance(cfg["seed"], int):
        problems.append(f"seed must be an integer, got {cfg['seed']!r}")
    if not (isinstance(cfg["weight_decay"], int | float) and cfg["weight_decay"] >= 0):
        problems.append(f"weight_decay must be >= 0, got {cfg['weight_decay']!r}")
    betas = cfg["betas"]
    if not (len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)):
        problems.append(f"betas must be two numbers in [0, 1), got {betas!r}")
    if cfg["precision"] not in PRECISIONS:
        problems.append(f"precision must be one of {PRECISIONS}, got {cfg['precision']!r}")
    if sched["name"] not in SCHEDULERS:
        problems.append(f"unknown scheduler {sched['name']!r}; expected one of {SCHEDULERS}")
    elif sched["name"] == "plateau":
        if not 0 < float(sched["factor"]) < 1:
            problems.append(f"scheduler.factor must be in (0, 1), got {sched['factor']!r}")
        if not (isinstance(sched["patience"], int) and sched["patience"] >= 0):
            problems.append(f"scheduler.patience must be an integer >= 0, got {sched['patience']}")
        if not float(sched["min_lr"]) >= 0:
            problems.append(f"scheduler.min_lr must be >= 0, got {sched['min_lr']!r}")
    elif sched["name"] == "cosine":
        positive_int("scheduler.epochs", sched["epochs"], allow_none=True)
        if not 0 <= float(sched["min_lr"]) <= float(cfg["lr"]):
            problems.append(
                f"scheduler.min_lr must be in [0, lr = {cfg['lr']}], got {sched['min_lr']!r}"
            )
    if not isinstance(cfg["train_split"], str) or not cfg["train_split"]:
        problems.append(f"train_split must be a split name, got {cfg['train_split']!r}")
    elif cfg["train_split"] == cfg["val_split"]:
        problems.append(f"val_split must differ from train_split ({cfg['train_split']!r})")
    if problems:
        raise ValueError("invalid train config: " + "; ".join(problems))
    return cfg


# --------------------------------------------------------------------------- data


def structures_to_data_list(
    records: Sequence[Any], what: str = "split", property_name: str | None = None
) -> tuple[list[Data], list[tuple[str, str]]]:
    """Convert ``CrystalRecord``-like items (``material_id``, ``structure``) to crystal Data.

    With ``property_name``, each crystal carries that property as ``y`` (NaN where its record
    has no value), for a model with a property head.

    Returns
    -------
    tuple
        The converted crystals and ``(material_id, reason)`` of those that failed.
    """
    data: list[Data] = []
    errors: list[tuple[str, str]] = []
    for record in records:
        try:
            item = structure_to_data(record.structure, material_id=record.material_id)
        except Exception as exc:  # one bad crystal does not stop the split
            errors.append((str(record.material_id), f"{what}: {exc}"))
            continue
        if property_name:
            value = (getattr(record, "properties", None) or {}).get(property_name)
            item.y = torch.tensor([float("nan") if value is None else float(value)])
        data.append(item)
    return data, errors


def load_training_data(
    dataset: str,
    train_cfg: dict[str, Any],
    limit: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    property_name: str | None = None,
) -> tuple[list[Data], list[Data], list[tuple[str, str]]]:
    """Load the training and validation splits as crystal Data lists.

    ``limit`` caps both splits (for quick runs); otherwise ``max_train_crystals`` /
    ``max_val_crystals`` of the config apply. The splits are the config's ``train_split``
    (``train``) and ``val_split`` (``val``; none when null). ``property_name`` attaches that
    property to every crystal as ``y`` (for a property head).
    """
    from generators.data import load_split

    n_train = limit or train_cfg.get("max_train_crystals")
    n_val = limit or train_cfg.get("max_val_crystals")
    name = train_cfg.get("train_split") or "train"
    train_split = load_split(dataset, name, data_dir=data_dir, limit=n_train, progress=progress)
    errors = [(e.material_id, f"train: {e.reason}") for e in train_split.errors]
    train_data, bad = structures_to_data_list(train_split.records, "train", property_name)
    errors += bad
    val_data: list[Data] = []
    if train_cfg.get("val_split"):
        val_split = load_split(
            dataset, train_cfg["val_split"], data_dir=data_dir, limit=n_val, progress=progress
        )
        errors += [(e.material_id, f"val: {e.reason}") for e in val_split.errors]
        val_data, bad = structures_to_data_list(val_split.records, "val", property_name)
        errors += bad
    return train_data, val_data, errors


# --------------------------------------------------------------------------- helpers


def choose_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def code_version() -> str:
    """``git describe`` of the checkout (with ``-dirty``), else the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except Exception:
        try:
            from importlib.metadata import version

            return f"dftloop {version('dftloop')}"
        except Exception:
            return "unknown"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global state libraries use)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The random states of torch, numpy, python (and CUDA), checkpoint-safe types only."""
    np_state = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    legacy = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    np.random.set_state(legacy)  # noqa: NPY002
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def _distributed_context() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


class _LossModule(torch.nn.Module):
    """Wraps ``training_loss`` as ``forward`` so that DDP synchronises the gradients."""

    def __init__(self, model: CrystalGenerator) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        return self.model.training_loss(batch, epoch)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a checkpoint dict (no model built).

    Parameters
    ----------
    path
        A checkpoint file or a registered model name (:mod:`generators.model_zoo`; its sha256
        is verified).

    Raises
    ------
    FileNotFoundError
        If the file does not exist and no model is registered under that name.
    generators.model_zoo.ChecksumError
        If a registered checkpoint's sha256 does not match its card.
    ValueError
        If the file is not a ``dftloop-checkpoint/1`` file.
    """
    from generators.model_zoo import resolve_checkpoint

    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a dftloop checkpoint (cannot be loaded: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path} is not a dftloop checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    return payload


def load_checkpoint(
    path: str | os.PathLike[str],
    expect_model: str | None = None,
    expect_dataset: str | None = None,
    device: str | torch.device | None = "cpu",
    model_cls: type[CrystalGenerator] | None = None,
    averaged: bool = True,
) -> tuple[CrystalGenerator, dict[str, Any]]:
    """Rebuild the model of a checkpoint.

    Parameters
    ----------
    path
        A ``last.pt`` / ``best.pt`` written by the trainer, an exported checkpoint, or a
        registered model name (``dftloop models list``).
    expect_model, expect_dataset
        If given, a checkpoint of another model or dataset is rejected.
    device
        Where to put the model.
    model_cls
        Build with this class instead of the registry's (models defined outside the registry).
    averaged
        Load the moving average of the weights when the run kept one (``train.ema_decay``);
        ``False`` loads the optimiser's last weights.

    Returns
    -------
    tuple
        The model (in eval mode) and the checkpoint's metadata (everything but the weights
        and optimiser states).

    Raises
    ------
    ValueError
        For a non-checkpoint file or an unexpected model/dataset.
    """
    from generators.model_zoo import resolve_checkpoint

    name = str(path)
    path = resolve_checkpoint(path)
    payload = read_checkpoint(path)
    if expect_model is not None and payload["model"] != expect_model:
        raise ValueError(
            f"{path} is a checkpoint of model {payload['model']!r}, not {expect_model!r}"
        )
    if expect_dataset is not None and payload["dataset"] != expect_dataset:
        raise ValueError(
            f"{path} is a checkpoint for dataset {payload['dataset']!r}, not {expect_dataset!r}"
        )
    cls = model_cls or model_class(payload["model"])
    model = cls(payload["config"]["model"])
    use_average = averaged and payload.get("ema_state_dict") is not None
    model.load_state_dict(payload["ema_state_dict" if use_average else "state_dict"])
    model.to(choose_device(str(device) if device is not None else None)).eval()
    weights = {"state_dict", "ema_state_dict", "ema", "optimizer", "scheduler"}
    meta = {k: v for k, v in payload.items() if k not in weights}
    meta["path"] = str(path)
    if name != str(path):
        meta["registry_name"] = name
    meta["weights"] = "average" if use_average else "last"
    return model, meta


# --------------------------------------------------------------------------- training


def train(
    model_name: str,
    dataset: str,
    config_name: str = "cpu-small",
    out_dir: str | os.PathLike[str] | None = None,
    *,
    resume: str | os.PathLike[str] | None = None,
    max_minutes: float | None = None,
    limit: int | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model_name`` on ``dataset`` with a named configuration.

    The configuration's ``train.seed`` seeds the initial weights, the batch order and every
    random draw of training, so the same configuration, data and code give the same weights
    on the same machine and installation (other library builds can round differently).

    Parameters
    ----------
    model_name, dataset, config_name
        What to train (``generators/configs/<model>.yaml``, section ``config_name``).
    out_dir
        Run directory (default ``runs/<model>-<dataset>-<config>``).
    resume
        A checkpoint to continue from: its config, weights, optimiser, scheduler, epoch,
        best validation loss and random states are restored (the configuration file is not
        re-read). ``max_minutes`` still applies.
    max_minutes
        Wall-time budget, overriding the config's.
    limit
        Use only the first ``limit`` crystals of each split.
    device
        ``cpu``, ``cuda``, ``cuda:1``... (default: CUDA if available).
    overrides
        Nested values merged over the configuration (e.g. ``{"train": {"max_epochs": 5}}``).
    data_dir
        Dataset directory (default: see :func:`generators.data.load_split`).
    progress
        Show a progress bar.
    """
    from generators.configs import deep_merge, load_config

    start_state = None
    if resume is not None:
        start_state = read_checkpoint(resume)
        if start_state["model"] != model_name or start_state["dataset"] != dataset:
            raise ValueError(
                f"cannot resume {model_name}/{dataset} from {resume}: it is a "
                f"{start_state['model']}/{start_state['dataset']} checkpoint"
            )
        config = start_state["config"]
        if overrides:
            config = deep_merge(config, overrides)
    else:
        config = load_config(model_name, config_name, dataset, overrides)
    if max_minutes is not None:
        config = deep_merge(config, {"train": {"max_minutes": max_minutes}})
    if limit is not None:  # recorded in the config, so a resumed run sees the same data
        config = deep_merge(
            config, {"train": {"max_train_crystals": limit, "max_val_crystals": limit}}
        )
    train_cfg = validate_train_config(config["train"])
    out = Path(out_dir or Path("runs") / f"{model_name}-{dataset}-{config.get('name', 'run')}")
    model_cfg = config.get("model") or {}
    property_name = model_cfg.get("property") if model_cfg.get("predict_property") else None
    train_data, val_data, errors = load_training_data(
        dataset, train_cfg, None, data_dir, progress, property_name
    )
    for material_id, reason in errors[:20]:
        print(f"skipped {material_id}: {reason}")
    if len(errors) > 20:
        print(f"... and {len(errors) - 20} more skipped crystals")
    model = initial_model(model_name, config)
    return fit(
        model,
        config,
        train_data,
        val_data,
        out,
        dataset=dataset,
        device=device,
        resume_state=start_state,
        progress=progress,
    )


def initial_model(model_name: str, config: dict[str, Any]) -> CrystalGenerator:
    """The network :func:`train` starts from: built after seeding with ``config["train"]["seed"]``.

    Parameters
    ----------
    model_name
        Registered model name (``cdvae``, ``dpcdvae``, ``diffcsp``, ``continuousp``).
    config
        Full configuration with ``train.seed`` and the ``model`` section.

    Returns
    -------
    CrystalGenerator
        The model with the initial weights drawn from the seed (the same on every call).
    """
    seed_everything(int(config["train"]["seed"]))  # the initial weights follow the seed
    return build_model(model_name, config["model"])


def fit(
    model: CrystalGenerator,
    config: dict[str, Any],
    train_data: Sequence[Data],
    val_data: Sequence[Data] | None,
    out_dir: str | os.PathLike[str],
    *,
    dataset: str,
    device: str | None = None,
    resume_state: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    log_every_s: float = PROGRESS_LOG_SECONDS,
) -> TrainResult:
    """Train a model instance on crystal Data lists (the engine behind :func:`train`).

    Progress goes to the ``generators.trainer`` logger at INFO: a line when training starts,
    one per epoch at most every ``log_every_s`` seconds (always the first and the last epoch
    of the run) with the epoch, losses, learning rate, crystals/s and the time left, and the
    reason training stopped.

    Parameters
    ----------
    model
        A freshly built model (its statistics are fitted here unless resuming).
    config
        The resolved configuration (``model``, ``train`` sections, ``name``).
    train_data, val_data
        Crystal Data objects; ``val_data`` empty or ``None`` monitors the training loss.
    out_dir
        Run directory (created).
    dataset
        Dataset name recorded in the checkpoints.
    device
        Device override.
    resume_state
        A checkpoint dict (from :func:`read_checkpoint`) to continue from.
    progress
        Show a progress bar.
    on_epoch_end
        Called with (epoch, metrics) after each epoch (e.g. to stop a test run).
    log_every_s
        Least time between two epoch lines of the progress log (0: every epoch).

    Raises
    ------
    ValueError
        For an empty training set or an invalid configuration.
    TrainingDivergedError
        When a loss turns NaN/inf (nothing is written for that epoch).
    """
    run = _TrainingRun(
        model, config, train_data, val_data, Path(out_dir), dataset, device, resume_state
    )
    return run.fit(progress=progress, on_epoch_end=on_epoch_end, log_every_s=log_every_s)


class _TrainingRun:
    """One call of :func:`fit`: the set-up state and the named steps of the training loop.

    The steps run in this order for every epoch: :meth:`train_one_epoch`, :meth:`validate`
    (on validated epochs), :meth:`finish_epoch` (schedule, metrics line, periodic ``last.pt``);
    :meth:`checkpoint_payload` is what both checkpoints hold.
    """

    def __init__(
        self,
        model: CrystalGenerator,
        config: dict[str, Any],
        train_data: Sequence[Data],
        val_data: Sequence[Data] | None,
        out: Path,
        dataset: str,
        device: str | None,
        resume_state: dict[str, Any] | None,
    ) -> None:
        train_cfg = validate_train_config(config.get("train", {}))
        if len(train_data) == 0:
            raise ValueError(f"{dataset}: the training set is empty; nothing to train on")
        self.model, self.config, self.train_cfg, self.dataset, self.out = (
            model,
            config,
            train_cfg,
            dataset,
            out,
        )
        self.train_data = train_data
        self.val_data = list(val_data or [])
        self._set_up_devices(device)
        self.seed = int(train_cfg["seed"])
        seed_everything(self.seed)
        self._set_up_model(resume_state)
        self._set_up_optimisation()
        self.start_epoch, self.best_val, self.since_best = 1, math.inf, 0
        if resume_state is not None:
            self._restore(resume_state)
        self._set_up_parallel()
        self.batch_size = int(train_cfg["batch_size"])
        self.val_batch_size = int(train_cfg["val_batch_size"] or self.batch_size)
        self.max_epochs = int(train_cfg["max_epochs"])
        budget = train_cfg["max_minutes"]
        self.deadline = time.monotonic() + 60.0 * float(budget) if budget else math.inf
        self.version = code_version()
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ set-up

    def _set_up_devices(self, device: str | None) -> None:
        """Rank, device, process group; the run directory and ``config.json`` (rank 0)."""
        self.rank, self.world, local_rank = _distributed_context()
        self.distributed = self.world > 1
        if device is None and self.distributed and torch.cuda.is_available():
            device = f"cuda:{local_rank}"
        self.dev = choose_device(device)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.dev.type == "cuda" else "gloo")
        self.is_main = self.rank == 0
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.config, indent=2, default=str))

    def _set_up_model(self, resume_state: dict[str, Any] | None) -> None:
        """Statistics (or the checkpoint's weights), device, and the weight average."""
        model = self.model
        if resume_state is None:
            model.fit_statistics(data_list_to_batch(list(self.train_data)))
        else:
            model.load_state_dict(resume_state["state_dict"])
        model.to(self.dev)
        decay = self.train_cfg["ema_decay"]
        self.average = WeightAverage(model, float(decay)) if decay is not None else None
        if self.average is not None and resume_state is not None and resume_state.get("ema"):
            self.average.load_state_dict(resume_state["ema"])

    def _set_up_optimisation(self) -> None:
        """Adam, the learning-rate scheduler, precision (autocast, gradient scaler)."""
        train_cfg = self.train_cfg
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=float(train_cfg["lr"]),
            betas=tuple(float(b) for b in train_cfg["betas"]),
            weight_decay=float(train_cfg["weight_decay"]),
        )
        self.scheduler = build_scheduler(self.optimizer, train_cfg)
        precision = str(train_cfg["precision"])
        if precision == "fp16" and self.dev.type != "cuda":
            raise ValueError(
                f"train.precision fp16 needs a CUDA device, got {self.dev}; use fp32 or bf16"
            )
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    def _restore(self, resume_state: dict[str, Any]) -> None:
        """Optimiser, scheduler, epoch counters and random states of a checkpoint."""
        self.optimizer.load_state_dict(resume_state["optimizer"])
        if self.scheduler is not None and resume_state.get("scheduler"):
            self.scheduler.load_state_dict(resume_state["scheduler"])
        self.start_epoch = int(resume_state["epoch"]) + 1
        self.best_val = float(resume_state["best_val"])
        self.since_best = int(resume_state.get("epochs_since_best", 0))
        set_rng_state(resume_state["rng"])

    def _set_up_parallel(self) -> None:
        """The loss module (wrapped in DDP when distributed) and the distributed sampler."""
        self.loss_module: torch.nn.Module = _LossModule(self.model)
        if self.distributed:
            self.loss_module = torch.nn.parallel.DistributedDataParallel(
                self.loss_module,
                device_ids=[self.dev.index] if self.dev.type == "cuda" else None,
                find_unused_parameters=bool(self.train_cfg["find_unused_parameters"]),
            )
        self.sampler = (
            torch.utils.data.distributed.DistributedSampler(
                list(self.train_data),
                num_replicas=self.world,
                rank=self.rank,
                shuffle=True,
                seed=self.seed,
            )
            if self.distributed
            else None
        )

    # ------------------------------------------------------------------ the loop

    def fit(
        self,
        *,
        progress: bool,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
        log_every_s: float,
    ) -> TrainResult:
        """Run the epochs, write the final ``last.pt`` and return the result."""
        stop_reason = "max_epochs"
        epoch = self.start_epoch - 1
        log = _ProgressLog(self, log_every_s)
        if not self.val_data and self.train_cfg["early_stopping_patience"] is not None:
            logger.warning(
                "%s/%s: no validation split, so early stopping (patience %s) watches the "
                "training loss; a loss whose weights change during training (DP-CDVAE's "
                "mul_cost_coord_epoch) can stop it early: set "
                "train.early_stopping_patience=null to train all %d epochs",
                self.model.name,
                self.dataset,
                self.train_cfg["early_stopping_patience"],
                self.max_epochs,
            )
        bar = tqdm(
            total=self.max_epochs,
            initial=self.start_epoch - 1,
            desc=f"train {self.model.name}/{self.dataset}",
            disable=not (progress and self.is_main),
            unit="epoch",
            mininterval=1.0,
        )
        try:
            for epoch in range(self.start_epoch, self.max_epochs + 1):
                record = self.train_one_epoch(epoch, bar)
                if epoch % int(self.train_cfg["val_every"]) == 0 or epoch == self.max_epochs:
                    self.validate(epoch, record)
                self.finish_epoch(epoch, record)
                bar.update(1)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, record)
                reason = self.stop_reason()
                log.epoch(epoch, record, last=reason is not None or epoch == self.max_epochs)
                if reason is not None:
                    stop_reason = reason
                    break
            else:
                epoch = self.max_epochs
            if self.is_main and epoch >= self.start_epoch:
                save_checkpoint(self.out / "last.pt", self.checkpoint_payload(epoch))
        finally:
            bar.close()
        log.stopped(epoch, stop_reason)
        if self.distributed:
            dist.barrier()
        if self.average is not None:
            self.average.copy_to(self.model)
        return TrainResult(self.model, epoch, self.best_val, stop_reason, self.out, self.history)

    def _loader(self, epoch: int) -> DataLoader:
        """The shuffled training batches of ``epoch`` (seeded by the seed and the epoch)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            return DataLoader(
                list(self.train_data), batch_size=self.batch_size, sampler=self.sampler
            )
        shuffle_gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return DataLoader(
            list(self.train_data), batch_size=self.batch_size, shuffle=True, generator=shuffle_gen
        )

    def train_one_epoch(self, epoch: int, bar: Any) -> dict[str, Any]:
        """One pass over the training set; returns the epoch's metrics record.

        Stops early (mid-epoch) at the wall-time deadline; raises
        :class:`TrainingDivergedError` before the optimiser step of a non-finite loss.
        """
        self.model.train()
        loader = self._loader(epoch)
        sums: dict[str, float] = {}
        crystals = 0
        tic = time.monotonic()
        for batch_number, batch in enumerate(loader):
            batch = batch.to(self.dev)
            terms = self._losses(batch, epoch, batch_number)
            self._step(terms["loss"])
            n = int(batch.num_graphs)
            crystals += n
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
            bar.set_postfix(loss=f"{sums['loss'] / crystals:.4f}", refresh=False)
            if time.monotonic() > self.deadline:
                break
        seconds = time.monotonic() - tic
        return {
            "epoch": epoch,
            "train": {k: v / max(crystals, 1) for k, v in sums.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "crystals_per_s": crystals / seconds if seconds > 0 else None,
        }

    def _losses(self, batch: Batch, epoch: int, batch_number: int) -> dict[str, Tensor]:
        """The loss terms of one batch; a non-finite loss on any rank stops every rank."""
        dev = self.dev
        with (
            torch.autocast(device_type=dev.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        ):
            try:
                terms: dict[str, Tensor] | None = self.loss_module(batch, epoch)
                problem = ""
            except FloatingPointError as exc:  # non-finite values inside the forward
                terms, problem = None, str(exc)
        finite = (
            torch.isfinite(terms["loss"].detach()).float()
            if terms is not None
            else torch.zeros((), device=dev)
        )
        if self.distributed:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            if terms is None:
                what = f"non-finite values in the forward pass: {problem}"
            else:
                values = {k: float(v.detach()) for k, v in terms.items()}
                what = f"non-finite loss: {values}"
            raise TrainingDivergedError(
                f"{self.model.name}/{self.dataset}: epoch {epoch}, batch {batch_number} "
                f"(rank {self.rank}), {what}; training stopped, the last good checkpoints "
                f"in {self.out} are kept"
            )
        assert terms is not None
        return terms

    def _step(self, loss: Tensor) -> None:
        """Backward pass, gradient clipping by value, optimiser step, weight average."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.train_cfg["grad_clip_value"] is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_value_(
                self.model.parameters(), float(self.train_cfg["grad_clip_value"])
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.model)

    def validate(self, epoch: int, record: dict[str, Any]) -> None:
        """Validation loss (averaged weights), plateau step, best loss and ``best.pt``."""
        if self.val_data:
            with self.average.applied(self.model) if self.average is not None else nullcontext():
                val_terms = evaluate_loss(
                    self.model, self.val_data, self.val_batch_size, epoch, self.dev, self.seed
                )
            record["val"] = val_terms
            monitor = val_terms["loss"]
        else:
            monitor = record["train"]["loss"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(monitor)
        improved = monitor < self.best_val
        if improved:
            self.best_val, self.since_best = monitor, 0
        else:
            self.since_best += 1
        record["best_val"] = self.best_val
        if improved and self.is_main:
            save_checkpoint(self.out / "best.pt", self.checkpoint_payload(epoch))

    def finish_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Epoch-wise schedule step, the ``metrics.jsonl`` line and the periodic ``last.pt``."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
            self.scheduler.step()
        self.history.append(record)
        if self.is_main:
            with (self.out / "metrics.jsonl").open("a") as log:
                log.write(json.dumps(record) + "\n")
            if epoch % int(self.train_cfg["checkpoint_every"]) == 0:
                save_checkpoint(self.out / "last.pt", self.checkpoint_payload(epoch))

    def stop_reason(self) -> str | None:
        """``early_stopping`` or ``time_budget`` when training should stop now, else ``None``."""
        patience = self.train_cfg["early_stopping_patience"]
        if patience is not None and self.since_best >= int(patience):
            return "early_stopping"
        if time.monotonic() > self.deadline:
            return "time_budget"
        return None

    def checkpoint_payload(self, epoch_done: int) -> dict[str, Any]:
        """The checkpoint dict after ``epoch_done`` epochs (format ``dftloop-checkpoint/1``)."""
        average = self.average
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.name,
            "dataset": self.dataset,
            "config": self.config,
            "state_dict": self.model.state_dict(),
            "ema_state_dict": (
                average.averaged_state_dict(self.model) if average is not None else None
            ),
            "ema": average.state_dict() if average is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": epoch_done,
            "best_val": self.best_val,
            "epochs_since_best": self.since_best,
            "rng": rng_state(),
            "code_version": self.version,
        }


class _ProgressLog:
    """The training's progress lines on the ``generators.trainer`` logger (rank 0 only)."""

    def __init__(self, run: _TrainingRun, every_s: float) -> None:
        self.run = run
        self.every_s = float(every_s)
        self.enabled = run.is_main
        self.started = time.monotonic()
        self.last_logged: float | None = None
        self.last_val: float | None = None
        if self.enabled:
            resumed = f", resumed after epoch {run.start_epoch - 1}" if run.start_epoch > 1 else ""
            logger.info(
                "training %s/%s on %s: %d training and %d validation crystals, epochs %d-%d%s",
                run.model.name,
                run.dataset,
                run.dev,
                len(run.train_data),
                len(run.val_data),
                run.start_epoch,
                run.max_epochs,
                resumed,
            )

    def epoch(self, epoch: int, record: dict[str, Any], *, last: bool) -> None:
        """Log ``epoch`` if it is the run's first or last, or ``every_s`` passed since a line."""
        if "val" in record:
            self.last_val = float(record["val"]["loss"])
        if not self.enabled:
            return
        now = time.monotonic()
        due = self.last_logged is None or last or now - self.last_logged >= self.every_s
        if not due:
            return
        self.last_logged = now
        run = self.run
        done = epoch - run.start_epoch + 1
        per_epoch = (now - self.started) / max(done, 1)
        eta = min(per_epoch * (run.max_epochs - epoch), max(run.deadline - now, 0.0))
        rate = record.get("crystals_per_s")
        logger.info(
            "%s/%s epoch %d/%d: train loss %.4g, val loss %s, lr %.3g, %s crystals/s, ETA %s",
            run.model.name,
            run.dataset,
            epoch,
            run.max_epochs,
            record["train"].get("loss", math.nan),
            "n/a" if self.last_val is None else f"{self.last_val:.4g}",
            record["lr"],
            "n/a" if rate is None else f"{rate:.1f}",
            format_duration(0.0 if last else eta),
        )

    def stopped(self, epoch: int, reason: str) -> None:
        """Log why training ended and the best monitored loss."""
        if self.enabled:
            logger.info(
                "%s/%s stopped after epoch %d (%s) in %s; best monitored loss %.4g; checkpoints "
                "in %s",
                self.run.model.name,
                self.run.dataset,
                epoch,
                reason,
                format_duration(time.monotonic() - self.started),
                self.run.best_val,
                self.run.out,
            )


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min 05 s"``, ``"3 h 07 min"`` (``"unknown"`` for a non-finite time).

    Parameters
    ----------
    seconds
        A duration.

    Returns
    -------
    str
        The duration in words a log reader takes in at a glance.
    """
    if not math.isfinite(seconds):
        return "unknown"
    total = round(max(seconds, 0.0))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def cosine_factor(epoch: int, epochs: int, min_ratio: float) -> float:
    """Learning-rate factor of the cosine schedule after ``epoch`` completed epochs.

    Parameters
    ----------
    epoch
        Completed epochs (0 before training).
    epochs
        Length of the decay; the factor stays at ``min_ratio`` afterwards.
    min_ratio
        ``min_lr / lr``.

    Returns
    -------
    float
        ``min_ratio + (1 - min_ratio) · (1 + cos(π · min(epoch, epochs) / epochs)) / 2``.
    """
    progress = min(epoch, epochs) / epochs
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, train_cfg: dict[str, Any]
) -> torch.optim.lr_scheduler.ReduceLROnPlateau | torch.optim.lr_scheduler.LambdaLR | None:
    """The learning-rate scheduler of a validated ``train`` section (:data:`SCHEDULERS`).

    Parameters
    ----------
    optimizer
        The optimiser whose learning rate is scheduled.
    train_cfg
        The ``train`` section after :func:`validate_train_config`.

    Returns
    -------
    ReduceLROnPlateau or LambdaLR or None
        ``plateau``: stepped with the monitored loss on validated epochs; ``cosine``: stepped
        after every epoch (:func:`cosine_factor` over ``scheduler.epochs``, ``max_epochs`` when
        null); ``none``: ``None``.
    """
    sched = train_cfg["scheduler"]
    if sched["name"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            factor=float(sched["factor"]),
            patience=int(sched["patience"]),
            min_lr=float(sched["min_lr"]),
        )
    if sched["name"] == "cosine":
        epochs = int(sched["epochs"] or train_cfg["max_epochs"])
        min_ratio = float(sched["min_lr"]) / float(train_cfg["lr"])
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: cosine_factor(epoch, epochs, min_ratio)
        )
    return None


@torch.no_grad()
def evaluate_loss(
    model: CrystalGenerator,
    data: Sequence[Data],
    batch_size: int,
    epoch: int,
    device: torch.device,
    seed: int = 0,
) -> dict[str, float]:
    """Crystal-weighted mean of ``validation_loss`` over ``data``.

    The random draws (time steps, noise) use a fixed seed inside a forked RNG, so the
    validation loss of two epochs is comparable and training randomness is unaffected.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + 7919)
        for batch in DataLoader(list(data), batch_size=batch_size, shuffle=False):
            batch = batch.to(device)
            terms = model.validation_loss(batch, epoch)
            n = int(batch.num_graphs)
            count += n
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
    model.train(was_training)
    return {k: v / max(count, 1) for k, v in sums.items()}


__all__ = [
    "CHECKPOINT_FORMAT",
    "TRAIN_DEFAULTS",
    "TrainResult",
    "TrainingDivergedError",
    "choose_device",
    "evaluate_loss",
    "fit",
    "initial_model",
    "load_checkpoint",
    "read_checkpoint",
    "train",
    "validate_train_config",
]
