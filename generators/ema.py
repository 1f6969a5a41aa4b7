"""Exponential moving average (EMA) of a model's weights during training.

The trainer keeps, beside the weights Adam moves, their running average

    w̄ ← d_n · w̄ + (1 − d_n) · w,    d_n = min(d, (1 + n) / (10 + n))

after every optimiser step n (the warm-up d_n lets the average forget the random initial weights
quickly). The averaged weights are the ones validated, checkpointed for sampling and returned.
Buffers (fitted lattice statistics and the like) are not averaged: they are copied.

Not part of the four papers' training recipes: an option (``train.ema_decay``, off by default)
for short runs at a high learning rate, whose last iterate is noisy (docs/cdvae.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class WeightAverage:
    """The EMA of a model's floating-point parameters.

    Parameters
    ----------
    model
        The model whose parameters are averaged (the average starts at its current weights).
    decay
        The decay d in (0, 1), e.g. 0.999 (an average over about 1 / (1 − d) steps).

    Raises
    ------
    ValueError
        If ``decay`` is not in (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().clone()
            for name, p in model.named_parameters()
            if p.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the model's current parameters (after an optimiser step)."""
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), 1.0 - decay)

    def averaged_state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's state dict with the averaged parameters (buffers as in ``model``)."""
        return {k: self.shadow.get(k, v).detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the averaged ones."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name])

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Run a block with the averaged parameters in ``model``, then restore its own."""
        saved = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(saved[name])

    def state_dict(self) -> dict[str, object]:
        """What a checkpoint stores to resume the average."""
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore the average from :meth:`state_dict` (tensors moved to the shadow's device).

        Raises
        ------
        ValueError
            If the stored average is of other parameters than this model's.
        """
        shadow = state["shadow"]
        assert isinstance(shadow, dict)
        if set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) ^ set(shadow))[:5]
            raise ValueError(f"the stored weight average does not fit this model: {missing}")
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
        self.updates = int(state["updates"])  # type: ignore[call-overload]
