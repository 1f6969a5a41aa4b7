"""``dftloop data ...`` through typer's CliRunner."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from flows.cli import app

from .conftest import TEST_KEY

runner = CliRunner()


def test_list_shows_every_split_and_where(data_dir):
    result = runner.invoke(app, ["data", "list", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    out = result.output
    for name in ("perov_5", "carbon_24", "mp_20", "mpts_52"):
        assert name in out
    assert "missing" in out  # mpts_52 train
    assert "pilot subset" in out
    assert "FLAGGED" in out


def test_show_summarises_a_split(data_dir):
    result = runner.invoke(
        app,
        ["data", "show", "perov_5", "--split", "val", "--limit", "8", "--data-dir", str(data_dir)],
    )
    assert result.exit_code == 0, result.output
    assert "rows 8  structures 8  errors 0" in result.output
    assert "atoms per cell" in result.output
    assert re.search(r"│\s*5\s*│\s*8\s*│", result.output)  # every Perov-5 cell has 5 atoms


def test_show_missing_split_fails_clearly(tmp_path):
    result = runner.invoke(
        app, ["data", "show", "mpts_52", "--split", "train", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "dftloop data fetch mpts_52" in result.output


def test_fetch_verifies_present_files(data_dir):
    result = runner.invoke(app, ["data", "fetch", "carbon_24", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.count("verified") == 3


def test_fetch_unknown_dataset(data_dir):
    result = runner.invoke(app, ["data", "fetch", "perov_6"])
    assert result.exit_code == 1 and "unknown dataset" in result.output


def test_fetch_mp_end_to_end(fake_mp, tmp_path, monkeypatch):
    monkeypatch.setenv("MP_API_KEY", TEST_KEY)
    out = tmp_path / "mp"
    args = ["data", "fetch-mp", "--out", str(out), "--endpoint", fake_mp.url, "--max-sites", "8"]
    result = runner.invoke(app, [*args, "--retries", "1", "--backoff", "0"])
    assert result.exit_code == 0, result.output
    assert fake_mp.requests[-1]["nsites_max"] == "8"
    saved = json.loads((out / "query.json").read_text())
    assert saved["criteria"]["max_sites"] == 8
    # of the fake service's documents only mp-865981 (4 sites) passes --max-sites 8
    assert saved["counts"] == {"train": 1, "val": 0, "test": 0}
    assert TEST_KEY not in result.output
    shown = runner.invoke(app, ["data", "show", str(out / "train.csv"), "--split", "train"])
    assert shown.exit_code == 0, shown.output
    assert f"rows {saved['counts']['train']}  structures {saved['counts']['train']}" in shown.output


def test_fetch_mp_errors_are_clear(fake_mp, tmp_path, monkeypatch):
    args = ["data", "fetch-mp", "--out", str(tmp_path / "o"), "--endpoint", fake_mp.url]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "MP_API_KEY" in result.output
    monkeypatch.setenv("MP_API_KEY", TEST_KEY)
    fake_mp.mode = "401"
    result = runner.invoke(app, [*args, "--retries", "1"])
    assert result.exit_code == 1 and "MPAuthError" in result.output
    assert TEST_KEY not in result.output
    result = runner.invoke(app, [*args, "--exclude", "Qq"])
    assert result.exit_code == 1 and "unknown element" in result.output
