"""Published numbers of the generators' papers, shipped with dftloop for comparison tables.

Every number is a :class:`PaperNumber` with the paper and table it comes from (``source``) and a
``status`` saying what it is: ``"published"`` (printed in a table of the paper), ``"stated"``
(stated in the paper's text, e.g. DP-CDVAE's ΔE in its abstract) or ``"unknown"`` (the paper has
such a result but its table is not transcribed in dftloop: the value is ``None`` and must not be
filled in from memory). Values are kept **as printed** (percentages in %, RMSE and Wasserstein
distances as they are); :meth:`PaperNumber.as_fraction` converts percentages to the fractions
that ``analysis.evaluate`` returns. A "–" in a paper table is ``None`` with
``status="published"``.

The tables are written below in the row layout of the papers (method, dataset, the cells of one
table row split on " / "); ``tests/analysis/test_paper_numbers.py`` compares every transcribed
cell with an independent transcription.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["published", "stated", "unknown"]

STATUS_WORDS: dict[str, str] = {
    "published": "printed in the paper",
    "stated": "stated in the paper's text",
    "unknown": "not transcribed in dftloop, so not compared",
}
"""How each status reads in a table's list of sources."""

DATASETS: tuple[str, ...] = ("perov_5", "carbon_24", "mp_20", "mpts_52")
"""Dataset names of this project, in the column order of the papers' tables."""

PERCENT_METRICS: frozenset[str] = frozenset(
    {"match_rate", "struct_validity", "comp_validity", "cov_recall", "cov_precision"}
)
"""Metrics the papers print in percent (``analysis.evaluate`` returns fractions)."""

GENERATION_METRICS: tuple[str, ...] = (
    "struct_validity",
    "comp_validity",
    "cov_recall",
    "cov_precision",
    "wdist_density",
    "wdist_prop",
    "wdist_num_elems",
)
"""Column order of the generation tables (Struc. / Comp. / COV-R / COV-P / d_ρ / d_E / d_elem),
named by the ``analysis.evaluate.evaluate_samples`` keys."""

CDVAE_PAPER = "CDVAE paper (Xie et al., ICLR 2022, arXiv 2110.06197)"
DIFFCSP_PAPER = "DiffCSP paper (Jiao et al., NeurIPS 2023, arXiv 2309.04475)"
DPCDVAE_PAPER = "DP-CDVAE paper (Pakornchote et al., Sci. Rep. 14:1275, 2024, arXiv 2308.02165)"
CONTINUOUSP_PAPER = "ContinuouSP paper (Tone et al., arXiv 2502.02026)"

CDVAE_RECON_SOURCE = f"{CDVAE_PAPER}, reconstruction table (match rate / RMSE)"
CDVAE_GEN_SOURCE = f"{CDVAE_PAPER}, generation table (validity, COV, property distances)"
DIFFCSP_CSP_SOURCE = f"{DIFFCSP_PAPER}, Table 1 (CSP)"
DIFFCSP_GEN_SOURCE = f"{DIFFCSP_PAPER}, Table 4 (ab initio generation, DiffCSP-C)"
DPCDVAE_SOURCE = f"{DPCDVAE_PAPER}, abstract"
DPCDVAE_TABLES_SOURCE = f"{DPCDVAE_PAPER}, reconstruction and generation tables"
CONTINUOUSP_SOURCE = f"{CONTINUOUSP_PAPER}, CSP results table"


