"""Tables, text and files of the stability experiment's report (no Prefect).

The report directory holds ``rows.json`` (one row per generated or test-split structure),
``summary.json`` (per-model summaries, structure summaries, model differences, S.U.N. rates,
reference hull, settings, timings, tables), ``report.md`` (the tables in markdown with the
plots, the statements they support and a "Limitations" section generated from the summary,
:mod:`analysis.stability_limitations`) and the PNG plots.

Column names say what was compared: ``ΔE`` where the relaxations ran at zero pressure, ``ΔH``
(enthalpy ``H = E + pV`` per atom) where they ran at ``p ≠ 0``.

The paper's figure is DP-CDVAE's abstract: on carbon, ΔE between generated and DFT-relaxed
structures is on average 68.1 meV/atom lower for DP-CDVAE than for CDVAE (100 structures per
model). The per-model values are not given in the abstract, so only the difference has a paper
column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.stability_limitations import limitations_lines
from analysis.stability_rows import DFT_PATHS, public_row

PAPER_DELTA_E_DIFFERENCE_MEV = -68.1
"""DP-CDVAE − CDVAE mean ΔE (DFT, carbon), meV/atom: "68.1 meV/atom lower" (DP-CDVAE abstract)."""

PAPER_SOURCE = (
    "DP-CDVAE (arXiv 2308.02165, Sci. Rep. 2024), abstract: ΔE 68.1 meV/atom lower than CDVAE "
    "on carbon, 100 DFT-relaxed structures per model; the per-model values are not in the "
    "abstract"
)

QUANTITY_LABELS: dict[str, str] = {
    "delta_e_mev_per_atom": "Δ{e} force field (meV/atom)",
    "dft_delta_e_mev_per_atom": "Δ{d} DFT (meV/atom)",
    "rmsd": "RMSD force field",
    "rmsd_unscaled": "RMSD force field, unscaled",
    "dft_rmsd": "RMSD DFT",
    "dft_rmsd_unscaled": "RMSD DFT, unscaled",
    "delta_volume_frac": "ΔV/V force field",
    "dft_delta_volume_frac": "ΔV/V DFT",
    "e_above_hull_eV": "{e}_hull force field, relaxed (eV/atom)",
    "e_above_hull_generated_eV": "{e}_hull force field, as generated (eV/atom)",
    "dft_e_above_hull_eV": "{d}_hull DFT, relaxed (eV/atom)",
}
"""Summarised per-structure quantities and their table labels (``{e}``/``{d}``: ``E`` or ``H``
of the force-field and the DFT relaxations)."""

ROW_COLUMNS: tuple[str, ...] = (
    "model",
    "structure_id",
    "formula",
    "n_sites",
    "status",
    "delta_e_mev_per_atom",
    "rmsd",
    "rmsd_unscaled",
    "delta_volume_frac",
    "space_group_symbol",
    "relaxed_space_group_symbol",
    "e_above_hull_eV",
    "dft_selected",
    "dft_path",
    "dft_status",
    "dft_delta_e_mev_per_atom",
    "dft_rmsd",
    "dft_delta_volume_frac",
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


def quantity_labels(force_field: str = "E", dft: str = "E") -> dict[str, str]:
    """Labels of :data:`QUANTITY_LABELS` for the energy quantities of the two methods.

    Parameters
    ----------
    force_field, dft
        ``"E"`` or ``"H"`` (:func:`analysis.stability_experiment.energy_quantity`).

    Returns
    -------
    dict
        ``{key: label}``.
    """
    return {k: v.format(e=force_field, d=dft) for k, v in QUANTITY_LABELS.items()}


def _num(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, digits)
    return value


def _interval(low: Any, high: Any, digits: int = 4) -> str:
    if low is None or high is None:
        return ""
    return f"[{low:.{digits}g}, {high:.{digits}g}]"


def _percent(value: Any) -> str:
    return "" if value is None else f"{100.0 * value:.1f} %"


def summary_table(
    per_model: Mapping[str, Mapping[str, Mapping[str, Any]]],
    labels: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One table row per (model, quantity): n, missing, mean, median, 95 % intervals, std.

    Parameters
    ----------
    per_model
        Output of ``analysis.stability.summarize_by_model``.
    labels
        ``{key: label}`` (default :func:`quantity_labels` with ``E``).

    Returns
    -------
    list of dict
        Rows for a table (quantities without a value in any model are left out); the intervals
        of the mean are the percentile bootstrap (``ci95_bootstrap``) and Student's t
        (``ci95_t``).
    """
    labels = labels or quantity_labels()
    rows = []
    present = {k for by_key in per_model.values() for k, s in by_key.items() if s.get("n")}
    for model, by_key in per_model.items():
        for key, s in by_key.items():
            if key not in present:  # no model has a value (e.g. DFT quantities without DFT)
                continue
            rows.append(
                {
                    "model": model,
                    "quantity": labels.get(key, key),
                    "n": s.get("n"),
                    "n_missing": s.get("n_missing"),
                    "mean": _num(s.get("mean")),
                    "median": _num(s.get("median")),
                    "ci95_bootstrap": _interval(s.get("ci_low"), s.get("ci_high")),
                    "ci95_t": _interval(s.get("t_low"), s.get("t_high")),
                    "std": _num(s.get("std")),
                    "paper": "not in the abstract" if key == "dft_delta_e_mev_per_atom" else "",
                }
            )
    return rows


