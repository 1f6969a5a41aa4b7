"""The "Limitations" section of the stability report: the scope of every number, from the run.

Everything here is read from the experiment's summary (plain dicts; no Prefect, no generator
code): the checkpoints and, for a registered model, its training budget beside the paper's
scale; how many structures each row holds and how many failed; the DFT subset of each row
(selection, seed, cell-size cap, how many were eligible); where each DFT relaxation started; the
relaxation protocol; the power statements; the dataset's floor. A field the summary does not
hold is not guessed: its sentence is left out or says that the run does not record it.

Summary fields read (all optional except ``dataset``, ``models``, ``n``, ``seed``, ``relaxer``
and ``dft``):

``checkpoints``
    ``{model: {"source", "checkpoint", "training", "paper_scale", "note"}}``; ``source`` is
    ``"registered"`` (a model-zoo card), ``"file"``, ``"trained"`` (in this run) or ``"none"``.
``counts``
    :func:`row_counts` per row.
``dft_subsets``
    ``{model: {"n_candidates", "n_eligible", "n_chosen"}}`` (the DFT draw of each row).
``protocol``
    ``{"name", "source", "force_field", "dft", "dft_code", "pseudopotentials"}``: the
    relaxers' resolved protocol fields.
``power``, ``dataset_floor``, ``pressures_gpa``, ``energy_quantity``, ``model_errors``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from analysis.enthalpy import EV_PER_GPA_A3
from analysis.stability_rows import DATASET_LABEL
from analysis.training_budget import cpu_hours_text

MEV_PER_GPA_A3 = 1000.0 * EV_PER_GPA_A3
"""meV in 1 GPa·Å³ (p·ΔV per atom)."""

SELECTION_TEXT: dict[str, str] = {
    "stratified": "random, stratified by cell size, one structure drawn from each of as many "
    "equal-count size groups as structures are wanted",
    "random": "uniformly random",
    "smallest": "fewest atoms first: the cheapest cells, so the subset is biased towards small "
    "cells",
    "lowest_energy": "lowest force-field energy first: the subset is biased towards the "
    "force field's most stable structures",
}
"""What each DFT selection (:mod:`analysis.dft_subset`) means for the subset."""

PATH_TEXT: dict[str, str] = {
    "pre-relaxed": "the DFT relaxation started from the force-field-relaxed structure, so the DFT "
    "minimum found is the one in the force field's basin, not a DFT search from the generated "
    "structure; the initial energy is a DFT single point of the structure as generated",
    "direct": "the DFT relaxation started from the generated structure itself (no force-field "
    "pre-relax); the initial energy is its first SCF and the minimum is the nearest DFT "
    "minimum, not a global search",
}
"""The meaning of each DFT path for the DFT numbers of a row."""


def row_counts(
    rows: Sequence[Mapping[str, Any]], models: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per row (model or floor): how many structures, how many usable, failed, DFT outcomes.

    Parameters
    ----------
    rows
        Per-structure rows (:mod:`analysis.stability_rows`, DFT fields added).
    models
        Row labels, in report order.

    Returns
    -------
    dict
        ``{model: {...}}`` with ``n_rows``, ``n_no_structure`` (status ``no_structure``: the
        sample had no structure), ``n_relaxed`` (a force-field Δ value), ``n_ff_failed`` (the
        rest: relaxation failed, not stored or not comparable), ``n_dft_selected``,
        ``n_dft_values`` (a DFT Δ value), ``n_dft_not_started`` (``dft_status``
        ``not_started``), ``n_dft_interrupted`` (``dft_status`` ``interrupted``: the DFT code
        was stopped from outside, a rerun relaxes it again), ``n_dft_failed`` (selected,
        started, no value, not interrupted) and ``dft_paths`` (``{path: count}`` over the
        selected rows). Models without rows are left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for model in models:
        mine = [r for r in rows if r.get("model") == model]
        if not mine:
            continue
        no_structure = sum(1 for r in mine if r.get("status") == "no_structure")
        relaxed = sum(1 for r in mine if r.get("delta_e_mev_per_atom") is not None)
        selected = [r for r in mine if r.get("dft_selected")]
        values = sum(1 for r in selected if r.get("dft_delta_e_mev_per_atom") is not None)
        not_started = sum(1 for r in selected if r.get("dft_status") == "not_started")
        interrupted = sum(1 for r in selected if r.get("dft_status") == "interrupted")
        paths = Counter(str(r["dft_path"]) for r in selected if r.get("dft_path"))
        out[model] = {
            "n_rows": len(mine),
            "n_no_structure": no_structure,
            "n_relaxed": relaxed,
            "n_ff_failed": len(mine) - no_structure - relaxed,
            "n_dft_selected": len(selected),
            "n_dft_values": values,
            "n_dft_not_started": not_started,
            "n_dft_interrupted": interrupted,
            "n_dft_failed": len(selected) - values - not_started - interrupted,
            "dft_paths": dict(sorted(paths.items())),
        }
    return out


def _g(value: Any) -> str:
    return f"{float(value):g}"


def _row_models(s: Mapping[str, Any]) -> list[str]:
    models = list(s.get("models_in_report") or [])
    if not models:
        models = list(s.get("models") or [])
        if (s.get("dataset_floor") or {}).get("label"):
            models.append(s["dataset_floor"]["label"])
    return models


# -- checkpoints -------------------------------------------------------------------------------


def _paper_contrast(training: Mapping[str, Any], paper: Mapping[str, Any]) -> str:
    parts = []
    if paper.get("max_epochs") is not None:
        parts.append(f"up to {paper['max_epochs']} epochs")
    if paper.get("batch_size") is not None:
        parts.append(f"batch size {paper['batch_size']}")
    if paper.get("early_stopping_patience"):
        parts.append(
            f"early stopping after {paper['early_stopping_patience']} epochs without improvement"
        )
    widths = [f"{k} {paper[k]}" for k in ("latent_dim", "hidden_dim") if paper.get(k) is not None]
    text = f"The paper's scale ({paper.get('source') or 'the paper configuration'}): " + (
        ", ".join(parts + widths) if parts or widths else "not recorded"
    )
    mine = [
        f"{k} {training[k]}" for k in ("latent_dim", "hidden_dim") if training.get(k) is not None
    ]
    if widths and mine:
        text += f"; this checkpoint has {', '.join(mine)}"
    return text + "."


def _not_the_paper(model: str, training: Mapping[str, Any], paper: Mapping[str, Any]) -> str:
    config = training.get("config_name")
    epochs, paper_epochs = training.get("epochs"), (paper or {}).get("max_epochs")
    if config and config != "paper":
        return (
            f"A checkpoint trained with the `{config}` configuration at CPU scale is not the "
            f"paper's {model} model: its numbers measure this checkpoint, not {model} as "
            "published."
        )
    if config == "paper" and epochs is not None and paper_epochs and epochs < paper_epochs:
        return (
            f"Trained with the paper's configuration but for {epochs} of up to {paper_epochs} "
            f"epochs: not the paper's {model} model, and its numbers measure this checkpoint."
        )
    return ""


def checkpoint_lines(checkpoints: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One bullet per model: its checkpoint, its training budget and the paper's scale.

    Parameters
    ----------
    checkpoints
        ``summary["checkpoints"]`` (module docstring).

    Returns
    -------
    list of str
        Markdown bullets.
    """
    lines = []
    for model, info in checkpoints.items():
        source = info.get("source")
        training = info.get("training") or {}
        paper = info.get("paper_scale") or {}
        ckpt = info.get("checkpoint")
        if source == "registered":
            budget = [f"the `{training.get('config_name', '?')}` configuration"]
            if training.get("epochs") is not None:
                budget.append(f"{training['epochs']} epochs")
            if training.get("cpu_minutes") is not None:
                m = float(training["cpu_minutes"])
                budget.append(f"{m / 60:.3g} CPU hours ({m:g} CPU minutes)")
            elif cpu_hours_text(training) is not None:
                budget.append(f"{cpu_hours_text(training)} (part of the run was not timed)")
            if training.get("wall_minutes") is not None:
                budget.append(f"{_g(training['wall_minutes'])} minutes wall")
            if training.get("device"):
                budget.append(f"on {training['device']}")
            text = (
                f"- `{model}`: registered checkpoint `{ckpt}` (model zoo card), trained with "
                + ", ".join(budget)
                + "."
            )
        elif source == "trained":
            minutes = training.get("max_minutes")
            epochs = training.get("epochs")
            text = (
                f"- `{model}`: trained by the experiment with the "
                f"`{training.get('config_name', '?')}` configuration"
                + (
                    f" and a budget of {_g(minutes)} minutes (`train_max_minutes`)"
                    if minutes
                    else ""
                )
                + (f", {epochs} epochs" if epochs is not None else "")
                + (f"; checkpoint `{ckpt}`" if ckpt else "")
                + " (a later run with the same configuration, overrides and data limit reuses"
                " this checkpoint)."
            )
        elif source == "file":
            text = (
                f"- `{model}`: checkpoint file `{ckpt}`, not a registered model: this run does "
                "not record how it was trained."
            )
        else:
            note = f" ({info['note']})." if info.get("note") else "."
            text = f"- `{model}`: no checkpoint{note}"
        extra = []
        if paper and source in ("registered", "trained"):
            extra.append(_paper_contrast(training, paper))
        if source in ("registered", "trained"):
            extra.append(_not_the_paper(model, training, paper))
        lines.append(" ".join([text, *[e for e in extra if e]]))
    return lines