@dataclass(frozen=True)
class PaperNumber:
    """One published number.

    Attributes
    ----------
    method
        The method as the paper's table names it (``"CDVAE"``, ``"DiffCSP"``, ``"FTCP"``...).
    dataset
        Project dataset name (``perov_5``, ``carbon_24``, ``mp_20``, ``mpts_52``).
    task
        ``reconstruction``, ``csp``, ``generation`` or ``relaxation_delta_e``.
    metric
        The ``analysis`` metric key (``match_rate``, ``rmse``, ``cov_recall``...), or
        ``mean_delta_e_mev_per_atom_vs_cdvae`` for DP-CDVAE's statement.
    value
        The number as printed (percent for :data:`PERCENT_METRICS`); ``None`` for "–" or a
        number that is not transcribed (``status="unknown"``).
    source
        Paper and table.
    status
        ``published``, ``stated`` or ``unknown`` (see :data:`STATUS_WORDS`).
    k
        Candidates per target for CSP (1 or 20 in DiffCSP's Table 1), else ``None``.
    note
        Anything needed to read the number correctly.
    printed
        The cell text exactly as the paper prints it (``"0.0760"``, ``"–"``), for display.
    """

    method: str
    dataset: str
    task: str
    metric: str
    value: float | None
    source: str
    status: Status = "published"
    k: int | None = None
    note: str = ""
    printed: str = ""

    @property
    def unit(self) -> str:
        """``"%"`` for percentages, ``"meV/atom"`` for ΔE, else ``""``."""
        if self.metric in PERCENT_METRICS:
            return "%"
        return "meV/atom" if "delta_e" in self.metric else ""

    def as_fraction(self) -> float | None:
        """The value in ``analysis.evaluate`` units (percentages divided by 100)."""
        if self.value is None:
            return None
        return self.value / 100.0 if self.metric in PERCENT_METRICS else self.value


def _num(cell: str) -> float | None:
    cell = cell.strip()
    return None if cell in ("–", "-", "") else float(cell)


# CDVAE paper, reconstruction table: method -> cells per dataset (Perov-5, Carbon-24, MP-20)
_CDVAE_RECON: dict[str, tuple[str, str, str]] = {
    "FTCP": ("99.34 / 0.0259", "62.28 / 0.2563", "69.89 / 0.1593"),
    "Cond-DFC-VAE": ("51.65 / 0.0217", "–", "–"),
    "CDVAE": ("97.52 / 0.0156", "55.22 / 0.1251", "45.43 / 0.0356"),
}

# CDVAE paper, generation table (Struc.% / Comp.% / COV-R / COV-P / d_ρ / d_E / d_elem)
_CDVAE_GEN: dict[str, tuple[str, str, str]] = {
    "FTCP": (
        "0.24 / 54.24 / 0.00 / 0.00 / 10.27 / 156.0 / 0.6297",
        "0.08 / – / 0 / 0 / 5.206 / 19.05 / –",
        "1.55 / 48.37 / 4.72 / 0.09 / 23.71 / 160.9 / 0.7363",
    ),
    "Cond-DFC-VAE": ("73.60 / 82.95 / 73.92 / 10.13 / 2.268 / 4.111 / 0.8373", "–", "–"),
    "G-SchNet": (
        "99.92 / 98.79 / 0.18 / 0.23 / 1.625 / 4.746 / 0.03684",
        "99.94 / – / 0 / 0 / 0.9427 / 1.320 / –",
        "99.65 / 75.96 / 38.33 / 99.57 / 3.034 / 42.09 / 0.6411",
    ),
    "P-G-SchNet": (
        "79.63 / 99.13 / 0.37 / 0.25 / 0.2755 / 1.388 / 0.4552",
        "48.39 / – / 0 / 0 / 1.533 / 134.7 / –",
        "77.51 / 76.40 / 41.93 / 99.74 / 4.04 / 2.448 / 0.6234",
    ),
    "CDVAE": (
        "100.0 / 98.59 / 99.45 / 98.46 / 0.1258 / 0.0264 / 0.0628",
        "100.0 / – / 99.80 / 83.08 / 0.1407 / 0.2850 / –",
        "100.0 / 86.70 / 99.15 / 99.49 / 0.6875 / 0.2778 / 1.432",
    ),
}