def comparison_table(
    comparisons: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per model difference, the paper's figure beside the DFT ΔE difference.

    Parameters
    ----------
    comparisons
        Dicts with ``a``, ``b``, ``key`` and ``result`` (``analysis.stability.compare_models``).
    labels
        ``{key: label}`` (default :func:`quantity_labels` with ``E``).

    Returns
    -------
    list of dict
        Rows for a table: the difference ``a − b``, its bootstrap and Welch t intervals, the
        permutation p-value (``"< 1/N"`` at the test's resolution), the group sizes, the
        smallest difference detectable with 80 % power (``detectable_80``) and the paper.
    """
    labels = labels or quantity_labels()
    rows = []
    for c in comparisons:
        r = c["result"]
        paper = ""
        if (c["a"], c["b"]) == ("dpcdvae", "cdvae"):
            if c["key"] == "dft_delta_e_mev_per_atom":
                paper = f"{PAPER_DELTA_E_DIFFERENCE_MEV}"
            elif c["key"] == "delta_e_mev_per_atom":
                paper = f"({PAPER_DELTA_E_DIFFERENCE_MEV} with DFT, not a force field)"
        rows.append(
            {
                "difference": f"{c['a']} − {c['b']}",
                "quantity": labels.get(c["key"], c["key"]),
                "value": _num(r.get("difference")),
                "ci95_bootstrap": _interval(r.get("ci_low"), r.get("ci_high")),
                "ci95_t": _interval(r.get("t_low"), r.get("t_high")),
                "p_value": r.get("p_value_text") or _num(r.get("p_value")),
                "n_a": r.get("n_a"),
                "n_b": r.get("n_b"),
                "detectable_80": _num(r.get("detectable_difference")),
                "paper": paper,
            }
        )
    return rows


def power_statements(
    comparisons: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None = None
) -> list[str]:
    """One sentence per ΔE comparison: what its n and spread could detect at 80 % power.

    Parameters
    ----------
    comparisons
        As :func:`comparison_table`.
    labels
        ``{key: label}``.

    Returns
    -------
    list of str
        Markdown sentences (comparisons without a detectable difference are left out).
    """
    labels = labels or quantity_labels()
    out = []
    for c in comparisons:
        r = c["result"]
        if not c["key"].endswith("delta_e_mev_per_atom") or r.get("detectable_difference") is None:
            continue
        out.append(
            f"- {c['a']} − {c['b']}, {labels.get(c['key'], c['key'])}: with n = {r['n_a']} and "
            f"{r['n_b']} and a pooled standard deviation of {r['pooled_std']:.0f} meV/atom, "
            "the smallest true difference this comparison detects with 80 % power (two-sided "
            f"t-test, 5 % level) is {r['detectable_difference']:.0f} meV/atom; the measured "
            f"difference is {r['difference']:.0f} meV/atom."
        )
    return out


def structure_table(structures: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per model: match rates, ΔV_rms, P1 fractions, space groups, carbon bonding.

    Parameters
    ----------
    structures
        Output of :func:`analysis.stability_experiment.structure_summary`.

    Returns
    -------
    list of dict
        Rows for a table (percentages as text).
    """
    rows = []
    for model, s in structures.items():
        row: dict[str, Any] = {
            "model": model,
            "n": s.get("n"),
            "n_relaxed": s.get("n_relaxed"),
            "match_ff": _percent(s.get("match_rate")),
            "match_ff_unscaled": _percent(s.get("match_rate_unscaled")),
            "dV_rms_ff": _num(s.get("delta_v_rms")),
            "n_dft": s.get("dft_n"),
            "match_dft": _percent(s.get("dft_match_rate")),
            "dV_rms_dft": _num(s.get("dft_delta_v_rms")),
            "P1_generated": _percent(s.get("p1_fraction_generated")),
            "P1_relaxed": _percent(s.get("p1_fraction_relaxed")),
            "space_groups_relaxed": f"{s.get('n_space_groups_relaxed')}: "
            + ", ".join(s.get("top_space_groups_relaxed") or []),
        }
        for tag, key in (
            ("generated", "hybridisation_generated"),
            ("relaxed", "hybridisation_relaxed"),
        ):
            h = s.get(key)
            if h:
                row[f"sp/sp2/sp3 {tag}"] = " / ".join(
                    _percent(h.get(k)) for k in ("sp", "sp2", "sp3")
                ) + (f" (other {_percent(h.get('other'))})" if h.get("other") else "")
        rows.append(row)
    return rows


def sun_table(sun: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, energy method) S.U.N. rate with its counts.

    Parameters
    ----------
    sun
        ``{label: analysis.sun.sun_rate(...)}``.

    Returns
    -------
    list of dict
        Rows for a table.
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


def dft_cost_table(cost: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the report's DFT-cost table (:func:`analysis.stability_experiment.dft_cost_by_size`).

    Returns
    -------
    list of dict
        ``atoms``, ``n``, ``ok``, ``median min``, ``range min`` and ``models`` per cell size.
    """
    return [
        {
            "atoms": c["n_sites"],
            "n": c["n"],
            "ok": c["n_ok"],
            "median min": round(float(c["median_min"]), 1),
            "range min": f"{c['min_min']:.1f}–{c['max_min']:.1f}",
            "models": ", ".join(c["models"]),
        }
        for c in cost
    ]


def method_agreement_table(
    agreement: Sequence[Mapping[str, Any]], quantity: str = "E"
) -> list[dict[str, Any]]:
    """Rows of the report's DFT-against-force-field table.

    Parameters
    ----------
    agreement
        Output of :func:`analysis.method_agreement.dft_vs_force_field`.
    quantity
        ``"E"`` or ``"H"``: the energy quantity both columns hold.

    Returns
    -------
    list of dict
        Per row label: pairs, the two means, the mean difference with its t-interval, how many
        structures DFT puts higher, the sign test, Spearman's ρ and the force field's scale
        against DFT with its bootstrap interval.
    """
    d = f"Δ{quantity}"
    return [
        {
            "model": a["model"],
            "n pairs": a["n"],
            f"mean {d} force field": _num(a["mean_force_field"], 1),
            f"mean {d} DFT": _num(a["mean_dft"], 1),
            "DFT − force field": _num(a["mean_difference"], 1),
            "ci95_t": _interval(a.get("t_low"), a.get("t_high")),
            "DFT larger": f"{a['n_dft_larger']} of {a['n']}",
            "p (sign test)": None
            if a.get("sign_test_p") is None
            else float(f"{a['sign_test_p']:.2g}"),
            "Spearman ρ": _num(a.get("spearman"), 2),
            "scale force field / DFT": _num(a.get("scale"), 2),
            "scale ci95_bootstrap": _interval(a.get("scale_low"), a.get("scale_high"), 2),
        }
        for a in agreement
    ]


def ratio_estimate_tables(
    estimate: Mapping[str, Any], quantity: str = "E"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of the report's two ratio-estimate tables: per row label, and their differences.

    Parameters
    ----------
    estimate
        Output of :func:`analysis.dft_ratio_estimate.dft_ratio_estimates`.
    quantity
        ``"E"`` or ``"H"``: the energy quantity.

    Returns
    -------
    tuple of list of dict
        Per label: eligible structures, DFT pairs, the force-field mean over the eligible ones,
        the ratio, the DFT estimate with its standard error and t-interval; per pair of labels:
        the difference of the estimates, its Welch t-interval, degrees of freedom and p.
    """
    d = f"Δ{quantity}"
    per_row = [
        {
            "model": e["model"],
            "N eligible": e["N"],
            "n DFT": f"{e['n']} of {e['n_chosen']} chosen",
            f"mean {d} force field (eligible)": _num(e["mean_force_field"], 1),
            "ratio DFT / force field": _num(e["ratio"], 3),
            f"{d} DFT estimate": _num(e["estimate"], 1),
            "se": _num(e["se"], 1),
            "ci95_t": _interval(e["t_low"], e["t_high"]),
        }
        for e in estimate.get("rows") or []
    ]
    differences = [
        {
            "difference": f"{c['a']} − {c['b']}",
            f"{d} DFT estimate": _num(c["difference"], 1),
            "ci95_t": _interval(c["t_low"], c["t_high"]),
            "df": _num(c["df"], 1),
            "p_value": float(f"{c['p_value']:.2g}"),
        }
        for c in estimate.get("differences") or []
    ]
    return per_row, differences


def _ratio_estimate_lines(tables: Mapping[str, Any], estimate: Mapping[str, Any]) -> list[str]:
    """The report section of the ratio estimate (none without a DFT subset)."""
    title = "## DFT over the eligible structures (ratio estimate)"
    if estimate.get("skipped"):
        return [title, "", f"Not estimated: {estimate['skipped']}.", ""]
    if not tables.get("dft_ratio_estimate"):
        return []
    max_sites = estimate.get("max_sites")
    cells = f"cells of at most {max_sites} atoms" if max_sites else "all cells"
    lines = [
        title,
        "",
        "The DFT mean of every row over all structures eligible for its DFT subset "
        f"({cells} with a force-field value), from the force field on all of them and DFT on "
        "the subset: two-phase sampling with the ratio estimator (Cochran, Sampling "
        "Techniques, 1977, ch. 12), estimate = (mean DFT / mean force field on the pairs) × "
        "mean force field over the eligible structures; t-interval with n − 1 degrees of "
        "freedom, Welch for differences. It holds where DFT is proportional to the force "
        "field over the eligible structures (see the scale and ρ above) and the subset is a "
        "random draw of them; chosen structures without a DFT value (failed, or not run yet) "
        "are assumed missing at random. It says nothing of larger cells.",
        "",
        markdown_table(tables["dft_ratio_estimate"]),
        "",
        markdown_table(tables.get("dft_ratio_difference") or []),
        "",
    ]
    incomplete = [e["model"] for e in estimate.get("rows") or [] if e["n"] < e["n_chosen"]]
    if incomplete:
        lines += [
            f"Not every chosen structure has a DFT value yet ({', '.join(incomplete)}): the "
            "estimate treats the missing ones as like those done. The DFT queue runs the "
            "smaller cells of a stratified draw first, so until it completes the ratio comes "
            "mostly from the smaller cells.",
            "",
        ]
    return lines


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render table rows as a markdown table (empty string for no rows)."""
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ["" if row.get(c) is None else str(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_text(reference: Mapping[str, Any]) -> str:
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


def _energy_text(summary: Mapping[str, Any]) -> str:
    quantities = summary.get("energy_quantity") or {}
    pressures = summary.get("pressures_gpa") or {}
    parts = []
    for method, label in (("force_field", "force field"), ("dft", "DFT")):
        p = pressures.get(method) or []
        if not p:
            continue
        if quantities.get(method) == "H":
            parts.append(
                f"{label} relaxations at {', '.join(f'{x:g}' for x in p)} GPa: energies are "
                "enthalpies per atom, H = E + pV, and the columns say ΔH"
            )
        else:
            parts.append(f"{label} relaxations at 0 GPa: energies per atom (ΔE)")
    return ("; ".join(parts) + ".") if parts else ""


def _dft_text(summary: Mapping[str, Any]) -> str:
    if summary.get("dft") == "none":
        return "No DFT."
    path = summary.get("dft_path", "pre-relaxed")
    cap = summary.get("dft_max_sites")
    return (
        f"DFT `{summary['dft']}` on {summary['dft_per_model']} structures per model and of the "
        f"test split (selection `{summary['dft_selection']}`"
        + (f", cells of at most {cap} atoms" if cap else "")
        + f"). Path `{path}`: {DFT_PATHS.get(path, path)}; the `dft_path` column of every row "
        "says where its DFT numbers come from."
    )


def render_report(
    summary: Mapping[str, Any], tables: Mapping[str, Sequence[Mapping[str, Any]]]
) -> str:
    """The ``report.md`` text: settings, tables, the paper's figure, power, plots, limitations.

    Parameters
    ----------
    summary
        The experiment summary (``summary.json``).
    tables
        ``summary``, ``structure``, ``comparison``, ``sun`` table rows.

    Returns
    -------
    str
        Markdown.
    """
    s = summary
    floor = s.get("dataset_floor") or {}
    lines = [
        f"# Stability experiment {s['run']} ({s['dataset']})",
        "",
        f"Models: {', '.join(s['models']) or 'none (the dataset floor alone)'}; "
        f"n = {s['n']} per model, seed {s['seed']}; "
        f"force field `{s['relaxer']}`. {_dft_text(s)}",
        "",
    ]
    if floor:
        lines += [
            f"Dataset floor (row `{floor.get('label')}`): {floor.get('n')} structures drawn at "
            f"random (seed {s['seed']}) from the {s['dataset']} test split, relaxed with the "
            "same relaxer, settings and protocol as the models' structures (same settings "
            "hash)"
            + (
                "."
                if s.get("dft") == "none"
                else "; DFT on the same number and selection as a model."
            ),
            "",
        ]
    lines += [
        _energy_text(s),
        "",
        "Δ = value(as generated) − value(relaxed) per atom, both from the same method. RMSD: "
        "StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3), normalised by (V/N)^(1/3), with "
        "the cells rescaled to a common volume (protocol) and unscaled (cells must match within "
        "ltol as they are; the displacement itself is measured on the averaged lattice in both). "
        "ΔV_rms = sqrt(mean((ΔV/V)²)). Space groups: spglib, symprec 0.1 Å. Carbon "
        "hybridisation: neighbours within 1.85 Å (2 sp, 3 sp², 4 sp³). Intervals: 95 % "
        "percentile bootstrap and Student t of the mean (Welch for differences); p-values: "
        "two-sided permutation test, '< 1/N' where no permutation was as extreme.",
        "",
        "## Per model",
        "",
        markdown_table(tables["summary"]),
        "",
        "## Structures",
        "",
        markdown_table(tables.get("structure", [])) or "(no relaxed structures)",
        "",
        "## Model differences (paper: " + PAPER_SOURCE + ")",
        "",
        markdown_table(tables["comparison"]) or "(fewer than two models with values)",
        "",
    ]
    statements = s.get("power") or []
    if statements:
        lines += ["Power:", "", *statements, ""]
    if tables.get("method_agreement"):
        lines += [
            "## DFT against the force field",
            "",
            "On the structures relaxed with both methods: ΔE (ΔH) from DFT minus that from the "
            "force field, structure by structure (meV/atom), with the t-interval of the mean "
            "difference; how many structures DFT puts farther from their minimum, with the "
            "two-sided sign test; Spearman's ρ says whether the force field orders the "
            "structures as DFT does. The scale is the slope of the force field's values "
            "against DFT's through the origin (Σ ff·DFT / Σ DFT², 95 % percentile bootstrap "
            "over the pairs): 1 means the force field gives DFT's values, below 1 a softer "
            "energy surface that scales every difference down alike, differences between "
            "rows included.",
            "",
            markdown_table(tables["method_agreement"]),
            "",
        ]
    lines += _ratio_estimate_lines(tables, s.get("dft_ratio_estimate") or {})
    lines += [
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
    if tables.get("dft_cost"):
        lines += [
            "",
            "## DFT cost by cell size",
            "",
            "Wall time per structure of the DFT relaxer (with the two-stage relaxer: force-field "
            "pre-relax, DFT single point and DFT relaxation), on this run's machine.",
            "",
            markdown_table(tables["dft_cost"]),
        ]
    not_started = {m: ids for m, ids in (s.get("dft_not_started") or {}).items() if ids}
    if not_started:
        lines += ["", "## DFT not started", ""]
        lines += [f"- {m}: {', '.join(ids)}" for m, ids in not_started.items()]
    lines += ["", *limitations_lines(s)]
    lines += ["", "## Settings", "", "```json", json.dumps(s.get("settings"), indent=1), "```"]
    if s.get("model_errors"):
        lines += ["", "## Models that did not finish", ""]
        lines += [f"- {m}: {e}" for m, e in s["model_errors"].items()]
    return "\n".join(lines) + "\n"


def write_report(
    report_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, str]:
    """Write ``rows.json`` (public fields), ``summary.json`` and ``report.md`` into ``report_dir``.

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
    paths["rows"].write_text(json.dumps([public_row(r) for r in rows], indent=1, default=str))
    paths["summary"].write_text(json.dumps({**summary, "tables": tables}, indent=1, default=str))
    paths["report"].write_text(render_report(summary, tables))
    return {k: str(v) for k, v in paths.items()}


def report_tables(
    parts: Mapping[str, Any], sun: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The report's tables and power statements.

    Parameters
    ----------
    parts
        Output of :func:`analysis.stability_experiment.summarise_rows`.
    sun
        S.U.N. rates (entries with an ``error`` are left out of the table).

    Returns
    -------
    tuple
        ``({"summary", "structure", "comparison", "sun", "dft_cost", "method_agreement",
        "dft_ratio_estimate", "dft_ratio_difference"}, power statements)``.
    """
    quantity = parts.get("energy_quantity") or {}
    labels = quantity_labels(quantity.get("force_field", "E"), quantity.get("dft", "E"))
    tables = {
        "summary": summary_table(parts["per_model"], labels),
        "structure": structure_table(parts["structures"]),
        "comparison": comparison_table(parts["comparisons"], labels),
        "sun": sun_table({k: v for k, v in sun.items() if "error" not in v}),
        "dft_cost": dft_cost_table(parts.get("dft_cost") or []),
        "method_agreement": method_agreement_table(
            parts.get("method_agreement") or [], quantity.get("dft", "E")
        ),
    }
    tables["dft_ratio_estimate"], tables["dft_ratio_difference"] = ratio_estimate_tables(
        parts.get("dft_ratio_estimate") or {}, quantity.get("dft", "E")
    )
    return tables, power_statements(parts["comparisons"], labels)
