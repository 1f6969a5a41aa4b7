"""The dataset's own floor: the same relaxer applied to true structures of the dataset.

A generated structure's ΔE and RMSD to its relaxed state only mean something beside what the
same relaxer, with the same settings, does to the dataset's own structures: the force field
does not place a DFT-relaxed crystal at its own minimum, so even the true structures move.
:func:`dataset_floor` relaxes the first ``n`` structures of a split unchanged (no rattle) through
the same relaxation stage and analysis as the samples, and returns the same per-structure rows
and summary metrics, to be printed as a ``dataset`` row beside each model's.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import analyze, default_sample_dir
from flows.relax_stage import relax_samples
from flows.store import Provenance
from flows.tasks import load_sample_items, store_samples_task


@flow(name="dataset-floor")
def dataset_floor(
    dataset: str = "perov_5",
    split: str = "test",
    n: int = 16,
    relaxer: str = "chgnet",
    relaxer_settings: dict[str, Any] | None = None,
    home: str | None = None,
    chunk_size: int = 4,
) -> dict[str, Any]:
    """Relax the first ``n`` structures of a split as they are and compare them as samples.

    Parameters
    ----------
    dataset, split
        Where the structures come from (for CSP: the targets' split, so that the floor is the
        true structures of the compositions that were sampled).
    n
        Number of structures (the first ``n`` rows of the split).
    relaxer, relaxer_settings
        The same relaxation stage as the models' rows (same settings hash).
    home
        Project directory.
    chunk_size
        Structures per relaxation task.

    Returns
    -------
    dict
        ``sample_dir``, ``stage`` (relaxation summary), ``metrics`` and ``rows`` as
        :func:`flows.pipeline.analyze` returns them, for the ``dataset`` row.
    """
    from flows.smoke_model import SMOKE_MODEL, sample_from_dataset

    extra = {"split": split, "rattle": 0.0, "role": "floor"}
    out = default_sample_dir(home, SMOKE_MODEL, dataset, n, 0, None, extra)
    if not (out / "index.json").is_file():
        sample_from_dataset(dataset, n, out, split=split, rattle=0.0, seed=0)
    provenance = Provenance(model=SMOKE_MODEL, dataset=dataset, config=extra)
    store_samples_task(str(out), provenance.__dict__, home)
    items, errors = load_sample_items(str(out))
    if errors:
        get_run_logger().warning("%d dataset structures unreadable: %s", len(errors), errors[:3])
    stage = relax_samples(
        items, relaxer, relaxer_settings, provenance, home=home, chunk_size=chunk_size
    )
    result = analyze(str(out), relaxer, relaxer_settings, home=home, publish=False)
    return {
        "sample_dir": str(out),
        "stage": stage.as_dict(),
        "metrics": result["metrics"],
        "rows": result["rows"],
    }


__all__ = ["dataset_floor"]