# DiffCSP paper, Table 1: (method, k) -> cells (Perov-5, Carbon-24, MP-20, MPTS-52)
_DIFFCSP_CSP: dict[tuple[str, int], tuple[str, str, str, str]] = {
    ("RS", 20): ("29.22 / 0.2924", "14.63 / 0.4041", "8.73 / 0.2501", "2.05 / 0.3329"),
    ("RS", 5000): ("36.56 / 0.0886", "14.63 / 0.4041", "11.49 / 0.2822", "2.68 / 0.3444"),
    ("BO", 20): ("21.03 / 0.2830", "0.44 / 0.3653", "8.11 / 0.2402", "2.05 / 0.3024"),
    ("BO", 5000): ("55.09 / 0.2037", "12.17 / 0.4089", "12.68 / 0.2816", "6.69 / 0.3444"),
    ("PSO", 20): ("20.90 / 0.0836", "6.40 / 0.4204", "4.05 / 0.1567", "1.06 / 0.2339"),
    ("PSO", 5000): ("21.88 / 0.0844", "6.50 / 0.4211", "4.35 / 0.1670", "1.09 / 0.2390"),
    ("P-cG-SchNet", 1): ("48.22 / 0.4179", "17.29 / 0.3846", "15.39 / 0.3762", "3.67 / 0.4115"),
    ("P-cG-SchNet", 20): ("97.94 / 0.3463", "55.91 / 0.3551", "32.64 / 0.3018", "12.96 / 0.3942"),
    ("CDVAE (CSP-adapted)", 1): (
        "45.31 / 0.1138",
        "17.09 / 0.2969",
        "33.90 / 0.1045",
        "5.34 / 0.2106",
    ),
    ("CDVAE (CSP-adapted)", 20): (
        "88.51 / 0.0464",
        "88.37 / 0.2286",
        "66.95 / 0.1026",
        "20.79 / 0.2085",
    ),
    ("DiffCSP", 1): ("52.02 / 0.0760", "17.54 / 0.2759", "51.49 / 0.0631", "12.19 / 0.1786"),
    ("DiffCSP", 20): ("98.60 / 0.0128", "88.47 / 0.2192", "77.93 / 0.0492", "34.02 / 0.1749"),
}

# DiffCSP paper, Table 4 (DiffCSP-C): dataset -> cells in GENERATION_METRICS order
_DIFFCSP_GEN: dict[str, tuple[str, ...]] = {
    "perov_5": ("100.0", "98.85", "99.74", "98.27", "0.1110", "0.0263", "0.0128"),
    "carbon_24": ("100.0", "–", "99.90", "97.27", "0.0805", "0.0820", "–"),
    "mp_20": ("100.0", "83.25", "99.71", "99.76", "0.3502", "0.1247", "0.3398"),
}


