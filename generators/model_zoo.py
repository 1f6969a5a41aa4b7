"""Trained checkpoints that ship with dftloop, and the registry that names them.

The registry is a JSON file (``generators/zoo/registry.json``) of *model cards*: a name, the
generator and dataset, the task it was trained for, where the weights are (a file shipped in
``generators/zoo/`` or a URL), their sha256 and size, how they were trained (configuration,
data split hash, epochs, wall and CPU time, final losses) and the test-split metrics measured
with them. ``dftloop models list`` and ``dftloop models show NAME`` print it.

Everything that takes a checkpoint path also takes a registry name: :func:`resolve_checkpoint`
turns either into a local file, verifying the sha256 of a registered file on every load and
downloading (then verifying) a registered URL into the model cache once.

Users add their own cards (e.g. checkpoints trained on a GPU, served from a URL) with a second
registry file named by ``DFTLOOP_MODEL_REGISTRY``; its cards are read after the shipped ones
and replace a shipped card of the same name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from generators.data.cache import file_sha256

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
"""Directory of the shipped registry and checkpoint files."""

REGISTRY_FILE = ZOO_DIR / "registry.json"
"""The shipped registry."""

USER_REGISTRY_ENV = "DFTLOOP_MODEL_REGISTRY"
"""Environment variable naming an extra registry file (its cards replace same-named ones)."""

MODEL_CACHE_ENV = "DFTLOOP_MODEL_CACHE"
"""Environment variable naming the download cache (default: the user cache dir + ``models``)."""


class ChecksumError(ValueError):
    """A checkpoint file's sha256 differs from its registry card's."""


@dataclass(frozen=True)
class ModelCard:
    """One registered checkpoint.

    Attributes
    ----------
    name
        Registry name, e.g. ``diffcsp-perov5-csp``.
    model, dataset, task
        Generator (``diffcsp``...), dataset and the task it samples (``csp``, ``generate``,
        ``reconstruct``).
    sha256, size_bytes
        Checksum and size of the checkpoint file.
    file
        Path of the file relative to the registry file's directory (shipped checkpoints).
    url
        Where to download the file from (checkpoints not shipped in the package).
    description
        One line for ``dftloop models list``.
    training
        How it was trained: config name and values, data split hash, epochs, wall and CPU
        minutes, final train/validation loss, the command.
    metrics
        Measured test-split metrics: a list of rows ``{name, value, n, protocol, command,
        paper, paper_source}``.
    base_dir
        Directory that ``file`` is relative to (the registry file's), not serialised.
    """

    name: str
    model: str
    dataset: str
    task: str
    sha256: str
    size_bytes: int
    file: str | None = None
    url: str | None = None
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    base_dir: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the card as stored in a registry file (without ``base_dir``)."""
        data = asdict(self)
        data.pop("base_dir")
        return {k: v for k, v in data.items() if v is not None}

    def local_file(self) -> Path | None:
        """Return the shipped file's path, or ``None`` for a URL-only card."""
        if self.file is None:
            return None
        return Path(self.base_dir or ZOO_DIR) / self.file


def _read_registry(path: Path) -> list[ModelCard]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"model registry {path} cannot be read: {exc}") from exc
    cards = []
    for entry in raw.get("models", []):
        unknown = set(entry) - {f for f in ModelCard.__dataclass_fields__ if f != "base_dir"}
        if unknown:
            raise ValueError(
                f"model registry {path}: {entry.get('name')!r} has unknown keys {sorted(unknown)}"
            )
        if not entry.get("file") and not entry.get("url"):
            raise ValueError(
                f"model registry {path}: {entry.get('name')!r} has neither a file nor a url"
            )
        cards.append(ModelCard(**entry, base_dir=str(path.parent)))
    return cards


def list_models(registry: str | os.PathLike[str] | None = None) -> list[ModelCard]:
    """Return the registered checkpoints, shipped first, then the user registry's.

    Parameters
    ----------
    registry
        Read only this registry file instead of the shipped one plus ``DFTLOOP_MODEL_REGISTRY``.

    Returns
    -------
    list[ModelCard]
        One card per name (a user card replaces a shipped card of the same name).
    """
    if registry is not None:
        files = [Path(registry)]
    else:
        files = [REGISTRY_FILE]
        extra = os.environ.get(USER_REGISTRY_ENV, "").strip()
        if extra:
            files.append(Path(extra).expanduser())
    cards: dict[str, ModelCard] = {}
    for path in files:
        if path.is_file():
            for card in _read_registry(path):
                cards[card.name] = card
        elif path != REGISTRY_FILE:
            raise ValueError(f"model registry {path} does not exist ({USER_REGISTRY_ENV})")
    return list(cards.values())


def get_card(name: str, registry: str | os.PathLike[str] | None = None) -> ModelCard:
    """Return the card registered as ``name``.

    Raises
    ------
    KeyError
        With the list of registered names when ``name`` is not one of them.
    """
    cards = {card.name: card for card in list_models(registry)}
    if name not in cards:
        known = ", ".join(sorted(cards)) or "none"
        raise KeyError(f"no registered model {name!r}; registered: {known}")
    return cards[name]


