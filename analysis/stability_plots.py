"""Plots of the stability analysis: ΔE histograms, ΔE versus RMSD, cell size and density.

Drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display needed), and
saved as PNG. ``None``/NaN values are left out; the legend says how many values each model has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def plot_distributions(
    per_model: Mapping[str, Mapping[str, Sequence[float | None]]],
    path: str | Path,
    *,
    reference: str | None = None,
    title: str | None = None,
) -> Path:
    """Cell-size and density distributions of each model beside the test split.

    Parameters
    ----------
    per_model
        ``{model: {"n_sites": [...], "density": [...]}}`` of the structures as generated (the
        test split's own structures under its label).
    path
        Output PNG file.
    reference
        The label of the test split in ``per_model`` (drawn as a filled grey histogram).
    title
        Figure title.

    Returns
    -------
    Path
        The written PNG.
    """
    fig = Figure(figsize=(9.0, 3.8), dpi=100)
    panels = (("n_sites", "atoms per cell", True), ("density", "density (g/cm³)", False))
    for col, (key, label, integer) in enumerate(panels):
        ax = fig.add_subplot(1, 2, col + 1)
        data = {m: _finite(v.get(key, [])) for m, v in per_model.items()}
        everything = np.concatenate([d for d in data.values() if d.size] or [np.empty(0)])
        if not everything.size:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(label)
            continue
        low, high = float(everything.min()), float(everything.max())
        if integer:
            edges = np.arange(np.floor(low) - 0.5, np.ceil(high) + 1.5, 1.0)
        else:
            if low == high:
                low, high = low - 0.5, high + 0.5
            edges = np.linspace(low, high, 26)
        for k, (model, values) in enumerate(data.items()):
            if not values.size:
                continue
            name = f"{model} (n={values.size})"
            if model == reference:
                ax.hist(values, bins=edges, density=True, color="#babdb6", label=name)
            else:
                colour = _COLOURS[k % len(_COLOURS)]
                ax.hist(
                    values,
                    bins=edges,
                    density=True,
                    histtype="step",
                    linewidth=1.6,
                    color=colour,
                    label=name,
                )
        ax.set_xlabel(label)
        ax.set_ylabel("fraction per unit")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def experiment_plots(
    rows: Sequence[Mapping[str, Any]],
    models: Sequence[str],
    report_dir: str | Path,
    *,
    reference: str | None = None,
    quantity: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The stability experiment's plots: ΔE histograms, ΔE versus RMSD, distributions.

    Parameters
    ----------
    rows
        Per-structure rows (:mod:`analysis.stability_rows`).
    models
        Model labels, in legend order (the test split among them when present).
    report_dir
        Directory of the PNG files.
    reference
        Label of the test-split rows (the reference of the distribution plot).
    quantity
        ``{"force_field": "E" | "H", "dft": ...}``: names the energy axis (ΔE or ΔH).

    Returns
    -------
    dict
        ``{plot title: PNG path}``; the DFT plots only when there are DFT values.
    """
    from analysis.stability_rows import pairs_of, values_of

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    quantity = quantity or {}
    by_model = {m: [r for r in rows if r.get("model") == m] for m in models}
    plots: dict[str, str] = {}
    for label, method, de, rmsd in (
        ("force field", "force_field", "delta_e_mev_per_atom", "rmsd"),
        ("DFT", "dft", "dft_delta_e_mev_per_atom", "dft_rmsd"),
    ):
        per_model = {m: values_of(rs, de) for m, rs in by_model.items()}
        if label == "DFT" and not any(per_model.values()):
            continue
        symbol = f"Δ{quantity.get(method, 'E')}"
        tag = "ff" if label == "force field" else "dft"
        plots[f"{symbol} histogram ({label})"] = str(
            plot_delta_e_histograms(
                per_model,
                report_dir / f"delta_e_{tag}_histogram.png",
                xlabel=f"{symbol} = value(generated) − value(relaxed), {label}, meV/atom",
                title=f"{symbol} per model ({label})",
            )
        )
        plots[f"{symbol} vs RMSD ({label})"] = str(
            plot_delta_e_vs_rmsd(
                {m: pairs_of(rs, de, rmsd) for m, rs in by_model.items()},
                report_dir / f"delta_e_vs_rmsd_{tag}.png",
                title=f"{symbol} versus RMSD ({label})",
                ylabel=f"{symbol} (meV/atom)",
            )
        )
    plots["cell size and density"] = str(
        plot_distributions(
            {
                m: {
                    "n_sites": [r.get("n_sites") for r in rs],
                    "density": [r.get("density") for r in rs],
                }
                for m, rs in by_model.items()
            },
            report_dir / "distributions.png",
            reference=reference,
            title="Generated structures against the test split",
        )
    )
    return plots