def _build() -> tuple[PaperNumber, ...]:
    out: list[PaperNumber] = []
    three = DATASETS[:3]
    for method, cells in _CDVAE_RECON.items():
        for dataset, cell in zip(three, cells, strict=True):
            parts = cell.split(" / ") if cell != "–" else ["–", "–"]
            for metric, part in zip(("match_rate", "rmse"), parts, strict=True):
                out.append(
                    PaperNumber(
                        method, dataset, "reconstruction", metric, _num(part), CDVAE_RECON_SOURCE
                    )
                )
    for method, cells in _CDVAE_GEN.items():
        for dataset, cell in zip(three, cells, strict=True):
            parts = cell.split(" / ") if cell != "–" else ["–"] * len(GENERATION_METRICS)
            for metric, part in zip(GENERATION_METRICS, parts, strict=True):
                out.append(
                    PaperNumber(
                        method,
                        dataset,
                        "generation",
                        metric,
                        _num(part),
                        CDVAE_GEN_SOURCE,
                        printed=part,
                    )
                )
    for (method, k), cells in _DIFFCSP_CSP.items():
        for dataset, cell in zip(DATASETS, cells, strict=True):
            for metric, part in zip(("match_rate", "rmse"), cell.split(" / "), strict=True):
                out.append(
                    PaperNumber(
                        method,
                        dataset,
                        "csp",
                        metric,
                        _num(part),
                        DIFFCSP_CSP_SOURCE,
                        k=k,
                        printed=part,
                    )
                )
    for dataset, cells in _DIFFCSP_GEN.items():
        for metric, part in zip(GENERATION_METRICS, cells, strict=True):
            out.append(
                PaperNumber(
                    "DiffCSP",
                    dataset,
                    "generation",
                    metric,
                    _num(part),
                    DIFFCSP_GEN_SOURCE,
                    printed=part,
                    note=(
                        "DiffCSP-C (continuous one-hot types); 10,000 samples, "
                        "properties on 1,000 valid ones"
                    ),
                )
            )
    out.append(
        PaperNumber(
            "DP-CDVAE",
            "carbon_24",
            "relaxation_delta_e",
            "mean_delta_e_mev_per_atom_vs_cdvae",
            -68.1,
            DPCDVAE_SOURCE,
            status="stated",
            printed="68.1 meV/atom lower",
            note=(
                "ΔE = E(generated) − E(DFT-relaxed) is on average 68.1 meV/atom lower for "
                "DP-CDVAE than for CDVAE (100 generated carbon structures relaxed with DFT; "
                "the abstract does not give the DFT code and settings)"
            ),
        )
    )
    for dataset in DATASETS:
        for task, metrics in (
            ("reconstruction", ("match_rate", "rmse")),
            ("generation", GENERATION_METRICS),
        ):
            for metric in metrics:
                out.append(
                    PaperNumber(
                        "DP-CDVAE",
                        dataset,
                        task,
                        metric,
                        None,
                        DPCDVAE_TABLES_SOURCE,
                        status="unknown",
                        note="the abstract calls the results 'statistically comparable' to "
                        "CDVAE's; the tables are not transcribed",
                    )
                )
        for metric in ("match_rate", "rmse"):
            out.append(
                PaperNumber(
                    "ContinuouSP",
                    dataset,
                    "csp",
                    metric,
                    None,
                    CONTINUOUSP_SOURCE,
                    status="unknown",
                    note="the CSP results table is not transcribed",
                )
            )
    return tuple(out)


PAPER_NUMBERS: tuple[PaperNumber, ...] = _build()
"""Every transcribed number (and every known but untranscribed one, with ``status="unknown"``)."""

MODEL_METHODS: dict[str, dict[str, tuple[str, int | None]]] = {
    "diffcsp": {"csp": ("DiffCSP", 1), "generation": ("DiffCSP", None)},
    "cdvae": {"reconstruction": ("CDVAE", None), "generation": ("CDVAE", None)},
    "dpcdvae": {
        "reconstruction": ("DP-CDVAE", None),
        "generation": ("DP-CDVAE", None),
        "relaxation_delta_e": ("DP-CDVAE", None),
    },
    "continuousp": {"csp": ("ContinuouSP", None)},
}
"""Which paper row stands beside each of our generators, per task (CSP compares k = 1, the way
the nightly table samples)."""


def paper_number(
    method: str, dataset: str, task: str, metric: str, k: int | None = None
) -> PaperNumber | None:
    """Return the transcribed number, or ``None`` if the papers have no such entry.

    Parameters
    ----------
    method
        Method name as in the paper's table (``"DiffCSP"``, ``"CDVAE"``...).
    dataset, task, metric
        Project dataset name, task and metric key.
    k
        Candidates per target (CSP only).

    Returns
    -------
    PaperNumber or None
    """
    for entry in PAPER_NUMBERS:
        if (entry.method, entry.dataset, entry.task, entry.metric, entry.k) == (
            method,
            dataset,
            task,
            metric,
            k,
        ):
            return entry
    return None


def paper_for_model(model: str, dataset: str, task: str, metric: str) -> PaperNumber | None:
    """Return the paper's number for one of our generators (see :data:`MODEL_METHODS`).

    Parameters
    ----------
    model
        ``diffcsp``, ``cdvae``, ``dpcdvae`` or ``continuousp``.
    dataset, task, metric
        As in :func:`paper_number`.

    Returns
    -------
    PaperNumber or None
        ``None`` when the papers have no entry for it (not when a number is not transcribed:
        that is an entry with ``status="unknown"``).
    """
    method, k = MODEL_METHODS.get(model, {}).get(task, (None, None))
    if method is None:
        return None
    return paper_number(method, dataset, task, metric, k)