# -- sample sizes and the DFT subset -----------------------------------------------------------


def _size_line(model: str, asked: Any, c: Mapping[str, Any], s: Mapping[str, Any]) -> str:
    if model == DATASET_LABEL or model == (s.get("dataset_floor") or {}).get("label"):
        head = f"- `{model}`: {asked} test-split structures drawn (random, seed {s.get('seed')})"
    else:
        head = f"- `{model}`: {asked} structures generated"
    if not c:
        return head + "; no rows."
    failures = []
    if c.get("n_no_structure"):
        failures.append(f"{c['n_no_structure']} without a structure")
    if c.get("n_ff_failed"):
        failures.append(f"{c['n_ff_failed']} whose force-field relaxation failed or is unusable")
    return (
        f"{head}, {c['n_rows']} rows: {c['n_relaxed']} with a force-field value"
        + (f", {', '.join(failures)}" if failures else ", none failed")
        + "."
    )


def size_lines(s: Mapping[str, Any]) -> list[str]:
    """One bullet per row: structures asked for, rows, force-field values and failures."""
    counts = s.get("counts") or {}
    floor = s.get("dataset_floor") or {}
    lines = []
    for model in _row_models(s):
        asked = floor.get("n") if model == floor.get("label") else s.get("n")
        lines.append(_size_line(model, asked, counts.get(model) or {}, s))
    return lines


