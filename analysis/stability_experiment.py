"""The science of the stability experiment on per-structure rows: hull, S.U.N., comparisons.

The rows are those of :mod:`analysis.stability_rows` (one per generated or test-split structure,
with the private structure fields). The steps, in the order the experiment runs them:

1. :func:`dft_candidates` lists the structures whose force-field relaxation gave an energy
   (:func:`analysis.dft_subset.select_for_dft` picks among them);
2. :func:`attach_hull` adds the energies above the force-field hull (relaxed and as generated)
   and above the DFT hull;
3. :func:`sun_by_model` adds the S.U.N. flags and returns the rates per model and method;
4. :func:`model_comparisons` compares every model with the first and with the dataset's own
   floor (:data:`analysis.stability_rows.DATASET_LABEL`);
5. :func:`structure_summary` gives per model the match rates, ΔV_rms, space groups, the P1
   fraction and, for carbon, the sp/sp²/sp³ fractions;
6. :func:`dft_cost_by_size` gives the DFT wall time per structure by cell size (what a size cap
   would save).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from analysis.stability import compare_models
from analysis.stability_limitations import row_counts
from analysis.stability_rows import DATASET_LABEL, hull_energies, row_structure, values_of
from analysis.structure_metrics import (
    carbon_hybridisation,
    delta_v_rms,
    is_carbon,
    p1_fraction,
)

SUMMARY_KEYS: tuple[str, ...] = (
    "delta_e_mev_per_atom",
    "dft_delta_e_mev_per_atom",
    "rmsd",
    "rmsd_unscaled",
    "dft_rmsd",
    "dft_rmsd_unscaled",
    "delta_volume_frac",
    "dft_delta_volume_frac",
    "e_above_hull_eV",
    "e_above_hull_generated_eV",
    "dft_e_above_hull_eV",
)
"""Per-structure quantities summarised per model (mean, median, intervals)."""

COMPARED_KEYS: tuple[str, ...] = (
    "delta_e_mev_per_atom",
    "dft_delta_e_mev_per_atom",
    "rmsd",
    "dft_rmsd",
)
"""Quantities whose model differences are tested."""


def rows_of(rows: Sequence[Mapping[str, Any]], model: str) -> list[Mapping[str, Any]]:
    """The rows of one model, in order."""
    return [r for r in rows if r.get("model") == model]


def dft_candidates(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """DFT candidates of one model: rows whose force-field relaxation gave an energy.

    Parameters
    ----------
    rows
        One model's rows.

    Returns
    -------
    list of dict
        ``structure_id``, ``n_sites``, ``energy_per_atom_eV`` in row order.
    """
    return [
        {
            "structure_id": r["structure_id"],
            "n_sites": r.get("n_sites"),
            "energy_per_atom_eV": r["energy_per_atom_eV"],
        }
        for r in rows
        if r.get("energy_per_atom_eV") is not None and r.get("_structure") is not None
    ]


def attach_hull(rows: Sequence[dict[str, Any]], ff_hull: Any, dft_hull: Any) -> None:
    """Add the energies above the hulls to the rows, in place.

    ``e_above_hull_eV`` (force-field relaxed structure and energy), ``e_above_hull_reason``
    (why there is none), ``e_above_hull_generated_eV`` (the structure as generated with its
    force-field energy) and, on rows with a DFT result, ``dft_e_above_hull_eV``. Energies are
    ``H/N`` where the relaxations ran at ``p ≠ 0`` (the hull references likewise).

    Parameters
    ----------
    rows
        Rows of every model.
    ff_hull, dft_hull
        The hulls (:func:`analysis.hull_references.reference_hull`), ``None`` when missing.
    """
    relaxed = [row_structure(r, "_relaxed_structure") for r in rows]
    values, reasons = hull_energies(relaxed, [r.get("energy_per_atom_eV") for r in rows], ff_hull)
    generated = [row_structure(r, "_structure") for r in rows]
    as_generated, _ = hull_energies(
        generated, [r.get("initial_energy_per_atom_eV") for r in rows], ff_hull
    )
    for row, value, reason, gen_value in zip(rows, values, reasons, as_generated, strict=True):
        row["e_above_hull_eV"] = value
        row["e_above_hull_reason"] = reason
        row["e_above_hull_generated_eV"] = gen_value
    if dft_hull is None:
        return
    dft_rows = [
        r for r in rows if r.get("_dft_structure") and r.get("dft_energy_per_atom_eV") is not None
    ]
    dft_values, _ = hull_energies(
        [row_structure(r, "_dft_structure") for r in dft_rows],
        [r["dft_energy_per_atom_eV"] for r in dft_rows],
        dft_hull,
    )
    for row, value in zip(dft_rows, dft_values, strict=True):
        row["dft_e_above_hull_eV"] = value


SUN_KEYS: tuple[str, ...] = ("stable", "stable_strict", "unique", "novel", "sun", "sun_strict")


def sun_by_model(
    rows: Sequence[dict[str, Any]], models: Sequence[str], train_reference: Any
) -> dict[str, dict[str, Any]]:
    """S.U.N. flags per row (force-field E_hull; DFT E_hull on the DFT rows) and rates.

    Parameters
    ----------
    rows
        Rows of every model, after :func:`attach_hull`; updated in place with ``stable``,
        ``stable_strict``, ``unique``, ``novel``, ``novel_match``, ``duplicate_of``, ``sun``,
        ``sun_strict``, ``sun_error`` and, on DFT rows, ``dft_stable`` and ``dft_sun``.
    models
        Model labels, in report order.
    train_reference
        The training split: a :class:`analysis.sun.NoveltyReference` or a list of structures.

    Returns
    -------
    dict
        ``{"<model> (force field)": sun_rate, "<model> (DFT subset)": sun_rate}``.
    """
    from analysis.sun import STABILITY_THRESHOLD_EV, STRICT_TOLERANCE_EV, sun_flags, sun_rate

    rates: dict[str, dict[str, Any]] = {}
    for model in models:
        idx = [i for i, r in enumerate(rows) if r.get("model") == model]
        if not idx:
            continue
        relaxed = {i: row_structure(rows[i], "_relaxed_structure") for i in idx}
        usable = [i for i in idx if relaxed[i] is not None]
        flags = sun_flags(
            [relaxed[i] for i in usable],
            [rows[i].get("e_above_hull_eV") for i in usable],
            train_reference,
            ids=[rows[i]["structure_id"] for i in usable],
        )
        for i, f in zip(usable, flags, strict=True):
            rows[i].update({k: f[k] for k in SUN_KEYS})
            rows[i].update(
                novel_match=f["novel_match"], duplicate_of=f["duplicate_of"], sun_error=f["error"]
            )
        for i in set(idx) - set(usable):
            rows[i].update(dict.fromkeys(SUN_KEYS, False))
            rows[i]["sun_error"] = "no relaxed structure"
        thresholds = flags[0]["thresholds"] if flags else sun_rate([])["thresholds"]
        all_flags = [
            {k: rows[i].get(k) for k in SUN_KEYS}
            | {"error": rows[i].get("sun_error"), "thresholds": thresholds}
            for i in idx
        ]
        rates[f"{model} (force field)"] = sun_rate(all_flags)
        dft_idx = [i for i in idx if rows[i].get("dft_e_above_hull_eV") is not None]
        if not dft_idx:
            continue
        dft_flags = []
        for i in dft_idx:
            e = rows[i]["dft_e_above_hull_eV"]
            stable = e < STABILITY_THRESHOLD_EV
            strict = e <= STRICT_TOLERANCE_EV
            both = bool(rows[i].get("unique") and rows[i].get("novel"))
            rows[i]["dft_stable"] = stable
            rows[i]["dft_sun"] = stable and both
            dft_flags.append(
                {
                    "stable": stable,
                    "stable_strict": strict,
                    "unique": rows[i].get("unique"),
                    "novel": rows[i].get("novel"),
                    "sun": stable and both,
                    "sun_strict": strict and both,
                    "error": None,
                    "thresholds": thresholds,
                }
            )
        rates[f"{model} (DFT subset)"] = sun_rate(dft_flags)
    return rates


def comparison_pairs(
    rows: Sequence[Mapping[str, Any]], models: Sequence[str], floor: str | None = DATASET_LABEL
) -> list[tuple[str, str]]:
    """The ``(a, b)`` label pairs compared as ``a − b``.

    Every model against the first model, then every model against the floor when the rows hold
    it.

    Parameters
    ----------
    rows
        Rows of every model.
    models
        Labels in report order (the floor may be among them).
    floor
        Label of the dataset's floor rows (``None``: no floor pairs).

    Returns
    -------
    list of tuple
        ``(a, b)`` pairs.
    """
    generators = [m for m in models if m != floor]
    pairs = [(other, generators[0]) for other in generators[1:]]
    if floor is not None and any(r.get("model") == floor for r in rows):
        pairs += [(m, floor) for m in generators]
    return pairs


def model_comparisons(
    rows: Sequence[Mapping[str, Any]],
    models: Sequence[str],
    seed: int = 0,
    *,
    floor: str | None = DATASET_LABEL,
    keys: Sequence[str] = COMPARED_KEYS,
) -> list[dict[str, Any]]:
    """Differences of means: every model against the first, and every model against the floor.

    Parameters
    ----------
    rows
        Rows of every model.
    models
        Model labels in report order (the floor may be among them; it is never compared with
        itself).
    seed
        Seed of the bootstraps and permutations.
    floor
        Label of the dataset's floor rows (``None``: no floor comparisons).
    keys
        Quantities compared.

    Returns
    -------
    list of dict
        ``{"a", "b", "key", "result"}`` with ``result`` from
        :func:`analysis.stability.compare_models` (``a - b``).
    """
    out = []
    for a_model, b_model in comparison_pairs(rows, models, floor):
        for key in keys:
            a = values_of(rows_of(rows, a_model), key)
            b = values_of(rows_of(rows, b_model), key)
            if a and b:
                out.append(
                    {
                        "a": a_model,
                        "b": b_model,
                        "key": key,
                        "result": compare_models(a, b, seed=seed),
                    }
                )
    return out


def structure_summary(
    rows: Sequence[Mapping[str, Any]], models: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per model: match rates, ΔV_rms, space groups, P1 fraction, carbon hybridisation.

    Parameters
    ----------
    rows
        Rows of every model.
    models
        Model labels.

    Returns
    -------
    dict
        ``{model: {...}}`` with ``n``, ``n_relaxed``, ``match_rate`` / ``match_rate_unscaled``
        (force field, over relaxed rows), ``dft_n``, ``dft_match_rate``, ``delta_v_rms`` /
        ``dft_delta_v_rms``, ``p1_fraction_generated`` / ``p1_fraction_relaxed`` /
        ``dft_p1_fraction``, ``top_space_groups_relaxed`` (the five most frequent, ``"symbol
        (count)"``), ``n_space_groups_relaxed`` and, when every structure is carbon,
        ``hybridisation_generated`` / ``hybridisation_relaxed`` (fractions of the carbon atoms,
        :func:`analysis.structure_metrics.carbon_hybridisation`).
    """
    out: dict[str, dict[str, Any]] = {}
    for model in models:
        mine = rows_of(rows, model)
        if not mine:
            continue
        relaxed_rows = [r for r in mine if r.get("_relaxed_structure") is not None]
        dft_rows = [r for r in mine if r.get("_dft_structure") is not None]
        groups = Counter(
            r.get("relaxed_space_group_symbol")
            for r in relaxed_rows
            if r.get("relaxed_space_group_symbol")
        )

        def rate(rs: Sequence[Mapping[str, Any]], key: str) -> float | None:
            return sum(1 for r in rs if r.get(key)) / len(rs) if rs else None

        entry: dict[str, Any] = {
            "n": len(mine),
            "n_relaxed": len(relaxed_rows),
            "match_rate": rate(relaxed_rows, "matched"),
            "match_rate_unscaled": rate(relaxed_rows, "matched_unscaled"),
            "dft_n": len(dft_rows),
            "dft_match_rate": rate(dft_rows, "dft_matched"),
            "dft_match_rate_unscaled": rate(dft_rows, "dft_matched_unscaled"),
            "delta_v_rms": delta_v_rms([r.get("delta_volume_frac") for r in relaxed_rows]),
            "dft_delta_v_rms": delta_v_rms([r.get("dft_delta_volume_frac") for r in dft_rows]),
            "p1_fraction_generated": p1_fraction([r.get("space_group") for r in mine]),
            "p1_fraction_relaxed": p1_fraction(
                [r.get("relaxed_space_group") for r in relaxed_rows]
            ),
            "dft_p1_fraction": p1_fraction([r.get("dft_relaxed_space_group") for r in dft_rows]),
            "n_space_groups_relaxed": len(groups),
            "top_space_groups_relaxed": [f"{s} ({c})" for s, c in groups.most_common(5)],
        }
        generated = [row_structure(r, "_structure") for r in mine]
        if is_carbon(generated):
            entry["hybridisation_generated"] = carbon_hybridisation(generated)
            entry["hybridisation_relaxed"] = carbon_hybridisation(
                [row_structure(r, "_relaxed_structure") for r in relaxed_rows]
            )
            if dft_rows:
                entry["dft_hybridisation"] = carbon_hybridisation(
                    [row_structure(r, "_dft_structure") for r in dft_rows]
                )
        out[model] = entry
    return out


