"""Tables, files and Prefect artifacts of the stability experiment.

The report directory ``<home>/reports/experiment/<run>/`` holds ``rows.json`` (one row per
generated structure), ``summary.json`` (per-model summaries, model differences, S.U.N. rates,
reference hull, settings, timings), ``report.md`` (the tables in markdown, with the plots) and the
PNG plots. The same tables are published as Prefect table artifacts and the plots as a markdown
artifact with the PNGs embedded as ``data:`` URIs (Prefect 3.8.8's image artifact takes a URL
only, see :mod:`flows.artifacts`).

The paper's figure is DP-CDVAE's abstract (``../shared/reference/metrics.md`` §6.4): on carbon,
ΔE between generated and DFT-relaxed structures is on average 68.1 meV/atom lower for DP-CDVAE
than for CDVAE (100 structures per model). The per-model values were not retrieved, so only the
difference has a paper column.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

PAPER_DELTA_E_DIFFERENCE_MEV = -68.1
"""DP-CDVAE − CDVAE mean ΔE (DFT, carbon), meV/atom: "68.1 meV/atom lower" (DP-CDVAE abstract)."""

PAPER_SOURCE = (
    "DP-CDVAE (arXiv 2308.02165, Sci. Rep. 2024) abstract, metrics.md §6.4: ΔE 68.1 meV/atom "
    "lower than CDVAE on carbon, 100 DFT-relaxed structures per model; per-model values not "
    "retrieved"
)

QUANTITIES: dict[str, str] = {
    "delta_e_mev_per_atom": "ΔE force field (meV/atom)",
    "dft_delta_e_mev_per_atom": "ΔE DFT (meV/atom)",
    "rmsd": "RMSD force field",
    "dft_rmsd": "RMSD DFT",
    "e_above_hull_eV": "E_hull force field, relaxed (eV/atom)",
    "e_above_hull_generated_eV": "E_hull force field, as generated (eV/atom)",
    "dft_e_above_hull_eV": "E_hull DFT, relaxed (eV/atom)",
    "delta_volume_frac": "ΔV/V force field",
}
"""Summarised per-structure quantities and their table labels."""

ROW_COLUMNS: tuple[str, ...] = (
    "model",
    "structure_id",
    "formula",
    "n_sites",
    "status",
    "delta_e_mev_per_atom",
    "rmsd",
    "e_above_hull_eV",
    "dft_selected",
    "dft_status",
    "dft_delta_e_mev_per_atom",
    "dft_rmsd",
    "dft_e_above_hull_eV",
    "stable",
    "unique",
    "novel",
    "sun",
    "dft_sun",
    "error",
    "dft_error",
)
"""Columns of the per-structure table (``rows.json`` keeps every field)."""


def _num(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, digits)
    return value


def _interval(summary: dict[str, Any], digits: int = 4) -> str:
    low, high = summary.get("ci_low"), summary.get("ci_high")
    if low is None or high is None:
        return ""
    return f"[{low:.{digits}g}, {high:.{digits}g}]"


def summary_table(per_model: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One table row per (model, quantity): n, missing, mean, median, 95 % interval, std.

    Parameters
    ----------
    per_model
        Output of ``analysis.stability.summarize_by_model``.

    Returns
    -------
    list of dict
        Rows for a table artifact (quantities without a value in any model are left out).
    """
    rows = []
    present = {k for by_key in per_model.values() for k, s in by_key.items() if s.get("n")}
    for model, by_key in per_model.items():
        for key, s in by_key.items():
            if key not in present:  # no model has a value (e.g. DFT quantities without DFT)
                continue
            rows.append(
                {
                    "model": model,
                    "quantity": QUANTITIES.get(key, key),
                    "n": s.get("n"),
                    "n_missing": s.get("n_missing"),
                    "mean": _num(s.get("mean")),
                    "median": _num(s.get("median")),
                    "ci95_of_mean": _interval(s),
                    "std": _num(s.get("std")),
                    "paper": "not retrieved" if key == "dft_delta_e_mev_per_atom" else "",
                }
            )
    return rows