def dft_lines(s: Mapping[str, Any]) -> list[str]:
    """The DFT subset of each row, its selection, cap and path; or that there is none."""
    if s.get("dft") in (None, "none") or not s.get("dft_per_model"):
        return [
            "There is no DFT subset: this run ran no DFT"
            + (f" (`dft = {s.get('dft')}`)" if s.get("dft") else "")
            + f". Every energy above is the force field's (`{s.get('relaxer')}`); no number in "
            "this report is a DFT verdict."
        ]
    selection = s.get("dft_selection")
    cap = s.get("dft_max_sites")
    head = (
        f"DFT (`{s['dft']}`) ran on a subset of at most {s['dft_per_model']} structures per row, "
        "drawn among the structures whose force-field relaxation gave an energy. Selection "
        f"`{selection}`: {SELECTION_TEXT.get(str(selection), 'see the settings')}; seed "
        f"{s.get('seed')}. "
        + (
            f"Cell-size cap `dft_max_sites` = {cap}: only cells of at most {cap} atoms were "
            "eligible."
            if cap
            else "No cell-size cap (`dft_max_sites` not set)."
        )
    )
    lines = [head, ""]
    subsets = s.get("dft_subsets") or {}
    counts = s.get("counts") or {}
    for model in _row_models(s):
        sub, c = subsets.get(model) or {}, counts.get(model) or {}
        parts = []
        if sub:
            eligible = (
                f"{sub['n_eligible']} of the row's {sub['n_candidates']} force-field-relaxed "
                f"structures eligible (at most {cap} atoms)"
                if cap
                else f"{sub['n_eligible']} eligible"
            )
            parts.append(f"{sub['n_chosen']} chosen, {eligible}")
        if c:
            outcome = f"{c['n_dft_values']} with a DFT value"
            if c.get("n_dft_failed"):
                outcome += f", {c['n_dft_failed']} failed"
            if c.get("n_dft_interrupted"):
                outcome += f", {c['n_dft_interrupted']} interrupted (relaxed again by a rerun)"
            if c.get("n_dft_not_started"):
                outcome += f", {c['n_dft_not_started']} not started (time budget)"
            parts.append(outcome)
            paths = c.get("dft_paths") or {}
            if paths:
                parts.append("path " + ", ".join(f"`{p}` ({k} rows)" for p, k in paths.items()))
        if parts:
            lines.append(f"- `{model}`: " + "; ".join(parts) + ".")
    used = sorted({p for c in counts.values() for p in (c.get("dft_paths") or {})}) or [
        s.get("dft_path", "pre-relaxed")
    ]
    lines.append("")
    lines += [f"Path `{p}`: {PATH_TEXT.get(p, p)}." for p in used]
    lines += [
        "",
        "The DFT numbers (ΔE/ΔH DFT, RMSD DFT, ΔV/V DFT, the DFT hull and DFT S.U.N.) describe "
        "only these subsets, not every structure of a row"
        + (f", and only cells of at most {cap} atoms" if cap else "")
        + ".",
    ]
    return lines


