"""The ``optimize-property`` flow: CDVAE's property optimisation, relaxed and independently scored.

Orchestration only; the work is in the library:

1. latent descent from the first ``n`` crystals of a split and decoding of the snapshots
   (:func:`generators.property_optimization.optimize_and_decode`);
2. the papers' validity (0.5 Å structure check, SMACT composition check: ``analysis.validity``);
3. a CHGNet relaxation of every valid decoded crystal (:func:`flows.relax_stage.run_relax_stage`:
   stored, and skipped when the store has it) under the dataset's relaxation protocol, or the
   one the ``protocol`` parameter gives (:mod:`flows.protocol_settings`);
4. scores of the decoded and of the relaxed crystals by an independent predictor
   (:mod:`analysis.property_predictor`), loaded from a file or fitted on a split that has the
   property and is not the starts' split;
5. SR5 / SR10 / SR15 of both against the thresholds (:func:`success_rates`).

The decoded crystals are stored as ``sample`` documents, their relaxations as ``relaxation``
documents, and the summary with one row per decoded crystal as a ``property_optimization``
document; a table artifact gives the success rates beside the paper's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from pymatgen.core import Structure

from flows.hashing import dict_hash, structure_hash
from flows.protocol_settings import ProtocolParameter, stage_settings
from flows.relax_stage import run_relax_stage, with_flow_run
from flows.store import Provenance, ResultStore, dftloop_home
from flows.tasks import describe_relaxer

PAPER_SR: dict[str, dict[str, float]] = {
    "perov_5": {"SR5": 0.52, "SR10": 0.65, "SR15": 0.79},
    "carbon_24": {"SR5": 0.00, "SR10": 0.06, "SR15": 0.06},
    "mp_20": {"SR5": 0.78, "SR10": 0.86, "SR15": 0.90},
}
"""CDVAE's published success rates per dataset, shown beside ours in the artifact: Xie et al.,
ICLR 2022 (arXiv 2110.06197), as reprinted in the DiffCSP paper (Jiao et al., NeurIPS 2023,
arXiv 2309.04475), Appendix G.3, Table 12 (CDVAE row; 100 starts, the property predictor of the
paper, thresholds
:data:`generators.property_optimization.PAPER_PERCENTILES`)."""


RELAXED_STATUSES = ("ok", "not_converged")
"""Relaxations whose final structure is scored (a relaxation stopped at ``max_steps`` counts)."""


def is_valid(structure: Structure) -> bool:
    """The papers' validity: every distance ≥ 0.5 Å and a SMACT-valid composition."""
    from analysis.validity import composition_of, smact_valid, structure_is_valid

    symbols, counts = composition_of(structure.atomic_numbers)
    return structure_is_valid(structure) and smact_valid(symbols, counts)


def relax_selection(
    scores: list[float], shape: tuple[int, int], direction: str, per_start: int | None
) -> list[int]:
    """Flat indices ([snapshot, start] row-major) of the crystals to relax.

    Parameters
    ----------
    scores
        Decoded scores, NaN where a crystal is not valid.
    shape
        (snapshots, starts).
    direction
        ``min`` or ``max``: which scores count as best.
    per_start
        The ``k`` best of each start; ``None``: every crystal with a finite score.

    Raises
    ------
    ValueError
        If ``per_start`` < 1.
    """
    grid = np.asarray(scores, dtype=float).reshape(shape)
    if per_start is None:
        return [int(k) for k in np.flatnonzero(np.isfinite(grid.reshape(-1)))]
    if per_start < 1:
        raise ValueError(f"relax_per_start must be >= 1 or None, got {per_start}")
    chosen: list[int] = []
    for start in range(shape[1]):
        column = grid[:, start]
        finite = np.flatnonzero(np.isfinite(column))
        key = column[finite] if direction == "min" else -column[finite]
        best = finite[np.argsort(key, kind="stable")[:per_start]]
        chosen += [int(snapshot) * shape[1] + start for snapshot in sorted(best)]
    return sorted(chosen)


