"""The dataset's own floor: the same relaxer applied to true structures of the dataset.

A generated structure's ΔE and RMSD to its relaxed state only mean something beside what the
same relaxer, with the same settings, does to the dataset's own structures: the force field
does not place a DFT-relaxed crystal at its own minimum, so even the true structures move.

One mechanism serves every report: :func:`floor_structures` picks the structures (the caller
says which: ``"random"`` test-split structures for the stability experiment and the nightly
table, ``"first"`` rows of a split or explicit material ids for the main job's CSP targets),
:func:`relax_floor` relaxes them unchanged (no rattle) through
:func:`flows.relax_stage.relax_samples` with the models' relaxer and settings, and
:func:`analysis.stability.dataset_floor_rows` turns the stored documents into rows with the
models' columns and settings hash, summarised by :func:`analysis.stability.summarize_stability`.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from pymatgen.core import Structure

from flows.hashing import structure_hash
from flows.protocol_settings import ProtocolParameter, stage_settings
from flows.relax_stage import relax_samples, with_flow_run
from flows.store import Provenance, ResultStore

FloorSelection = Literal["random", "first"]
"""``"random"``: ``n`` structures drawn without replacement (seeded,
:func:`analysis.dft_subset.random_subset`); ``"first"``: the first ``n`` rows of the split (the
CSP targets of a run that sampled the first ``n`` compositions)."""


def floor_structures(
    dataset: str,
    n: int,
    *,
    split: str = "test",
    selection: FloorSelection = "random",
    seed: int = 0,
    ids: list[str] | None = None,
) -> list[tuple[str, Structure]]:
    """The structures of the floor, as ``(f"{split}:{material id}", structure)``.

    Parameters
    ----------
    dataset, split
        Where the structures come from (``DFTLOOP_DATA_DIR`` and the data layer's search path
        apply).
    n
        How many (all, in the selection's order, when the split is smaller).
    selection
        :data:`FloorSelection`; ignored when ``ids`` is given.
    seed
        Seed of the random draw.
    ids
        Explicit material ids (e.g. the CSP targets of a sample directory), in this order.

    Returns
    -------
    list of (str, Structure)
        The chosen structures as stored in the split.

    Raises
    ------
    ValueError
        For an unknown ``selection`` or a material id the split does not have (named).
    """
    from analysis.dft_subset import random_subset
    from generators.data import load_split

    if selection not in ("random", "first"):
        raise ValueError(f"floor selection must be 'random' or 'first', not {selection!r}")
    records = {
        r.material_id: r.structure for r in load_split(dataset, split, progress=False).records
    }
    if ids is not None:
        missing = [mid for mid in ids if mid not in records]
        if missing:
            raise ValueError(f"{dataset}/{split} has no structure {', '.join(missing[:5])}")
        chosen = list(ids)
    elif selection == "first":
        chosen = list(records)[: max(0, int(n))]
    else:
        chosen = random_subset(list(records), n, seed)
    return [(f"{split}:{mid}", records[mid]) for mid in chosen]


def floor_provenance(dataset: str, config: dict[str, Any]) -> Provenance:
    """Provenance of the floor's relaxations (model ``"test split"``, the current flow run)."""
    from analysis.stability_rows import DATASET_LABEL

    return with_flow_run(
        Provenance(model=DATASET_LABEL, dataset=dataset, config={"role": "dataset floor", **config})
    )


def relax_floor(
    items: list[tuple[str, Structure]],
    relaxer: str,
    relaxer_settings: dict[str, Any] | None,
    provenance: Provenance,
    *,
    home: str | None = None,
    chunk_size: int = 4,
    cluster_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Relax the floor's structures with the models' relaxer; rows and metrics from the store.

    Must be called inside a flow run. ``relaxer_settings`` must be the models' own (protocol
    included), so that the settings hash is theirs.

    Returns
    -------
    dict
        ``model`` (:data:`analysis.stability_rows.DATASET_LABEL`), ``status``, ``n_samples``,
        ``n_relaxed``, ``settings_hash``, ``stage`` (the relaxation summary), ``metrics``
        (:class:`~analysis.results.MetricResult` dicts of
        :func:`analysis.stability.summarize_stability`, the names of a model's) and ``rows``
        (public rows of :func:`analysis.stability.dataset_floor_rows`).
    """
    from analysis.stability import dataset_floor_rows, summarize_stability
    from analysis.stability_rows import DATASET_LABEL

    stage = relax_samples(
        items,
        relaxer,
        relaxer_settings,
        provenance,
        home=home,
        chunk_size=chunk_size,
        cluster_kwargs=cluster_kwargs,
    )
    hashes = {sid: structure_hash(s) for sid, s in items}
    with ResultStore(home=home) as store:
        found = store.get_relaxations(list(hashes.values()), stage.settings_hash)
    docs = {sid: found.get(h) for sid, h in hashes.items()}
    rows = dataset_floor_rows(items, docs, settings_hash=stage.settings_hash)
    for row in rows:  # the store key, as in the models' rows
        row["structure_hash"] = hashes[row["structure_id"]]
    n_relaxed = sum(1 for r in rows if r.get("delta_e_mev_per_atom") is not None)
    return {
        "model": DATASET_LABEL,
        "status": "ok" if n_relaxed else "failed: no dataset structure relaxed",
        "n_samples": len(rows),
        "n_relaxed": n_relaxed,
        "settings_hash": stage.settings_hash,
        "stage": stage.as_dict(),
        "metrics": [m.to_dict() for m in summarize_stability(rows)],
        "rows": rows,
    }


@flow(name="dataset-floor")
def dataset_floor(
    dataset: str = "perov_5",
    split: str = "test",
    n: int = 16,
    relaxer: str = "chgnet",
    relaxer_settings: dict[str, Any] | None = None,
    home: str | None = None,
    chunk_size: int = 4,
    selection: FloorSelection = "first",
    seed: int = 0,
    ids: list[str] | None = None,
    protocol: ProtocolParameter = None,
) -> dict[str, Any]:
    """Relax true structures of a split as they are and compare them as samples.

    Parameters
    ----------
    dataset, split
        Where the structures come from (for CSP: the targets' split, so that the floor is the
        true structures of the compositions that were sampled).
    n
        Number of structures.
    relaxer, relaxer_settings
        The same relaxation stage as the models' rows (same settings hash).
    home
        Project directory.
    chunk_size
        Structures per relaxation task.
    selection, seed, ids
        Which structures (:func:`floor_structures`): by default the first ``n`` rows of the
        split, the targets of a CSP run over the first ``n`` compositions.
    protocol
        The models' relaxation protocol (default: the dataset's;
        :func:`flows.protocol_settings.protocol_spec`).

    Returns
    -------
    dict
        What :func:`relax_floor` returns.
    """
    [settings] = stage_settings(dataset, protocol, relaxer_settings)
    items = floor_structures(dataset, n, split=split, selection=selection, seed=seed, ids=ids)
    config = {"split": split, "n": n, "selection": "ids" if ids else selection, "seed": seed}
    return relax_floor(
        items,
        relaxer,
        settings,
        floor_provenance(dataset, config),
        home=home,
        chunk_size=chunk_size,
    )


__all__ = ["FloorSelection", "dataset_floor", "floor_structures", "relax_floor"]