# -- protocol, power, floor --------------------------------------------------------------------


def protocol_lines(s: Mapping[str, Any]) -> list[str]:
    """The relaxation protocol as run, and what comparing ΔH at ``p ≠ 0`` means."""
    record = s.get("protocol") or {}
    dft_p, ff_p = record.get("dft") or {}, record.get("force_field") or {}
    p = dft_p or ff_p
    lines = []
    if p:
        name = record.get("name")
        text = (
            "Protocol" + (f" (the `{name}` defaults where not overridden)" if name else "") + ": "
        )
        fields = [f"pressure {_g(p.get('pressure_gpa', 0.0))} GPa"]
        dispersion = p.get("dispersion", "none")
        fields.append(
            "dispersion DFT-D3(BJ)" if dispersion == "d3bj" else f"dispersion `{dispersion}`"
        )
        if dft_p:
            if s.get("dft") == "vasp":
                fields.append(
                    "with VASP only pressure, dispersion, spin and the cell relaxation reach "
                    "the calculation; k-points, ENCUT and smearing are the atomate2 input "
                    "set's unless `dft_settings` names them"
                )
            else:
                k = f"k-spacing {_g(dft_p['kspacing'])} Å⁻¹ (2π included) for every DFT energy"
                if dft_p.get("relax_kspacing") and dft_p["relax_kspacing"] != dft_p["kspacing"]:
                    k += (
                        f", relax_kspacing {_g(dft_p['relax_kspacing'])} Å⁻¹ for the relaxation "
                        "steps"
                    )
                fields.append(k)
                if dft_p.get("ecutwfc"):
                    fields.append(
                        f"cutoffs ecutwfc {_g(dft_p['ecutwfc'])} Ry, ecutrho "
                        f"{_g(dft_p.get('ecutrho') or 0)} Ry"
                    )
                else:
                    fields.append(
                        "cutoffs: the pseudopotential library's recommendation per element"
                    )
                if dft_p.get("smearing"):
                    width = f", {_g(dft_p['degauss'])} Ry" if dft_p.get("degauss") else ""
                    fields.append(f"smearing `{dft_p['smearing']}`{width}")
            if record.get("pseudopotentials"):
                fields.append(f"pseudopotentials {record['pseudopotentials']}")
        text += "; ".join(fields) + "."
        if record.get("source"):
            text += f" k-spacing and cutoffs as converged in `{record['source']}`."
        lines.append(text)
    pressures = sorted(
        {float(x) for x in ((s.get("pressures_gpa") or {}).get("force_field") or [])}
        | {float(x) for x in ((s.get("pressures_gpa") or {}).get("dft") or [])}
    ) or ([float(p.get("pressure_gpa", 0.0))] if p else [])
    nonzero = [x for x in pressures if x != 0.0]
    if nonzero:
        x = nonzero[0]
        lines.append(
            f"At p = {_g(x)} GPa (p ≠ 0) every energy compared is an enthalpy per atom, "
            f"H = E + pV, so ΔH includes p·ΔV (at {_g(x)} GPa, 1 Å³/atom of volume change is "
            f"{x * MEV_PER_GPA_A3:.1f} meV/atom): ΔH is not the zero-pressure ΔE."
        )
    elif pressures:
        lines.append("At 0 GPa the energies compared are energies per atom (ΔE).")
    return lines


