"""Prefect UI artifacts: metrics table, per-structure table, ΔE histogram, store location.

Where the relaxations ran at ``p ≠ 0`` the per-structure table and the histogram are of ΔH, the
enthalpy ``H = E + pV`` per atom (the rows' ``energy_quantity``), and their labels say so.

Prefect 3.8.8's ``create_image_artifact`` takes an image *URL* only, and a file path on the
worker is not a URL the browser can open. The histogram is therefore published as a markdown
artifact that embeds the PNG as a ``data:image/png;base64`` URI (the UI renders it), and the PNG
file is also written to ``<DFTLOOP_HOME>/reports/<run>/`` (path given in the artifact).
"""

from __future__ import annotations

import base64
import csv
import io
import math
import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

PER_STRUCTURE_COLUMNS = (
    "structure_id",
    "formula",
    "status",
    "delta_e_mev_per_atom",
    "rmsd",
    "delta_volume_frac",
    "dft_delta_e_mev_per_atom",
    "dft_rmsd",
    "error",
)


def artifact_key(*parts: str) -> str:
    """Return a valid artifact key (lowercase letters, digits and dashes) from ``parts``."""
    key = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", key)).strip("-")


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 4)
    return value


def table_rows(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """Keep ``columns`` of each row (missing ones ``None``), floats rounded to 4 decimals."""
    return [{c: _cell(row.get(c)) for c in columns} for row in rows]


def energy_labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Labels of the per-structure table and the histogram: ΔE, or ΔH at ``p ≠ 0``.

    ΔH (enthalpy ``H = E + pV`` per atom) where any row's relaxation ran at ``p ≠ 0``, the rule of
    the nightly table and the main job's report
    (:func:`analysis.stability_experiment.energy_quantity`).

    Parameters
    ----------
    rows
        Per-structure rows of ``flows.tasks.analyze_task`` (``energy_quantity``,
        ``pressure_gpa``).

    Returns
    -------
    dict
        ``quantity`` (``"E"`` or ``"H"``), ``table_description``, ``xlabel``, ``title`` (after
        the run's prefix), ``heading`` (of the markdown artifact) and ``description`` (of the
        histogram artifact).
    """
    from analysis.stability_experiment import energy_quantity, pressures

    q = energy_quantity(rows)
    drop = "energy drop"
    if q == "H":
        at = ", ".join(f"{p:g}" for p in pressures(rows) if p)
        drop = f"enthalpy drop (H = E + pV per atom at {f'{at} GPa' if at else 'p ≠ 0'})"
    return {
        "quantity": q,
        "table_description": f"Per-structure Δ{q} (meV/atom, initial − relaxed), RMSD and ΔV"
        + ("" if q == "E" else f"; Δ{q} is the {drop}"),
        "xlabel": f"Δ{q} = {q}(initial) − {q}(relaxed), meV/atom",
        "title": f"Δ{q}",
        "heading": f"Δ{q} histogram",
        "description": f"Histogram of the {drop} on relaxation",
    }


def histogram_png(values: list[float], xlabel: str, title: str) -> bytes:
    """Return a PNG histogram of ``values`` (matplotlib, Agg backend).

    Parameters
    ----------
    values
        Finite numbers; an empty list gives an empty plot that says so.
    xlabel, title
        Axis label and title.

    Returns
    -------
    bytes
        The PNG file content.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    if values:
        ax.hist(values, bins=min(30, max(5, len(values) // 2)), color="#3465a4")
        ax.set_ylabel("structures")
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def publish_run_artifacts(
    prefix: str,
    metrics: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    store_info: dict[str, Any],
    report_dir: Path,
) -> dict[str, str]:
    """Publish the four artifacts of a generate-and-relax/analyze run.

    Parameters
    ----------
    prefix
        Key prefix (e.g. ``"dataset-perov-5"``); keys are ``<prefix>-metrics``,
        ``<prefix>-per-structure``, ``<prefix>-delta-e-histogram``, ``<prefix>-store``.
    metrics
        ``MetricResult.to_dict()`` outputs (name, value, counts, ...).
    rows
        Per-structure rows of ``flows.tasks.analyze_task``.
    store_info
        ``ResultStore.describe()``.
    report_dir
        Where the PNG and the two tables (``metrics.csv``, ``per_structure.csv``) are written.

    Returns
    -------
    dict
        ``{artifact kind: key}``, ``histogram_png``, ``metrics_csv`` and ``per_structure_csv``
        (the file paths).
    """
    keys = {
        "metrics": artifact_key(prefix, "metrics"),
        "per_structure": artifact_key(prefix, "per-structure"),
        "histogram": artifact_key(prefix, "delta-e-histogram"),
        "store": artifact_key(prefix, "store"),
    }
    metric_rows = [
        {
            "metric": m["name"],
            "value": _cell(m.get("value")),
            "counts": ", ".join(f"{k}={v}" for k, v in (m.get("counts") or {}).items()),
            "description": m.get("description", ""),
        }
        for m in metrics
    ]
    create_table_artifact(metric_rows, key=keys["metrics"], description="Stability metrics")
    labels = energy_labels(rows)
    create_table_artifact(
        table_rows(rows, PER_STRUCTURE_COLUMNS),
        key=keys["per_structure"],
        description=labels["table_description"],
    )
    values = [
        float(r["delta_e_mev_per_atom"])
        for r in rows
        if r.get("delta_e_mev_per_atom") is not None
        and math.isfinite(float(r["delta_e_mev_per_atom"]))
    ]
    png = histogram_png(values, labels["xlabel"], f"{prefix}: {labels['title']}")
    report_dir.mkdir(parents=True, exist_ok=True)
    png_path = report_dir / "delta_e_histogram.png"
    png_path.write_bytes(png)
    metrics_csv = write_csv(report_dir / "metrics.csv", metric_rows)
    rows_csv = write_csv(report_dir / "per_structure.csv", table_rows(rows, PER_STRUCTURE_COLUMNS))
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    create_markdown_artifact(
        f"### {labels['heading']} ({len(values)} structures)\n\n"
        f"![delta-e histogram]({data_uri})\n\nPNG file: `{png_path}`\n",
        key=keys["histogram"],
        description=labels["description"],
    )
    lines = ["### Where the documents are", "", "| store | type | location |", "|---|---|---|"]
    for role in ("docs", "data"):
        entry = store_info.get(role, {})
        location = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "type")
        lines.append(f"| {role} | {entry.get('type', '?')} | {location} |")
    counts = store_info.get("counts") or {}
    if counts:
        lines += ["", "Documents: " + ", ".join(f"{k}: {v}" for k, v in counts.items())]
    lines += ["", "List or export them with `dftloop results list` / `dftloop results export`."]
    create_markdown_artifact("\n".join(lines), key=keys["store"], description="Result store")
    return {
        **keys,
        "histogram_png": str(png_path),
        "metrics_csv": str(metrics_csv),
        "per_structure_csv": str(rows_csv),
    }


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts with the same keys) to a CSV file and return its path."""
    columns = list(rows[0]) if rows else []
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
