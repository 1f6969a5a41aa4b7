"""Plots of the stability analysis: ΔE histograms per model and ΔE versus RMSD.

Drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display needed), and
saved as PNG. ``None``/NaN values are left out; the legend says how many values each model has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_COLOURS = ("#3465a4", "#cc0000", "#4e9a06", "#f57900", "#75507b", "#c4a000", "#555753")


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array(
        [float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=float
    )


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_delta_e_histograms(
    per_model: Mapping[str, Sequence[float | None]],
    path: str | Path,
    *,
    xlabel: str = "ΔE (meV/atom)",
    title: str | None = None,
    bins: int | None = None,
) -> Path:
    """Overlaid histograms of ΔE (or any per-structure quantity), one per model, shared bins.

    Parameters
    ----------
    per_model
        Model name -> values (``None``/NaN are left out).
    path
        Output PNG file (parent directories are created).
    xlabel
        Label of the x axis.
    title
        Plot title.
    bins
        Number of bins (default: from the total count, between 5 and 40).

    Returns
    -------
    Path
        The written PNG.
    """
    data = {model: _finite(values) for model, values in per_model.items()}
    fig = Figure(figsize=(6.0, 3.8), dpi=100)
    ax = fig.add_subplot()
    everything = np.concatenate([v for v in data.values() if v.size] or [np.empty(0)])
    if everything.size:
        n_bins = bins or int(min(40, max(5, np.sqrt(everything.size) * 1.5)))
        low, high = float(everything.min()), float(everything.max())
        if low == high:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, n_bins + 1)
        for k, (model, values) in enumerate(data.items()):
            colour = _COLOURS[k % len(_COLOURS)]
            if values.size:
                label = f"{model} (n={values.size}, mean={values.mean():.1f})"
            else:
                label = f"{model} (n=0)"
            ax.hist(values, bins=edges, alpha=0.45, color=colour, label=label)
            if values.size:
                ax.axvline(values.mean(), color=colour, linestyle="--", linewidth=1)
        ax.set_ylabel("structures")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_delta_e_vs_rmsd(
    per_model: Mapping[str, Sequence[tuple[float | None, float | None]]],
    path: str | Path,
    *,
    title: str | None = None,
    xlabel: str = "RMSD to relaxed (normalised, StructureMatcher)",
    ylabel: str = "ΔE (meV/atom)",
) -> Path:
    """Scatter of ΔE against RMSD, one colour per model.

    Parameters
    ----------
    per_model
        Model name -> ``(delta_e, rmsd)`` pairs; pairs with a ``None``/NaN member are left out.
    path
        Output PNG file.
    title
        Plot title.
    xlabel, ylabel
        Axis labels.

    Returns
    -------
    Path
        The written PNG.
    """
    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    ax = fig.add_subplot()
    n_points = 0
    for k, (model, pairs) in enumerate(per_model.items()):
        points = np.array(
            [
                (float(de), float(r))
                for de, r in pairs
                if de is not None
                and r is not None
                and math.isfinite(float(de))
                and math.isfinite(float(r))
            ],
            dtype=float,
        ).reshape(-1, 2)
        n_points += len(points)
        ax.scatter(
            points[:, 1],
            points[:, 0],
            s=14,
            alpha=0.7,
            color=_COLOURS[k % len(_COLOURS)],
            label=f"{model} (n={len(points)})",
        )
    if n_points:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return _save(fig, path)