def power_line(s: Mapping[str, Any]) -> str:
    """Refer to the power statements of the report instead of recomputing them."""
    statements = s.get("power") or []
    if not statements:
        return (
            "Power: no comparison of ΔE/ΔH had two rows with values, so the report makes no "
            "power statement."
        )
    count = f"{len(statements)} power statement" + ("s" if len(statements) != 1 else "")
    return (
        f"Power: “Model differences” holds {count}; each gives, for its ΔE/ΔH comparison, the "
        "smallest true difference detectable with 80 % power at that n and spread. A smaller "
        "true difference is detected with less than 80 % probability, so a comparison without "
        "significance does not show that two rows are equal."
    )


def floor_line(s: Mapping[str, Any]) -> str:
    """What the dataset's floor row is, or that the run has none."""
    floor = s.get("dataset_floor") or {}
    if not floor:
        return (
            "Floor: this run has no dataset floor, so nothing shows what the same relaxer and "
            "protocol give to the dataset's own structures; a model's Δ values include that "
            "share."
        )
    return (
        f"Floor: row `{floor.get('label')}` is {floor.get('n')} of the {s.get('dataset')} "
        f"dataset's own {floor.get('split', 'test')}-split structures through the same relaxer, "
        "settings and protocol. Its ΔE/ΔH is what the relaxer gives to structures that are "
        "already minima of the dataset's method. It is a different set of structures "
        "(compositions and cell sizes differ), so a model's mean minus the floor's, with its "
        "interval under “Model differences”, says how much farther from the relaxer's minima "
        "the model's structures lie than the dataset's own, not what the model alone adds."
    )


def limitations_lines(summary: Mapping[str, Any]) -> list[str]:
    """The markdown lines of the report's "Limitations" section.

    Parameters
    ----------
    summary
        The experiment summary (module docstring: the fields read).

    Returns
    -------
    list of str
        Markdown lines, starting with the ``## Limitations`` heading.
    """
    s = summary
    lines = [
        "## Limitations",
        "",
        "The scope of every number above, from this run's settings and rows.",
        "",
    ]
    checkpoints = s.get("checkpoints")
    if checkpoints:
        lines += ["Checkpoints:", "", *checkpoint_lines(checkpoints), ""]
    elif s.get("models"):
        lines += ["Checkpoints: not recorded in this summary.", ""]
    lines += [f"Rows (n = {s.get('n')} per model):", "", *size_lines(s), ""]
    errors = s.get("model_errors") or {}
    if errors:
        lines += [f"Rows that did not finish, without numbers: {', '.join(sorted(errors))}.", ""]
    lines += [*dft_lines(s), ""]
    protocol = protocol_lines(s)
    if protocol:
        lines += [" ".join(protocol), ""]
    lines += [power_line(s), "", floor_line(s)]
    return lines