@task(task_run_name="optimize-decode-{dataset}-{n}")
def optimize_decode_task(
    checkpoint: str,
    dataset: str,
    split: str,
    n: int,
    steps: int,
    lr: float,
    saves: int,
    direction: str,
    chain_steps: int | None,
    seed: int,
    data_dir: str | None,
) -> dict[str, Any]:
    """Load the model and the starts, descend z, decode; return JSON-friendly results."""
    import torch

    from generators.crystal import data_list_to_batch
    from generators.data import load_split
    from generators.data.cache import file_sha256
    from generators.model_zoo import resolve_checkpoint
    from generators.property_optimization import optimize_and_decode, records_to_property_data
    from generators.trainer import load_checkpoint

    path = resolve_checkpoint(checkpoint)
    model, _ = load_checkpoint(path)
    if not getattr(model, "predicts_property", False):
        raise ValueError(f"{checkpoint}: the model has no property head (model.predict_property)")
    property_name = str(model.config["property"])
    records = load_split(dataset, split, data_dir=data_dir, limit=n, progress=False).records
    data, errors = records_to_property_data(records, property_name)
    if not data:
        raise ValueError(f"{dataset}/{split}: no usable starting crystals ({len(errors)} failed)")
    by_id = {str(r.material_id): r.structure.as_dict() for r in records}
    model.eval()
    if chain_steps is not None:
        model.configure_sampling(steps=chain_steps)
    started = time.perf_counter()
    cpu = time.process_time()
    decoded = optimize_and_decode(
        model,
        data_list_to_batch(data),
        steps=steps,
        lr=lr,
        saves=saves,
        direction=direction,
        generator=torch.Generator().manual_seed(seed),
    )
    return {
        "model": model.name,
        "property": property_name,
        "checkpoint_sha256": file_sha256(Path(path)),
        "start_ids": [str(d.material_id) for d in data],
        "start_values": [float(d.y) for d in data],
        "start_structures": [by_id[str(d.material_id)] for d in data],
        "start_errors": errors,
        "steps": decoded.steps,
        "head": decoded.head.tolist(),
        "structures": [[s.as_dict() if s else None for s in row] for row in decoded.structures],
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
    }


@task(task_run_name="property-predictor-{dataset}-{property_name}")
def predictor_task(
    predictor: str | None,
    dataset: str,
    property_name: str,
    train_split: str,
    starts_split: str,
    home: str | None,
    data_dir: str | None,
) -> str:
    """The predictor file: ``predictor`` if given, else one fitted on ``train_split`` (cached)."""
    from analysis.property_predictor import fit_predictor, load_predictor
    from generators.data import load_split

    if predictor:
        found = load_predictor(predictor)
        if found.property_name != property_name:
            raise ValueError(
                f"{predictor}: predicts {found.property_name}, the model optimises {property_name}"
            )
        return str(predictor)
    if train_split == starts_split:
        raise ValueError(
            f"predictor_split {train_split!r} is the starts' split: the predictor must not be "
            "trained on the crystals it scores"
        )
    out = dftloop_home(home) / "predictors" / f"{dataset}-{property_name}-{train_split}.pkl"
    if out.is_file():
        return str(out)
    records = load_split(dataset, train_split, data_dir=data_dir, progress=False).records
    values = [r.properties.get(property_name, float("nan")) for r in records]
    fitted = fit_predictor(
        [r.structure for r in records], values, property_name, trained_on=f"{dataset}/{train_split}"
    )
    fitted.metrics["train_percentiles_5_10_15"] = [
        float(v) for v in np.nanpercentile(np.asarray(values, dtype=float), [5, 10, 15])
    ]
    fitted.save(out)
    return str(out)


@task(task_run_name="score-{label}")
def score_task(
    predictor_path: str, structures: list[dict[str, Any] | None], label: str
) -> list[float]:
    """Predictor values of the given crystals (NaN for ``None``)."""
    from analysis.property_predictor import load_predictor

    predictor = load_predictor(predictor_path)
    out = [float("nan")] * len(structures)
    present = [i for i, s in enumerate(structures) if s is not None]
    if present:
        values = predictor([Structure.from_dict(structures[i]) for i in present])  # type: ignore[arg-type]
        for i, value in zip(present, values, strict=True):
            out[i] = float(value)
    return out