def comparison_table(comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model difference, the paper's figure beside the DFT ΔE difference.

    Parameters
    ----------
    comparisons
        Dicts with ``a``, ``b``, ``key`` and ``result`` (``analysis.stability.compare_models``).

    Returns
    -------
    list of dict
        Rows for a table artifact.
    """
    rows = []
    for c in comparisons:
        r = c["result"]
        paper = ""
        if c["key"] == "dft_delta_e_mev_per_atom" and (c["a"], c["b"]) == ("dpcdvae", "cdvae"):
            paper = f"{PAPER_DELTA_E_DIFFERENCE_MEV}"
        elif c["key"] == "delta_e_mev_per_atom" and (c["a"], c["b"]) == ("dpcdvae", "cdvae"):
            paper = f"({PAPER_DELTA_E_DIFFERENCE_MEV} with DFT, not a force field)"
        rows.append(
            {
                "difference": f"{c['a']} − {c['b']}",
                "quantity": QUANTITIES.get(c["key"], c["key"]),
                "value": _num(r.get("difference")),
                "ci95": _interval(r),
                "p_value": _num(r.get("p_value")),
                "n_a": r.get("n_a"),
                "n_b": r.get("n_b"),
                "paper": paper,
            }
        )
    return rows


def sun_table(sun: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, energy method) S.U.N. rate with its counts.

    Parameters
    ----------
    sun
        ``{label: analysis.sun.sun_rate(...)}``.

    Returns
    -------
    list of dict
        Rows for a table artifact.
    """
    return [
        {
            "model / energies": label,
            "n": r.get("n"),
            "sun_rate": _num(r.get("rate")),
            "n_sun": r.get("n_sun"),
            "sun_rate_strict": _num(r.get("rate_strict")),
            "n_stable": r.get("n_stable"),
            "n_unique": r.get("n_unique"),
            "n_novel": r.get("n_novel"),
            "n_errors": r.get("n_errors"),
        }
        for label, r in sun.items()
    ]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Render table rows as a markdown table (empty string for no rows)."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ["" if row.get(c) is None else str(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_text(reference: dict[str, Any]) -> str:
    """Markdown of the hull references: how chosen, relaxed energies per method, errors."""
    lines = [f"Source: {reference.get('source', '?')}."]
    if reference.get("error"):
        lines.append(f"Not built: {reference['error']}")
    for method in ("force_field", "dft"):
        info = reference.get(method)
        if not info:
            continue
        lines.append("")
        lines.append(
            f"{method.replace('_', ' ')}:"
            + (f" not built: {info['error']}" if info.get("error") else "")
        )
        for rid, e in info.get("entries", {}).items():
            energy = e.get("energy_per_atom_eV")
            value = "none" if energy is None else f"{energy:.4f} eV/atom"
            note = f" ({e['status']}{': ' + e['error'] if e.get('error') else ''})"
            lines.append(f"- {rid}, {e.get('n_sites')} atoms: {value}{note}")
    return "\n".join(lines)


def render_report(summary: dict[str, Any], tables: dict[str, list[dict[str, Any]]]) -> str:
    """The ``report.md`` text: settings, tables, the paper's figure, plots, notes.

    Parameters
    ----------
    summary
        The experiment summary (``summary.json``).
    tables
        ``summary``, ``comparison``, ``sun`` table rows.

    Returns
    -------
    str
        Markdown.
    """
    s = summary
    lines = [
        f"# Stability experiment {s['run']} ({s['dataset']})",
        "",
        f"Models: {', '.join(s['models'])}; n = {s['n']} per model, seed {s['seed']}; "
        f"force field `{s['relaxer']}`; "
        + (
            "no DFT."
            if s["dft"] == "none"
            else f"DFT `{s['dft']}` on {s['dft_per_model']} per model "
            f"(selection `{s['dft_selection']}`)."
        ),
        "",
        "ΔE = E(as generated) − E(relaxed) per atom, both energies from the same method "
        "(force field: its own energies; DFT: a pw.x single point of the generated structure and "
        "the pw.x vc-relax after the force-field pre-relax). RMSD: StructureMatcher(stol=0.5, "
        "angle_tol=10, ltol=0.3), normalised by (V/N)^(1/3). Intervals: 95 % percentile "
        "bootstrap of the mean.",
        "",
        "## Per model",
        "",
        markdown_table(tables["summary"]),
        "",
        "## Model differences (paper: " + PAPER_SOURCE + ")",
        "",
        markdown_table(tables["comparison"]) or "(fewer than two models with values)",
        "",
        "## S.U.N.",
        "",
        markdown_table(tables["sun"]) or "(not computed)",
        "",
        "## Reference hull",
        "",
        reference_text(s.get("reference") or {}),
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{name}]({Path(path).name})" for name, path in s.get("plots", {}).items()]
    lines += ["", "## Settings", "", "```json", json.dumps(s.get("settings"), indent=1), "```"]
    if s.get("model_errors"):
        lines += ["", "## Models that did not finish", ""]
        lines += [f"- {m}: {e}" for m, e in s["model_errors"].items()]
    return "\n".join(lines) + "\n"


def write_report(
    report_dir: Path,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    tables: dict[str, list[dict[str, Any]]],
) -> dict[str, str]:
    """Write ``rows.json``, ``summary.json`` and ``report.md`` into ``report_dir``.

    Returns
    -------
    dict
        ``{"rows": path, "summary": path, "report": path}``.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "rows": report_dir / "rows.json",
        "summary": report_dir / "summary.json",
        "report": report_dir / "report.md",
    }
    paths["rows"].write_text(json.dumps(rows, indent=1, default=str))
    paths["summary"].write_text(json.dumps({**summary, "tables": tables}, indent=1, default=str))
    paths["report"].write_text(render_report(summary, tables))
    return {k: str(v) for k, v in paths.items()}


def publish_experiment_artifacts(
    prefix: str,
    tables: dict[str, list[dict[str, Any]]],
    rows: list[dict[str, Any]],
    plots: dict[str, str],
    report_dir: Path,
) -> dict[str, str]:
    """Publish the experiment's Prefect artifacts; return ``{kind: key}``.

    Keys: ``<prefix>-summary`` (per-model table, paper column), ``<prefix>-comparison`` (model
    differences beside the paper's figure), ``<prefix>-sun``, ``<prefix>-per-structure`` and
    ``<prefix>-plots`` (markdown with the PNGs embedded).
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from flows.artifacts import artifact_key

    keys = {
        kind: artifact_key(prefix, kind)
        for kind in ("summary", "comparison", "sun", "per-structure", "plots")
    }
    create_table_artifact(
        tables["summary"],
        key=keys["summary"],
        description="Per model: ΔE, RMSD, E_hull (mean, median, 95 % bootstrap interval)",
    )
    create_table_artifact(
        tables["comparison"] or [{"difference": "fewer than two models with values"}],
        key=keys["comparison"],
        description="Model differences with bootstrap intervals; paper: " + PAPER_SOURCE,
    )
    create_table_artifact(
        tables["sun"] or [{"model / energies": "not computed"}],
        key=keys["sun"],
        description="S.U.N. rates (MatterGen definition; thresholds in summary.json)",
    )
    create_table_artifact(
        [{c: _num(r.get(c)) for c in ROW_COLUMNS} for r in rows],
        key=keys["per-structure"],
        description="Per generated structure (every field in rows.json)",
    )
    parts = [f"### Stability experiment plots\n\nReport directory: `{report_dir}`\n"]
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f"#### {name}\n\n![{name}](data:image/png;base64,{data})\n\n`{path}`\n")
    create_markdown_artifact("\n".join(parts), key=keys["plots"], description="ΔE plots")
    return keys
