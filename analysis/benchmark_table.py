"""The nightly benchmark table: per-generator rows → paper numbers beside ours → markdown.

Pure functions, no Prefect and no I/O except :func:`write_docs_block`. The rows come from the
``nightly-benchmark`` flow (:mod:`flows.nightly`): one dict per generator with the metric keys of
:data:`COLUMNS` (fractions for rates, as ``analysis.evaluate`` returns them), a ``status`` and a
``notes`` dict ``{column key or stage: reason}`` saying why a value is missing. The paper
numbers come from :mod:`analysis.paper_numbers`.

In the markdown every metric cell reads ``ours / paper`` when the papers have an entry for that
generator, dataset and metric (:data:`UNKNOWN_CELL` when the paper's number is not transcribed in
dftloop, ``–`` when the paper prints a dash), and ``ours`` alone otherwise. Rates are shown in
percent, as in the papers. A list under the table cites the paper and table of every number.

The relaxation column is ``ΔE`` where the samples were relaxed at zero pressure and ``ΔH``
(enthalpy ``H = E + pV`` per atom) where they were relaxed at ``p ≠ 0`` (a row's
``energy_quantity``), as in the stability experiment's report.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.paper_numbers import PERCENT_METRICS, STATUS_WORDS, PaperNumber, paper_for_model

UNKNOWN_CELL = "unknown"
"""Paper side of a cell whose published number is not transcribed in dftloop (DP-CDVAE's
reconstruction and generation tables, ContinuouSP's CSP table)."""

MATCH_TASK: dict[str, str] = {
    "diffcsp": "csp",
    "continuousp": "csp",
    "cdvae": "reconstruction",
    "dpcdvae": "reconstruction",
}
"""How each generator's match rate / RMSE is measured: CSP for DiffCSP and ContinuouSP (one
candidate per test structure), reconstruction (encode → decode) for the CDVAE family."""

MATCH_PROTOCOL: dict[str, str] = {
    "diffcsp": "diffcsp",
    "continuousp": "continuousp",
    "cdvae": "cdvae",
    "dpcdvae": "cdvae",
}
"""The ``analysis.matching`` protocol each generator's paper evaluates with."""


@dataclass(frozen=True)
class Column:
    """One metric column of the table.

    Attributes
    ----------
    key
        Row key (an ``analysis`` metric name).
    label
        Markdown header; ``{e}`` stands for the energy quantity, ``E`` or ``H``
        (:meth:`header`).
    task
        Paper task whose number stands beside ours (``"match"`` = the generator's
        :data:`MATCH_TASK`; ``None``: no paper number).
    digits
        Decimals shown (after conversion to percent for rates).
    """

    key: str
    label: str
    task: str | None
    digits: int

    def header(self, energy: str = "E") -> str:
        """The markdown header with ``energy`` (``"E"`` or ``"H"``) in place of ``{e}``."""
        return self.label.format(e=energy)


COLUMNS: tuple[Column, ...] = (
    Column("match_rate", "match %", "match", 2),
    Column("rmse", "RMSE", "match", 4),
    Column("struct_validity", "struct. valid %", "generation", 2),
    Column("comp_validity", "comp. valid %", "generation", 2),
    Column("cov_recall", "COV-R %", "generation", 2),
    Column("cov_precision", "COV-P %", "generation", 2),
    Column("wdist_density", "d_ρ", "generation", 4),
    Column("wdist_num_elems", "d_elem", "generation", 4),
    Column("mean_delta_e_mev_per_atom", "Δ{e} meV/atom", None, 1),
    Column("mean_rmsd_to_relaxed", "RMSD to relaxed", None, 4),
    Column("sun_rate", "S.U.N. %", None, 2),
)
"""The metric columns, in order."""


def table_energy_quantity(rows: Sequence[dict[str, Any]]) -> str:
    """``"H"`` when any row's relaxations ran at ``p ≠ 0`` (its ``energy_quantity``), else ``"E"``.

    The rule of the stability report's column names
    (:func:`analysis.stability_experiment.energy_quantity`).
    """
    from analysis.stability_experiment import energy_quantity

    return energy_quantity(rows)


EXTRA_PERCENT = frozenset({"sun_rate", "match_rate_to_relaxed"})
"""Our rates that are not paper metrics, shown in percent too."""


def paper_entry(model: str, dataset: str, column: Column) -> PaperNumber | None:
    """Return the paper's number that stands beside ``column`` for ``model`` on ``dataset``.

    Parameters
    ----------
    model
        Generator name.
    dataset
        Dataset name.
    column
        A column of :data:`COLUMNS`.

    Returns
    -------
    PaperNumber or None
        ``None`` when the papers have nothing to compare with.
    """
    if column.task is None:
        return None
    task = MATCH_TASK.get(model, "csp") if column.task == "match" else column.task
    return paper_for_model(model, dataset, task, column.key)


def _is_percent(key: str) -> bool:
    return key in PERCENT_METRICS or key in EXTRA_PERCENT


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def format_value(key: str, value: Any, digits: int) -> str:
    """Format one of our values (a fraction for rates) for the markdown table.

    Parameters
    ----------
    key
        Metric key (rates are shown ×100).
    value
        The value; ``None``/NaN/non-numbers give ``"–"``.
    digits
        Decimals.

    Returns
    -------
    str
    """
    number = _finite(value)
    if number is None:
        return "–"
    if _is_percent(key):
        number *= 100.0
    return f"{number:.{digits}f}"


def format_paper(entry: PaperNumber | None) -> str | None:
    """Format a paper number as printed (:data:`UNKNOWN_CELL` not transcribed, ``–`` a dash)."""
    if entry is None:
        return None
    if entry.status == "unknown":
        return UNKNOWN_CELL
    if entry.printed:
        return entry.printed
    return "–" if entry.value is None else f"{entry.value:g}"


def with_paper(rows: Sequence[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    """Return flat rows for a table artifact: ours and ``<key>_paper`` side by side.

    Parameters
    ----------
    rows
        Generator rows of the nightly flow.
    dataset
        Dataset name (for the paper lookup).

    Returns
    -------
    list of dict
        ``model``, ``status``, ``n_samples``, then per column ``<key>`` (ours, rates in percent,
        rounded) and ``<key>_paper`` (the printed number or :data:`UNKNOWN_CELL`; absent when
        the papers have nothing to compare with), ``energy_quantity`` (``"H"``: the relaxation
        column is ΔH), ``notes`` and ``seconds``.
    """
    out = []
    for row in rows:
        flat: dict[str, Any] = {
            "model": row.get("model"),
            "status": row.get("status"),
            "n_samples": row.get("n_samples"),
        }
        for column in COLUMNS:
            number = _finite(row.get(column.key))
            if number is not None and _is_percent(column.key):
                number *= 100.0
            flat[column.key] = None if number is None else round(number, column.digits + 2)
            entry = paper_entry(str(row.get("model")), dataset, column)
            if entry is not None:
                flat[f"{column.key}_paper"] = format_paper(entry)
        flat["energy_quantity"] = row.get("energy_quantity")
        flat["notes"] = notes_text(row)
        flat["seconds"] = row.get("seconds")
        out.append(flat)
    return out


def notes_text(row: dict[str, Any]) -> str:
    """Join a row's ``notes`` dict into one ``"stage: reason; ..."`` string."""
    notes = row.get("notes") or {}
    return "; ".join(f"{k}: {v}" for k, v in notes.items())


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    rows: Sequence[dict[str, Any]],
    dataset: str,
    scale: str,
    *,
    preamble: Sequence[str] = (),
) -> str:
    """Render the nightly table of one (dataset, scale) as markdown.

    Parameters
    ----------
    rows
        Generator rows of the nightly flow.
    dataset, scale
        What the table is about (heading).
    preamble
        Lines written under the heading (command, load, date...).

    Returns
    -------
    str
        A heading, the preamble, the table (``ours / paper`` cells; the relaxation column is ΔH
        when the rows' relaxations ran at ``p ≠ 0``, :func:`table_energy_quantity`), the notes
        per generator, the DP-CDVAE − CDVAE ΔE (ΔH) comparison and the sources of the paper
        numbers.
    """
    lines = [f"### Nightly benchmark: {dataset}, {scale}", ""]
    if preamble:
        lines += [*preamble, ""]
    energy = table_energy_quantity(rows)
    header = ["model", "status", "n", *(c.header(energy) for c in COLUMNS), "s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    sources: dict[str, PaperNumber] = {}
    for row in rows:
        model = str(row.get("model"))
        cells = [model, _md_escape(_short_status(row.get("status"))), _int(row.get("n_samples"))]
        for column in COLUMNS:
            ours = format_value(column.key, row.get(column.key), column.digits)
            entry = paper_entry(model, dataset, column)
            paper = format_paper(entry)
            if entry is not None:
                sources.setdefault(f"{entry.method} ({entry.task}): {entry.source}", entry)
            cells.append(ours if paper is None else f"{ours} / {paper}")
        cells.append(_int(row.get("seconds")))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Cells read `ours / paper` where the paper has a number (listed with its table below; "
        f"`{UNKNOWN_CELL}`: the paper reports it but dftloop does not carry the number, so "
        "there is nothing to compare with; `–`: no value). Rates in %."
    )
    noted = [r for r in rows if r.get("notes") or _long_status(r.get("status"))]
    if noted:
        lines += ["", "Notes:"]
        for row in noted:
            text = notes_text(row)
            status = _long_status(row.get("status"))
            joined = "; ".join(t for t in (status, text) if t)
            lines.append(f"- {row.get('model')}: {_md_escape(joined)}")
    comparison = delta_e_comparison(rows, dataset)
    if comparison:
        lines += ["", comparison]
    if sources:
        lines += ["", "Paper numbers:"]
        for text, entry in sources.items():
            extra = f" ({entry.note})" if entry.note and entry.status != "unknown" else ""
            k = f", k = {entry.k}" if entry.k else ""
            status = STATUS_WORDS.get(entry.status, entry.status)
            lines.append(f"- {text}{k}: {status}{extra}")
    return "\n".join(lines) + "\n"


def delta_e_comparison(rows: Sequence[dict[str, Any]], dataset: str) -> str | None:
    """Return the DP-CDVAE − CDVAE mean ΔE (ΔH at ``p ≠ 0``) line with the paper's statement.

    Parameters
    ----------
    rows
        Generator rows.
    dataset
        Dataset name (the paper's figure is for carbon_24 only).

    Returns
    -------
    str or None
        ``None`` unless both models have a mean and the paper's figure is known.
    """
    by_model = {r.get("model"): r for r in rows}
    dp = _finite((by_model.get("dpcdvae") or {}).get("mean_delta_e_mev_per_atom"))
    cd = _finite((by_model.get("cdvae") or {}).get("mean_delta_e_mev_per_atom"))
    paper = paper_for_model(
        "dpcdvae", "carbon_24", "relaxation_delta_e", "mean_delta_e_mev_per_atom_vs_cdvae"
    )
    if dp is None or cd is None or paper is None:
        return None
    where = "" if dataset == "carbon_24" else " (the paper's figure is for carbon_24)"
    relaxed_with = by_model["dpcdvae"].get("relaxer") or "the relaxer"
    q = table_energy_quantity([by_model["dpcdvae"], by_model["cdvae"]])
    return (
        f"Δ{q}(DP-CDVAE) − Δ{q}(CDVAE), mean: ours {dp - cd:+.1f} meV/atom ({relaxed_with}); "
        f"paper {paper.value:+.1f} meV/atom (DFT){where}"
        + (
            " (the paper's figure is ΔE; its pressure and settings are not stated)"
            if q == "H"
            else ""
        )
        + "."
    )


def _int(value: Any) -> str:
    number = _finite(value)
    return "–" if number is None else str(round(number))


def _short_status(status: Any) -> str:
    text = str(status or "?")
    if ":" in text:
        return text.split(":")[0]
    return text if len(text) <= 40 else text[:39] + "…"


def _long_status(status: Any) -> str:
    text = str(status or "")
    return text if text and text != _short_status(status) else ""


def marker(dataset: str, scale: str, end: bool = False) -> str:
    """Return the docs marker ``<!-- nightly:<dataset>:<scale>:start|end -->``."""
    return f"<!-- nightly:{dataset}:{scale}:{'end' if end else 'start'} -->"


def replace_docs_block(text: str, dataset: str, scale: str, block: str) -> str:
    """Put ``block`` between the (dataset, scale) markers of ``text``, replacing what was there.

    Parameters
    ----------
    text
        The document (``docs/benchmarks.md``).
    dataset, scale
        Which block.
    block
        Markdown to put between the markers.

    Returns
    -------
    str
        The document with the block replaced; without markers, the block (with its markers) is
        appended at the end. Other blocks and the rest of the text are unchanged.

    Raises
    ------
    ValueError
        If only one of the two markers is present, or the end marker comes first.
    """
    start, end = marker(dataset, scale), marker(dataset, scale, end=True)
    wrapped = f"{start}\n{block.rstrip()}\n{end}"
    has_start, has_end = start in text, end in text
    if not has_start and not has_end:
        head = text.rstrip("\n")
        return (head + "\n\n" if head else "") + wrapped + "\n"
    if has_start != has_end or text.index(start) > text.index(end):
        raise ValueError(f"docs: the markers {start} / {end} are unbalanced; fix the file by hand")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    return pattern.sub(lambda _m: wrapped, text, count=1)


def write_docs_block(path: str | Path, dataset: str, scale: str, block: str) -> Path:
    """Replace the (dataset, scale) block of the markdown file at ``path`` (created if missing).

    Parameters
    ----------
    path
        The markdown file.
    dataset, scale
        Which block.
    block
        Its new content.

    Returns
    -------
    Path
        ``path``.
    """
    target = Path(path)
    text = target.read_text() if target.exists() else ""
    target.write_text(replace_docs_block(text, dataset, scale, block))
    return target