def energy_quantity(rows: Sequence[Mapping[str, Any]], prefix: str = "") -> str:
    """``"H"`` when any row's relaxation (``prefix="dft_"``: DFT relaxation) ran at p ≠ 0."""
    return "H" if any(r.get(f"{prefix}energy_quantity") == "H" for r in rows) else "E"


def pressures(rows: Sequence[Mapping[str, Any]], prefix: str = "") -> list[float]:
    """Distinct target pressures (GPa) of the rows' relaxations, sorted."""
    return sorted(
        {
            float(r[f"{prefix}pressure_gpa"])
            for r in rows
            if isinstance(r.get(f"{prefix}pressure_gpa"), int | float)
        }
    )


def dft_cost_by_size(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """DFT wall time per structure, by number of atoms in the cell (all models and the floor).

    Parameters
    ----------
    rows
        Rows with ``dft_selected``, ``n_sites``, ``dft_wall_time_s`` and ``dft_status``.

    Returns
    -------
    list of dict
        One entry per cell size with a DFT result, smallest first: ``n_sites``, ``n`` (DFT
        results), ``n_ok`` (status ``ok``), ``median_min``, ``min_min``, ``max_min`` (wall
        minutes per structure; the two-stage relaxer's time includes its force-field
        pre-relaxation and the single point) and ``models`` (labels with a result of that size).
    """
    by_size: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("dft_selected") and row.get("dft_wall_time_s") is not None:
            by_size.setdefault(int(row.get("n_sites") or 0), []).append(row)
    out = []
    for n_sites in sorted(by_size):
        group = by_size[n_sites]
        minutes = np.array([float(r["dft_wall_time_s"]) / 60.0 for r in group])
        out.append(
            {
                "n_sites": n_sites,
                "n": len(group),
                "n_ok": sum(1 for r in group if r.get("dft_status") == "ok"),
                "median_min": float(np.median(minutes)),
                "min_min": float(minutes.min()),
                "max_min": float(minutes.max()),
                "models": sorted({str(r.get("model")) for r in group}),
            }
        )
    return out


def summarise_rows(
    rows: Sequence[Mapping[str, Any]],
    models: Sequence[str],
    seed: int = 0,
    dft_max_sites: int | None = None,
    dft_selection: str = "stratified",
) -> dict[str, Any]:
    """Everything the report says about the rows, without the S.U.N. rates and the hull.

    Parameters
    ----------
    rows
        Rows of every model (after :func:`attach_hull` and :func:`sun_by_model`).
    models
        Model labels in report order (the test split last when present).
    seed
        Seed of the bootstraps and permutations.
    dft_max_sites, dft_selection
        The DFT subset's cell-size cap and selection: the ratio estimate extends DFT over the
        cells under the cap, for a random selection only.

    Returns
    -------
    dict
        ``per_model`` (:func:`analysis.stability.summarize_by_model` over
        :data:`SUMMARY_KEYS`), ``structures`` (:func:`structure_summary`), ``comparisons``
        (:func:`model_comparisons`), ``energy_quantity`` and ``pressures_gpa`` per method
        (``"force_field"``, ``"dft"``), ``dft_cost`` (:func:`dft_cost_by_size`),
        ``method_agreement`` (:func:`analysis.method_agreement.dft_vs_force_field`),
        ``dft_ratio_estimate`` (:func:`analysis.dft_ratio_estimate.dft_ratio_estimates`) and
        ``counts`` (:func:`analysis.stability_limitations.row_counts`: structures, failures and
        DFT outcomes per row).
    """
    from analysis.dft_ratio_estimate import dft_ratio_estimates
    from analysis.method_agreement import dft_vs_force_field
    from analysis.stability import summarize_by_model

    per_model = summarize_by_model(rows, keys=SUMMARY_KEYS, seed=seed)
    present = [m for m in models if m in per_model]
    return {
        "per_model": {m: per_model[m] for m in present},
        "structures": structure_summary(rows, present),
        "comparisons": model_comparisons(rows, present, seed),
        "energy_quantity": {
            "force_field": energy_quantity(rows),
            "dft": energy_quantity(rows, "dft_"),
        },
        "pressures_gpa": {"force_field": pressures(rows), "dft": pressures(rows, "dft_")},
        "dft_cost": dft_cost_by_size(rows),
        "method_agreement": dft_vs_force_field(rows, present, seed=seed),
        "dft_ratio_estimate": dft_ratio_estimates(
            rows, present, comparison_pairs(rows, present), dft_max_sites, dft_selection
        ),
        "counts": row_counts(rows, models),
    }
