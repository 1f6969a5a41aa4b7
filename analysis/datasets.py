"""Per-dataset evaluation constants, read from ``generators.data.DATASETS`` when it has them.

COV cutoffs are CDVAE's ``COV_Cutoffs`` (metrics.md §5.4): mp20 δ_S 0.4 / δ_C 10, carbon and
perovskite 0.2 / 4. CDVAE defines none for MPTS-52; the MP-20 values are used for it and the
definition says so. The values come from ``generators.data.DATASETS[name]`` (``cov_struct_cutoff`` /
``cov_comp_cutoff``); the local table below is only a fallback for when the data layer cannot be
imported, and the definition records which source was used.
"""

from __future__ import annotations

from typing import Any

COV_CUTOFFS: dict[str, tuple[float, float]] = {
    "perov_5": (0.2, 4.0),
    "carbon_24": (0.2, 4.0),
    "mp_20": (0.4, 10.0),
    "mpts_52": (0.4, 10.0),
}
"""Dataset -> (struct cutoff δ_S, comp cutoff δ_C)."""

CDVAE_NAMES = {"perov_5": "perovskite", "carbon_24": "carbon", "mp_20": "mp20", "mpts_52": None}
"""Dataset -> name of its entry in CDVAE's ``COV_Cutoffs`` (None: not defined there)."""


def _from_data_layer(dataset: str) -> tuple[float, float] | None:
    try:
        from generators.data import DATASETS  # type: ignore[attr-defined]
    except Exception:
        return None
    info: Any = DATASETS.get(dataset) if hasattr(DATASETS, "get") else None
    if info is None:
        return None
    for struct_attr, comp_attr in (
        ("cov_struct_cutoff", "cov_comp_cutoff"),
        ("cov_cutoff_struct", "cov_cutoff_comp"),
    ):
        if hasattr(info, struct_attr) and hasattr(info, comp_attr):
            return float(getattr(info, struct_attr)), float(getattr(info, comp_attr))
    cutoffs = getattr(info, "cov_cutoffs", None)
    if isinstance(cutoffs, dict):
        struct = cutoffs.get("struc", cutoffs.get("struct", cutoffs.get("structure")))
        comp = cutoffs.get("comp", cutoffs.get("composition"))
        if struct is not None and comp is not None:
            return float(struct), float(comp)
    if isinstance(cutoffs, tuple | list) and len(cutoffs) == 2:
        return float(cutoffs[0]), float(cutoffs[1])
    return None


def _published(dataset: str) -> bool:
    try:
        from generators.data import DATASETS
    except Exception:
        return CDVAE_NAMES.get(dataset) is not None
    return bool(getattr(DATASETS.get(dataset), "cov_cutoffs_published", True))


def cov_cutoffs(dataset: str) -> tuple[float, float, str]:
    """COV cutoffs of a dataset.

    Parameters
    ----------
    dataset
        ``perov_5``, ``carbon_24``, ``mp_20`` or ``mpts_52``.

    Returns
    -------
    tuple
        ``(struct_cutoff, comp_cutoff, source)``.

    Raises
    ------
    KeyError
        For a dataset without cutoffs.
    """
    found = _from_data_layer(dataset)
    if found is not None:
        source = "generators.data.DATASETS"
        if not _published(dataset):
            source += " (flagged there as not published upstream: borrowed values)"
        return found[0], found[1], source
    if dataset not in COV_CUTOFFS:
        raise KeyError(f"no COV cutoffs for dataset {dataset!r}; known: {sorted(COV_CUTOFFS)}")
    source = "analysis.datasets.COV_CUTOFFS (CDVAE COV_Cutoffs"
    if CDVAE_NAMES.get(dataset) is None:
        source += "; none defined for this dataset upstream, MP-20 values used"
    return (*COV_CUTOFFS[dataset], source + ")")
