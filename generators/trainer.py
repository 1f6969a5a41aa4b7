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
    if problems:
        raise ValueError("invalid train config: " + "; ".join(problems))
    return cfg


# --------------------------------------------------------------------------- data


def structures_to_data_list(
    records: Sequence[Any], what: str = "split"
) -> tuple[list[Data], list[tuple[str, str]]]:
    """Convert ``CrystalRecord``-like items (``material_id``, ``structure``) to crystal Data.

    Returns
    -------
    tuple
        The converted crystals and ``(material_id, reason)`` of those that failed.
    """
    data: list[Data] = []
    errors: list[tuple[str, str]] = []
    for record in records:
        try:
            data.append(structure_to_data(record.structure, material_id=record.material_id))
        except Exception as exc:  # one bad crystal does not stop the split
            errors.append((str(record.material_id), f"{what}: {exc}"))
    return data, errors


def load_training_data(
    dataset: str,
    train_cfg: dict[str, Any],
    limit: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[list[Data], list[Data], list[tuple[str, str]]]:
    """Load the training and validation splits as crystal Data lists.

    ``limit`` caps both splits (for quick runs); otherwise ``max_train_crystals`` /
    ``max_val_crystals`` of the config apply.
    """
    from generators.data import load_split

    n_train = limit or train_cfg.get("max_train_crystals")
    n_val = limit or train_cfg.get("max_val_crystals")
    train_split = load_split(dataset, "train", data_dir=data_dir, limit=n_train, progress=progress)
    errors = [(e.material_id, f"train: {e.reason}") for e in train_split.errors]
    train_data, bad = structures_to_data_list(train_split.records, "train")
    errors += bad
    val_data: list[Data] = []
    if train_cfg.get("val_split"):
        val_split = load_split(
            dataset, train_cfg["val_split"], data_dir=data_dir, limit=n_val, progress=progress
        )
        errors += [(e.material_id, f"val: {e.reason}") for e in val_split.errors]
        val_data, bad = structures_to_data_list(val_split.records, "val")
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
    train_data, val_data, errors = load_training_data(dataset, train_cfg, None, data_dir, progress)
    for material_id, reason in errors[:20]:
        print(f"skipped {material_id}: {reason}")
    if len(errors) > 20:
        print(f"... and {len(errors) - 20} more skipped crystals")
    model = build_model(model_name, config["model"])
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
) -> TrainResult:
    """Train a model instance on crystal Data lists (the engine behind :func:`train`).

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

    Raises
    ------
    ValueError
        For an empty training set or an invalid configuration.
    TrainingDivergedError
        When a loss turns NaN/inf (nothing is written for that epoch).
    """
    train_cfg = validate_train_config(config.get("train", {}))
    if len(train_data) == 0:
        raise ValueError(f"{dataset}: the training set is empty; nothing to train on")
    val_data = list(val_data or [])
    rank, world, local_rank = _distributed_context()
    distributed = world > 1
    if device is None and distributed and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    dev = choose_device(device)
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    is_main = rank == 0
    out = Path(out_dir)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2, default=str))

    seed = int(train_cfg["seed"])
    seed_everything(seed)
    if resume_state is None:
        model.fit_statistics(data_list_to_batch(list(train_data)))
    else:
        model.load_state_dict(resume_state["state_dict"])
    model.to(dev)
    average = (
        WeightAverage(model, float(train_cfg["ema_decay"]))
        if train_cfg["ema_decay"] is not None
        else None
    )
    if average is not None and resume_state is not None and resume_state.get("ema"):
        average.load_state_dict(resume_state["ema"])

    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=float(train_cfg["lr"]),
        betas=tuple(float(b) for b in train_cfg["betas"]),
        weight_decay=float(train_cfg["weight_decay"]),
    )
    scheduler = build_scheduler(optimizer, train_cfg)
    precision = str(train_cfg["precision"])
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError(f"train.precision fp16 needs a CUDA device, got {dev}; use fp32 or bf16")
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    start_epoch, best_val, since_best = 1, math.inf, 0
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        if scheduler is not None and resume_state.get("scheduler"):
            scheduler.load_state_dict(resume_state["scheduler"])
        start_epoch = int(resume_state["epoch"]) + 1
        best_val = float(resume_state["best_val"])
        since_best = int(resume_state.get("epochs_since_best", 0))
        set_rng_state(resume_state["rng"])

    loss_module: torch.nn.Module = _LossModule(model)
    if distributed:
        loss_module = torch.nn.parallel.DistributedDataParallel(
            loss_module,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=bool(train_cfg["find_unused_parameters"]),
        )
    sampler = (
        torch.utils.data.distributed.DistributedSampler(
            list(train_data), num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
        if distributed
        else None
    )
    batch_size = int(train_cfg["batch_size"])
    val_batch_size = int(train_cfg["val_batch_size"] or batch_size)
    max_epochs = int(train_cfg["max_epochs"])
    budget = train_cfg["max_minutes"]
    deadline = time.monotonic() + 60.0 * float(budget) if budget else math.inf
    version = code_version()
    history: list[dict[str, Any]] = []
    stop_reason = "max_epochs"
    epoch = start_epoch - 1

    def checkpoint_payload(epoch_done: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model.name,
            "dataset": dataset,
            "config": config,
            "state_dict": model.state_dict(),
            "ema_state_dict": (average.averaged_state_dict(model) if average is not None else None),
            "ema": average.state_dict() if average is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch_done,
            "best_val": best_val,
            "epochs_since_best": since_best,
            "rng": rng_state(),
            "code_version": version,
        }

    bar = tqdm(
        total=max_epochs,
        initial=start_epoch - 1,
        desc=f"train {model.name}/{dataset}",
        disable=not (progress and is_main),
        unit="epoch",
        mininterval=1.0,
    )
    try:
        for epoch in range(start_epoch, max_epochs + 1):
            model.train()
            if sampler is not None:
                sampler.set_epoch(epoch)
                loader = DataLoader(list(train_data), batch_size=batch_size, sampler=sampler)
            else:
                shuffle_gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
                loader = DataLoader(
                    list(train_data), batch_size=batch_size, shuffle=True, generator=shuffle_gen
                )
            sums: dict[str, float] = {}
            crystals = 0
            tic = time.monotonic()
            for batch_number, batch in enumerate(loader):
                batch = batch.to(dev)
                with (
                    torch.autocast(device_type=dev.type, dtype=autocast_dtype)
                    if autocast_dtype is not None
                    else nullcontext()
                ):
                    try:
                        terms: dict[str, Tensor] | None = loss_module(batch, epoch)
                        problem = ""
                    except FloatingPointError as exc:  # non-finite values inside the forward
                        terms, problem = None, str(exc)
                finite = (
                    torch.isfinite(terms["loss"].detach()).float()
                    if terms is not None
                    else torch.zeros((), device=dev)
                )
                if distributed:
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                if finite.item() < 1:
                    if terms is None:
                        what = f"non-finite values in the forward pass: {problem}"
                    else:
                        values = {k: float(v.detach()) for k, v in terms.items()}
                        what = f"non-finite loss: {values}"
                    raise TrainingDivergedError(
                        f"{model.name}/{dataset}: epoch {epoch}, batch {batch_number} "
                        f"(rank {rank}), {what}; training stopped, the last good checkpoints "
                        f"in {out} are kept"
                    )
                loss = terms["loss"]
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if train_cfg["grad_clip_value"] is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_value_(
                        model.parameters(), float(train_cfg["grad_clip_value"])
                    )
                scaler.step(optimizer)
                scaler.update()
                if average is not None:
                    average.update(model)
                n = int(batch.num_graphs)
                crystals += n
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
                bar.set_postfix(loss=f"{sums['loss'] / crystals:.4f}", refresh=False)
                if time.monotonic() > deadline:
                    break
            seconds = time.monotonic() - tic
            record: dict[str, Any] = {
                "epoch": epoch,
                "train": {k: v / max(crystals, 1) for k, v in sums.items()},
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
                "crystals_per_s": crystals / seconds if seconds > 0 else None,
            }
            validated = epoch % int(train_cfg["val_every"]) == 0 or epoch == max_epochs
            if validated:
                if val_data:
                    with average.applied(model) if average is not None else nullcontext():
                        val_terms = evaluate_loss(model, val_data, val_batch_size, epoch, dev, seed)
                    record["val"] = val_terms
                    monitor = val_terms["loss"]
                else:
                    monitor = record["train"]["loss"]
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(monitor)
                improved = monitor < best_val
                if improved:
                    best_val, since_best = monitor, 0
                else:
                    since_best += 1
                record["best_val"] = best_val
                if improved and is_main:
                    save_checkpoint(out / "best.pt", checkpoint_payload(epoch))
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                scheduler.step()
            history.append(record)
            if is_main:
                with (out / "metrics.jsonl").open("a") as log:
                    log.write(json.dumps(record) + "\n")
                if epoch % int(train_cfg["checkpoint_every"]) == 0:
                    save_checkpoint(out / "last.pt", checkpoint_payload(epoch))
            bar.update(1)
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
            patience = train_cfg["early_stopping_patience"]
            if patience is not None and since_best >= int(patience):
                stop_reason = "early_stopping"
                break
            if time.monotonic() > deadline:
                stop_reason = "time_budget"
                break
        else:
            epoch = max_epochs
        if is_main and epoch >= start_epoch:
            save_checkpoint(out / "last.pt", checkpoint_payload(epoch))
    finally:
        bar.close()
    if distributed:
        dist.barrier()
    if average is not None:
        average.copy_to(model)
    return TrainResult(model, epoch, best_val, stop_reason, out, history)


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
    "load_checkpoint",
    "read_checkpoint",
    "train",
    "validate_train_config",
]