def find_card(
    model: str,
    dataset: str,
    task: str | None = None,
    registry: str | os.PathLike[str] | None = None,
) -> ModelCard | None:
    """Return the first registered card of ``model`` on ``dataset`` (and ``task``), or ``None``.

    Parameters
    ----------
    model, dataset
        Generator and dataset names.
    task
        ``csp``, ``generate`` or ``reconstruct``; ``None`` accepts any.
    registry
        Registry file (default: shipped + ``DFTLOOP_MODEL_REGISTRY``; user cards come last
        in the file order but replace shipped ones of the same name).
    """
    for card in list_models(registry):
        if (card.model, card.dataset) == (model, dataset) and task in (None, card.task):
            return card
    return None


def verify_file(path: Path, card: ModelCard) -> Path:
    """Check ``path`` against the card's sha256 and return it.

    Raises
    ------
    ChecksumError
        Naming the model, the file and both checksums.
    """
    found = file_sha256(path)
    if found != card.sha256:
        raise ChecksumError(
            f"checkpoint of {card.name!r} at {path} is corrupt or was replaced: sha256 {found} "
            f"differs from the registry's {card.sha256}; reinstall the package or delete the "
            "file to download it again"
        )
    return path


def model_cache_dir() -> Path:
    """Return the directory downloaded checkpoints are kept in."""
    value = os.environ.get(MODEL_CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path(user_cache_dir("dftloop")) / "models"


def download(card: ModelCard, timeout: float = 60.0) -> Path:
    """Download a URL card's checkpoint into the model cache (once) and verify it.

    Raises
    ------
    ValueError
        For a card without a URL.
    ChecksumError
        When the downloaded bytes do not have the card's sha256 (nothing is kept).
    OSError
        When the download fails (the message names the model and the URL).
    """
    import requests

    if not card.url:
        raise ValueError(f"model {card.name!r} has no url to download from")
    target = model_cache_dir() / f"{card.name}-{card.sha256[:12]}.pt"
    if target.is_file():
        return verify_file(target, card)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as tmp:
        part = Path(tmp.name)
        try:
            with requests.get(card.url, stream=True, timeout=timeout) as response:
                response.raise_for_status()
                for chunk in response.iter_content(1 << 20):
                    tmp.write(chunk)
        except requests.RequestException as exc:
            part.unlink(missing_ok=True)
            raise OSError(f"cannot download model {card.name!r} from {card.url}: {exc}") from exc
    try:
        verify_file(part, card)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    shutil.move(part, target)
    return target


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str], registry: str | os.PathLike[str] | None = None
) -> Path:
    """Turn a checkpoint path or a registry name into a verified local file.

    Parameters
    ----------
    name_or_path
        An existing file (returned as it is), or a registered model name.
    registry
        Registry file to look names up in (default: shipped + ``DFTLOOP_MODEL_REGISTRY``).

    Returns
    -------
    Path
        The checkpoint file; a registered file's sha256 has been verified.

    Raises
    ------
    FileNotFoundError
        When the argument is neither an existing file nor a registered name.
    ChecksumError
        When a registered file's checksum does not match.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    try:
        card = get_card(text, registry)
    except KeyError as exc:
        raise FileNotFoundError(
            f"checkpoint {text!r} is neither a file nor a registered model name "
            f"({exc.args[0]}; `dftloop models list` shows them)"
        ) from None
    local = card.local_file()
    if local is not None and local.is_file():
        return verify_file(local, card)
    if card.url:
        return download(card)
    raise FileNotFoundError(f"model {card.name!r}: its file {local} is missing and it has no url")


def export_checkpoint(
    source: str | os.PathLike[str], target: str | os.PathLike[str], dtype: str = "float32"
) -> dict[str, Any]:
    """Write the small, shippable form of a trainer checkpoint.

    Keeps what sampling needs: the format, model, dataset, configuration, epoch, best
    validation loss, code version and one state dict — the moving average of the weights when
    the run kept one, else the last weights — with floating-point tensors cast to ``dtype``
    (``float32`` or ``bfloat16``). Optimiser, scheduler and random states are dropped, so the
    file cannot be resumed from; the run directory's ``last.pt`` can.

    Parameters
    ----------
    source
        A trainer checkpoint (``best.pt`` / ``last.pt``).
    target
        Output file.
    dtype
        ``float32`` or ``bfloat16``.

    Returns
    -------
    dict
        ``sha256``, ``size_bytes``, ``weights`` (``average`` or ``last``), ``epoch``.
    """
    import torch

    from generators.trainer import read_checkpoint, save_checkpoint

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    payload = read_checkpoint(source)
    averaged = payload.get("ema_state_dict") is not None
    state = payload["ema_state_dict" if averaged else "state_dict"]
    cast = {
        key: (value.to(dtypes[dtype]) if value.is_floating_point() else value).contiguous()
        for key, value in state.items()
    }
    slim = {
        key: payload[key]
        for key in ("format", "model", "dataset", "config", "epoch", "best_val", "code_version")
        if key in payload
    }
    slim["state_dict"] = cast
    slim["weights"] = "average" if averaged else "last"
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, slim)
    return {
        "sha256": file_sha256(out),
        "size_bytes": out.stat().st_size,
        "weights": slim["weights"],
        "epoch": slim.get("epoch"),
    }


__all__ = [
    "ChecksumError",
    "ModelCard",
    "download",
    "export_checkpoint",
    "file_sha256",
    "find_card",
    "get_card",
    "list_models",
    "model_cache_dir",
    "resolve_checkpoint",
    "verify_file",
]
