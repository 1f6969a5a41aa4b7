"""The transcribed paper numbers equal an independent transcription
(../shared/reference/metrics.md), cell by cell, and every number cites its paper and table."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.paper_numbers import (
    DATASETS,
    GENERATION_METRICS,
    PAPER_NUMBERS,
    STATUS_WORDS,
    paper_for_model,
    paper_number,
)

MD_DATASETS = {
    "Perov-5": "perov_5",
    "Carbon-24": "carbon_24",
    "MP-20": "mp_20",
    "MPTS-52": "mpts_52",
}


def _tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown table rows (cells stripped, header and rule rows kept) by the last heading or
    bold line above them."""
    context, out = "", {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("#", "**")):
            context = stripped
        elif stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            out.setdefault(context, []).append(cells)
    return out


@pytest.fixture(scope="module")
def md_tables(shared_dir: Path) -> dict[str, list[list[str]]]:
    return _tables((shared_dir / "reference" / "metrics.md").read_text())


def _cell(value: float | None) -> str:
    return "–" if value is None else repr(value)


def _num(text: str) -> float | None:
    return None if text == "–" else float(text)


def _section(tables: dict[str, list[list[str]]], starts: str) -> list[list[str]]:
    [key] = [k for k in tables if k.startswith(starts)]
    header, _rule, *rows = tables[key]
    return [header, *rows]


def test_cdvae_reconstruction_table_matches_metrics_md(md_tables: dict) -> None:
    header, *rows = _section(md_tables, "**Reconstruction**")
    datasets = [MD_DATASETS[h] for h in header[1:]]
    checked = 0
    for method, *cells in rows:
        for dataset, cell in zip(datasets, cells, strict=True):
            parts = cell.split(" / ") if cell != "–" else ["–", "–"]
            for metric, part in zip(("match_rate", "rmse"), parts, strict=True):
                entry = paper_number(method.strip("*"), dataset, "reconstruction", metric)
                assert entry is not None, (method, dataset, metric)
                assert entry.value == _num(part), (method, dataset, metric, part)
                checked += 1
    assert checked == 3 * 3 * 2


def test_cdvae_generation_table_matches_metrics_md(md_tables: dict) -> None:
    header, *rows = _section(md_tables, "**Generation**")
    datasets = [MD_DATASETS[h] for h in header[1:]]
    checked = 0
    for method, *cells in rows:
        for dataset, cell in zip(datasets, cells, strict=True):
            parts = cell.split(" / ") if cell != "–" else ["–"] * 7
            for metric, part in zip(GENERATION_METRICS, parts, strict=True):
                entry = paper_number(method.strip("*"), dataset, "generation", metric)
                assert entry is not None and entry.value == _num(part), (method, dataset, metric)
                checked += 1
    assert checked == 5 * 3 * 7


def test_diffcsp_csp_table_matches_metrics_md(md_tables: dict) -> None:
    header, *rows = _section(md_tables, "### 6.2")
    datasets = [MD_DATASETS[h] for h in header[2:]]
    for method, k, *cells in rows:
        for dataset, cell in zip(datasets, cells, strict=True):
            for metric, part in zip(("match_rate", "rmse"), cell.split(" / "), strict=True):
                entry = paper_number(method.strip("*"), dataset, "csp", metric, int(k))
                assert entry is not None and entry.value == _num(part), (method, k, dataset)
    assert len(rows) == 12


def test_diffcsp_generation_table_matches_metrics_md(md_tables: dict) -> None:
    _header, *rows = _section(md_tables, "### 6.3")
    assert [r[0] for r in rows] == ["Perov-5", "Carbon-24", "MP-20"]
    for name, *cells in rows:
        for metric, part in zip(GENERATION_METRICS, cells, strict=True):
            entry = paper_for_model("diffcsp", MD_DATASETS[name], "generation", metric)
            assert entry is not None and entry.value == _num(part), (name, metric)


def test_dpcdvae_delta_e_statement_matches_metrics_md(shared_dir: Path) -> None:
    text = (shared_dir / "reference" / "metrics.md").read_text()
    entry = paper_for_model(
        "dpcdvae", "carbon_24", "relaxation_delta_e", "mean_delta_e_mev_per_atom_vs_cdvae"
    )
    assert entry is not None and entry.status == "stated"
    assert f"**{-entry.value} meV/atom lower**" in text
    assert (
        "100 generated carbon structures are relaxed with DFT" in text
        and "100 generated" in entry.note
    )


def test_untranscribed_results_are_unknown_not_invented() -> None:
    for model, task in (
        ("dpcdvae", "reconstruction"),
        ("dpcdvae", "generation"),
        ("continuousp", "csp"),
    ):
        for dataset in DATASETS:
            entry = paper_for_model(
                model, dataset, task, "match_rate" if task != "generation" else "cov_recall"
            )
            assert entry is not None and entry.status == "unknown" and entry.value is None
    # the table layout: one entry per (method, dataset, task, metric, k)
    keys = [(e.method, e.dataset, e.task, e.metric, e.k) for e in PAPER_NUMBERS]
    assert len(keys) == len(set(keys))
    # units: percentages convert to evaluate's fractions, the rest stays
    assert paper_for_model(
        "cdvae", "perov_5", "reconstruction", "match_rate"
    ).as_fraction() == pytest.approx(0.9752)
    assert paper_for_model("cdvae", "perov_5", "reconstruction", "rmse").as_fraction() == 0.0156
    assert paper_for_model("diffcsp", "mpts_52", "generation", "cov_recall") is None


def test_every_number_cites_a_paper_and_its_table_not_a_file() -> None:
    for entry in PAPER_NUMBERS:
        assert entry.status in STATUS_WORDS, entry
        # the paper (authors, venue or arXiv id) and where in it the number is
        assert "paper (" in entry.source and "arXiv" in entry.source, entry.source
        assert any(w in entry.source for w in ("Table ", "table", "abstract")), entry.source
        # never a path that only exists beside a development checkout
        for text in (entry.source, entry.note):
            assert "../" not in text and "metrics.md" not in text and ".png" not in text, text
    diffcsp = paper_for_model("diffcsp", "perov_5", "csp", "match_rate")
    assert diffcsp is not None and diffcsp.source.endswith("Table 1 (CSP)")
