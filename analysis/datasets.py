"""Per-dataset evaluation constants: the COV cutoffs of each dataset.

COV cutoffs are CDVAE's ``COV_Cutoffs`` (metrics.md §5.4): mp20 δ_S 0.4 / δ_C 10, carbon and
perovskite 0.2 / 4. CDVAE defines none for MPTS-52; the MP-20 values are used for it and the
definition says so. The dataset registry of the data layer carries the same numbers
(``cov_struct_cutoff`` / ``cov_comp_cutoff``); a test keeps the two in agreement.
"""

from __future__ import annotations

COV_CUTOFFS: dict[str, tuple[float, float]] = {
    "perov_5": (0.2, 4.0),
    "carbon_24": (0.2, 4.0),
    "mp_20": (0.4, 10.0),
    "mpts_52": (0.4, 10.0),
}
"""Dataset -> (struct cutoff δ_S, comp cutoff δ_C)."""

CDVAE_NAMES = {"perov_5": "perovskite", "carbon_24": "carbon", "mp_20": "mp20", "mpts_52": None}
"""Dataset -> name of its entry in CDVAE's ``COV_Cutoffs`` (None: not defined there)."""


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
    if dataset not in COV_CUTOFFS:
        raise KeyError(f"no COV cutoffs for dataset {dataset!r}; known: {sorted(COV_CUTOFFS)}")
    upstream = CDVAE_NAMES.get(dataset)
    if upstream is None:
        source = "CDVAE COV_Cutoffs: none defined for this dataset upstream, MP-20 values used"
    else:
        source = f"CDVAE COV_Cutoffs[{upstream!r}]"
    return (*COV_CUTOFFS[dataset], source)