def _thresholds(
    percentiles: str | list[float], dataset: str, direction: str, predictor_path: str
) -> tuple[list[float], str]:
    from analysis.property_predictor import load_predictor
    from generators.property_optimization import PAPER_PERCENTILES

    if isinstance(percentiles, list):
        if len(percentiles) != 3:
            raise ValueError(f"percentiles needs three numbers, got {percentiles}")
        return [float(p) for p in percentiles], "given"
    if percentiles == "paper":
        if direction != "min" or dataset not in PAPER_PERCENTILES:
            raise ValueError(f"no paper percentiles for {dataset} ({direction}); give three")
        return list(PAPER_PERCENTILES[dataset]), "CDVAE OptEval (train split)"
    if percentiles == "split":
        stored = load_predictor(predictor_path).metrics.get("train_percentiles_5_10_15")
        if direction != "min" or not stored:
            raise ValueError("percentiles='split' needs direction min and a fitted predictor")
        return [float(p) for p in stored], "the predictor's training split"
    raise ValueError(f"percentiles must be 'paper', 'split' or three numbers, not {percentiles!r}")


@flow(name="optimize-property")
def optimize_property_flow(
    checkpoint: str,
    dataset: str = "perov_5",
    split: str = "test",
    n: int = 100,
    steps: int = 5000,
    lr: float = 1e-3,
    saves: int = 10,
    direction: str = "min",
    chain_steps: int | None = None,
    percentiles: str | list[float] = "paper",
    predictor: str | None = None,
    predictor_split: str = "val",
    relax: bool = True,
    relaxer: str = "chgnet",
    relaxer_settings: dict[str, Any] | None = None,
    protocol: ProtocolParameter = None,
    relax_per_start: int | None = None,
    chunk_size: int = 32,
    cluster: str = "local",
    cluster_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    home: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Optimise a property in a CDVAE/DP-CDVAE latent space; relax, score, count successes.

    Parameters
    ----------
    checkpoint
        Checkpoint path or registered model name of a model with a property head.
    dataset, split, n
        The starts: the first ``n`` crystals of the split (the paper: 100 test crystals).
    steps, lr, saves, direction
        Adam on z (the paper: 5000 steps, lr 1e-3, 10 saves, ``min``).
    chain_steps
        Decoder sampler steps (default: the model's).
    percentiles
        ``"paper"`` (CDVAE's percentiles), ``"split"`` (the 5th/10th/15th percentiles of the
        predictor's training split) or three numbers.
    predictor
        A predictor file (:meth:`analysis.property_predictor.PropertyPredictor.save`); default:
        fit one on ``predictor_split`` (kept under ``<home>/predictors``).
    predictor_split
        The split the predictor is fitted on; it must not be ``split``.
    relax, relaxer, relaxer_settings
        Relax the valid decoded crystals (CHGNet by default) before the second scoring;
        ``relaxer_settings`` as the other flows' (e.g. ``{"fmax": 0.05}``).
    protocol
        The relaxation protocol (:mod:`relax.protocol`): ``None`` for the dataset's (carbon_24:
        10 GPa with DFT-D3(BJ); perov_5, mp_20, mpts_52: 0 GPa, no dispersion), a dataset name,
        or a dict of fields overriding the dataset's (e.g. ``{"pressure_gpa": 0}``). A
        ``protocol`` in ``relaxer_settings``, or a relaxer keyword of the same name (``fmax``,
        ...), wins. The resolved protocol is part of the relaxations' settings hash (its
        fields are in the result's ``relax_stage.settings``); the result's ``protocol`` is
        this specification as given.
    relax_per_start
        Relax only the ``k`` best-scored valid decoded crystals of each start (``None``: every
        valid one). The relaxed success rates then take each start's best over those ``k``.
    chunk_size, cluster, cluster_kwargs
        Relaxation fan-out (:func:`flows.relax_stage.run_relax_stage`).
    seed
        Seed of the posterior draws and the decoder.
    home, data_dir
        Project and data directories.

    Returns
    -------
    dict
        ``decoded`` and ``relaxed`` (each ``SR5``, ``SR10``, ``SR15``, ``n_scored``),
        ``thresholds``, ``predictor`` (path, training split, MAE on the starts), ``valid_fraction``,
        ``timing``, ``doc_id`` and ``artifact``.
    """
    from analysis.property_predictor import load_predictor
    from generators.property_optimization import best_scores, success_rates

    logger = get_run_logger()
    # resolved (and a misspelt field refused) before the optimisation runs
    [relax_settings] = stage_settings(dataset, protocol, relaxer_settings)
    decoded = optimize_decode_task(
        checkpoint, dataset, split, n, steps, lr, saves, direction, chain_steps, seed, data_dir
    )
    property_name = decoded["property"]
    predictor_path = predictor_task(
        predictor, dataset, property_name, predictor_split, split, home, data_dir
    )
    thresholds, source = _thresholds(percentiles, dataset, direction, predictor_path)
    fitted = load_predictor(predictor_path)

    labels = [f"{sid}-z{step}" for step in decoded["steps"] for sid in decoded["start_ids"]]
    flat = [s for row in decoded["structures"] for s in row]
    valid = [s is not None and is_valid(Structure.from_dict(s)) for s in flat]
    shape = (len(decoded["steps"]), len(decoded["start_ids"]))
    logger.info("%d decoded crystals, %d valid", len(flat), sum(valid))

    settings = {
        "split": split,
        "n": n,
        "relax_per_start": relax_per_start,
        "steps": steps,
        "lr": lr,
        "saves": saves,
        "direction": direction,
        "chain_steps": chain_steps,
        "seed": seed,
    }
    prov = with_flow_run(
        Provenance(
            model=decoded["model"],
            checkpoint_sha256=decoded["checkpoint_sha256"],
            dataset=dataset,
            config={"task": "property_optimization", **settings},
        )
    )
    with ResultStore(home=home) as store:
        store.put_samples(
            [
                {"sample_id": label, "structure": s, "target_id": label.rsplit("-z", 1)[0]}
                for label, s in zip(labels, flat, strict=True)
            ],
            prov,
        )
    decoded_scores = score_task(
        predictor_path, [s if ok else None for s, ok in zip(flat, valid, strict=True)], "decoded"
    )
    relaxed_flat: list[dict[str, Any] | None] = [None] * len(flat)
    stage: dict[str, Any] = {}
    if relax:
        chosen = relax_selection(decoded_scores, shape, direction, relax_per_start)
        items = [
            (labels[k], Structure.from_dict(flat[k]), structure_hash(Structure.from_dict(flat[k])))
            for k in chosen
        ]
        summary = run_relax_stage(
            items,
            relaxer,
            relax_settings,
            prov,
            home=home,
            chunk_size=chunk_size,
            cluster=cluster,
            cluster_kwargs=cluster_kwargs,
        )
        stage = summary.as_dict()
        settings_hash = describe_relaxer(relaxer, relax_settings)["settings_hash"]
        hashes = {label: h for label, _, h in items}
        with ResultStore(home=home) as store:
            docs = store.get_relaxations(list(hashes.values()), settings_hash)
        for k, label in enumerate(labels):
            doc = docs.get(hashes.get(label, ""))
            if doc and doc.get("status") in RELAXED_STATUSES and doc.get("final_structure"):
                relaxed_flat[k] = doc["final_structure"]
    relaxed_scores = score_task(predictor_path, relaxed_flat, "relaxed") if relax else []

    def rates(values: list[float]) -> dict[str, Any]:
        scores = np.asarray(values, dtype=float).reshape(shape)
        best = best_scores(scores, direction)
        return {
            **success_rates(best, thresholds, direction),
            "n_scored": int(np.isfinite(scores).sum()),
            "best": [float(b) if np.isfinite(b) else None for b in best],
        }

    start_scores = fitted.predict([Structure.from_dict(s) for s in decoded["start_structures"]])
    start_values = np.asarray(decoded["start_values"], dtype=float)
    starts_mae = float(np.nanmean(np.abs(start_scores - start_values)))
    worst = np.inf if direction == "min" else -np.inf
    baseline = {  # the starting crystals themselves: what optimisation has to beat
        "true": success_rates(np.nan_to_num(start_values, nan=worst), thresholds, direction),
        "predicted": success_rates(np.nan_to_num(start_scores, nan=worst), thresholds, direction),
    }
    rows = [
        {
            "id": label,
            "start": label.rsplit("-z", 1)[0],
            "step": int(label.rsplit("-z", 1)[1]),
            "head": float(np.asarray(decoded["head"]).reshape(-1)[k]),
            "valid": bool(valid[k]),
            "decoded_score": decoded_scores[k],
            "relaxed_score": relaxed_scores[k] if relax else None,
            "structure_hash": structure_hash(Structure.from_dict(flat[k])) if valid[k] else None,
        }
        for k, label in enumerate(labels)
    ]
    result: dict[str, Any] = {
        "dataset": dataset,
        "property": property_name,
        "settings": settings,
        "protocol": relax_settings.get("protocol") if relax else None,
        "thresholds": thresholds,
        "thresholds_source": source,
        "decoded": rates(decoded_scores),
        "relaxed": rates(relaxed_scores) if relax else None,
        # CDVAE's published rates, beside ours only when the thresholds are the paper's
        "paper": PAPER_SR.get(dataset) if percentiles == "paper" else None,
        "starts": baseline,
        "valid_fraction": float(np.mean(valid)) if valid else 0.0,
        "predictor": {
            "path": predictor_path,
            "trained_on": fitted.trained_on,
            "n_train": fitted.n_train,
            "mae_on_starts": starts_mae,
            **{k: v for k, v in fitted.metrics.items() if isinstance(v, int | float)},
        },
        "relax_stage": stage,
        "timing": {"optimize_decode_wall_s": decoded["wall_s"], "cpu_s": decoded["cpu_s"]},
    }
    doc_id = (
        "property_optimization:"
        + dict_hash(
            {
                "ckpt": decoded["checkpoint_sha256"],
                "dataset": dataset,
                **settings,
                "p": predictor_path,
                "thresholds": thresholds,  # they change every success rate
                # two protocols (or relaxers) give two records, not one overwriting the other
                "relax": describe_relaxer(relaxer, relax_settings)["settings_hash"]
                if relax
                else None,
            }
        )[:16]
    )
    with ResultStore(home=home) as store:
        store.put_property_optimization({"doc_id": doc_id, **result, "rows": rows}, prov)
    result["doc_id"] = doc_id
    result["artifact"] = publish_success_rates(result, decoded["model"])
    logger.info(
        "SR5/10/15 decoded %s, relaxed %s", result["decoded"], result["relaxed"] or "not run"
    )
    return result


def publish_success_rates(result: dict[str, Any], model: str) -> str:
    """A table artifact: SR5 / SR10 / SR15 of the decoded and relaxed crystals and the paper's."""
    from prefect.artifacts import create_table_artifact

    from flows.artifacts import artifact_key

    key = artifact_key(model, result["dataset"], "property-optimization")
    rows = []
    found_by = {
        "starting crystals (dataset values)": result["starts"]["true"],
        "decoded": result.get("decoded"),
        "relaxed": result.get("relaxed"),
        "paper (CDVAE)": result.get("paper"),
    }
    for label, found in found_by.items():
        if found:
            rows.append({"crystals": label, **{k: found[k] for k in ("SR5", "SR10", "SR15")}})
    create_table_artifact(
        rows,
        key=key,
        description=(
            f"{result['property']} optimisation, {result['settings']['n']} starts, thresholds "
            f"{result['thresholds']} ({result['thresholds_source']}); predictor "
            f"{result['predictor']['trained_on']}"
        ),
    )
    return key
