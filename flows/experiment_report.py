"""Prefect artifacts of the stability experiment.

The tables and text are made by :mod:`analysis.stability_report`; they are published here as
Prefect table artifacts, and the plots as a markdown artifact with the PNGs embedded as
``data:`` URIs (Prefect 3.8.8's image artifact takes a URL only, see :mod:`flows.artifacts`).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from analysis.stability_report import PAPER_SOURCE, ROW_COLUMNS, markdown_table
from analysis.stability_rows import public_row

ARTIFACT_KINDS: tuple[str, ...] = (
    "summary",
    "structure",
    "comparison",
    "sun",
    "dft-vs-force-field",
    "dft-ratio-estimate",
    "per-structure",
    "plots",
)
"""Artifact key suffixes: ``<prefix>-<kind>``."""


def _cell(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) and value == value else value


def publish_experiment_artifacts(
    prefix: str,
    tables: dict[str, list[dict[str, Any]]],
    rows: list[dict[str, Any]],
    plots: dict[str, str],
    report_dir: Path,
) -> dict[str, str]:
    """Publish the experiment's Prefect artifacts; return ``{kind: key}``.

    Keys: ``<prefix>-summary`` (per-model table, paper column), ``<prefix>-structure`` (match
    rates, ΔV_rms, space groups, carbon bonding), ``<prefix>-comparison`` (model differences
    beside the paper's figure), ``<prefix>-sun``, ``<prefix>-dft-vs-force-field`` (the two
    methods' ΔE on the same structures), ``<prefix>-dft-ratio-estimate`` (each row's DFT mean
    over the eligible structures and the differences), ``<prefix>-per-structure`` and
    ``<prefix>-plots``
    (markdown with the PNGs embedded).
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from flows.artifacts import artifact_key

    keys = {kind: artifact_key(prefix, kind) for kind in ARTIFACT_KINDS}
    create_table_artifact(
        tables["summary"],
        key=keys["summary"],
        description="Per model and the test split: ΔE (ΔH), RMSD, E_hull (mean, median, 95 % "
        "bootstrap and t intervals)",
    )
    create_table_artifact(
        tables.get("structure") or [{"model": "no relaxed structures"}],
        key=keys["structure"],
        description="Per model: match to relaxed, ΔV_rms, space groups (symprec 0.1), P1 "
        "fraction, carbon sp/sp2/sp3",
    )
    create_table_artifact(
        tables["comparison"] or [{"difference": "fewer than two models with values"}],
        key=keys["comparison"],
        description="Model differences with bootstrap and t intervals; paper: " + PAPER_SOURCE,
    )
    create_table_artifact(
        tables["sun"] or [{"model / energies": "not computed"}],
        key=keys["sun"],
        description="S.U.N. rates (MatterGen definition; thresholds in summary.json)",
    )
    create_table_artifact(
        tables.get("method_agreement") or [{"model": "no structure relaxed with both methods"}],
        key=keys["dft-vs-force-field"],
        description="DFT against the force field on the same structures: ΔE (ΔH) difference, "
        "sign test, Spearman's rho",
    )
    create_markdown_artifact(
        "\n\n".join(
            [
                "### DFT over the structures eligible for DFT (ratio estimate)",
                markdown_table(tables.get("dft_ratio_estimate") or [])
                or "(no row with two DFT values)",
                markdown_table(tables.get("dft_ratio_difference") or []),
            ]
        ),
        key=keys["dft-ratio-estimate"],
        description="Each row's DFT mean from the force field on all eligible structures and "
        "DFT on the subset (ratio estimator); differences between rows (Welch t)",
    )
    create_table_artifact(
        [{c: _cell(public_row(r).get(c)) for c in ROW_COLUMNS} for r in rows],
        key=keys["per-structure"],
        description="Per structure (every field in rows.json)",
    )
    parts = [f"### Stability experiment plots\n\nReport directory: `{report_dir.name}`\n"]
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(
            f"#### {name}\n\n![{name}](data:image/png;base64,{data})\n\n`{Path(path).name}`\n"
        )
    create_markdown_artifact("\n".join(parts), key=keys["plots"], description="Stability plots")
    return keys
