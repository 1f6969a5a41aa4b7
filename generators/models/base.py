"""The interface every dftloop generator implements.

The trainer and the sampler only talk to a :class:`CrystalGenerator`; the four models
(DiffCSP, CDVAE, DP-CDVAE, ContinuouSP) differ in how they implement it. Statistics fitted on
the training split (lattice scalers, the distribution of atom counts) are registered buffers so
that a checkpoint carries them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torch_geometric.data import Batch

TASKS = frozenset({"csp", "generate", "reconstruct"})
"""Sampling tasks: crystal structure prediction from a composition, ab-initio generation,
and reconstruction (encode a structure, decode it again)."""


class CrystalGenerator(torch.nn.Module):
    """Base class of the generative models.

    Parameters
    ----------
    config
        The ``model`` section of a resolved configuration (see ``generators/configs``).
    """

    name: ClassVar[str] = "base"
    supports: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.sampling_options: dict[str, Any] = {}

    def configure_sampling(self, **options: Any) -> None:
        """Set sampling options before ``sample_*`` calls (e.g. ``steps``, ``candidates``).

        The sampler passes what the user asked for (number of steps, candidates per
        composition, whether to show the chain's progress bar as ``progress``); a model reads
        the options it knows from ``self.sampling_options`` and ignores the rest. ``None``
        values mean "the model's default" and are dropped.
        """
        self.sampling_options = {k: v for k, v in options.items() if v is not None}

    def fit_statistics(self, train: Batch) -> None:
        """Fit dataset statistics (scalers, atom-count distribution) on the training split.

        Called once by the trainer before the first epoch, never on resume.
        """

    def training_loss(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        """Loss terms of one training batch; ``"loss"`` is the weighted total to minimise."""
        raise NotImplementedError

    def validation_loss(self, batch: Batch, epoch: int) -> dict[str, Tensor]:
        """The paper's validation loss (by default the training loss)."""
        return self.training_loss(batch, epoch)

    def sample_csp(self, template: Batch, generator: torch.Generator | None = None) -> Batch:
        """Predict structures for the compositions (atom types, counts) of ``template``."""
        raise NotImplementedError(f"{self.name} does not do crystal structure prediction")

    def sample_generate(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """Generate ``n`` crystals ab initio."""
        raise NotImplementedError(f"{self.name} does not do ab-initio generation")

    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Encode the crystals of ``batch`` and decode them again."""
        raise NotImplementedError(f"{self.name} does not do reconstruction")

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (CPU for a model without parameters)."""
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")


def require_task(model: CrystalGenerator, task: str) -> None:
    """Raise a clear ``ValueError`` if ``model`` cannot do ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    if task not in model.supports:
        raise ValueError(
            f"model {model.name!r} does not support {task!r} "
            f"(it supports: {', '.join(sorted(model.supports)) or 'nothing'})"
        )
