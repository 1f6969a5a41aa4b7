"""The CPU time of a training, as a model card records it, in words.

A card's ``training`` record has ``cpu_minutes`` (GNU time over every segment of the run) or,
when some segment was stopped before GNU time could report, ``cpu_minutes_recorded`` (the
recorded part, a lower bound) and ``epoch_minutes`` (the sum of the epochs' wall times, an
upper bound for a one-thread training). ``benchmarks/zoo_card.py`` writes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cpu_hours_text(training: Mapping[str, Any]) -> str | None:
    """The training's CPU time in hours, exact or as the range the record allows.

    Parameters
    ----------
    training
        A card's ``training`` record.

    Returns
    -------
    str or None
        ``"1.3 CPU h"``, ``"1.0-1.9 CPU h"`` (a lower bound from the recorded segments and the
        epochs' wall time as the upper bound), ``"≥ 1.0 CPU h"`` (no upper bound known), or
        ``None`` when nothing is recorded.

    Examples
    --------
    >>> cpu_hours_text({"cpu_minutes": 75.9})
    '1.3 CPU h'
    >>> cpu_hours_text({"cpu_minutes": None, "cpu_minutes_recorded": 59.2, "epoch_minutes": 116.3})
    '1.0-1.9 CPU h'
    """
    exact = training.get("cpu_minutes")
    if isinstance(exact, int | float):
        return f"{exact / 60:.1f} CPU h"
    low = training.get("cpu_minutes_recorded")
    if not isinstance(low, int | float):
        return None
    high = training.get("epoch_minutes")
    if isinstance(high, int | float) and high >= low:
        return f"{low / 60:.1f}-{high / 60:.1f} CPU h"
    return f"≥ {low / 60:.1f} CPU h"
