"""MP-20-style queries through the real mp_api client against a local fake of the service."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from generators.data.loading import load_file
from generators.data.materials_project import (
    MP20_COLUMNS,
    MPAPIKeyMissingError,
    MPAuthError,
    MPConnectionError,
    MPQueryCriteria,
    MPRateLimitError,
    MPServerError,
    fetch_mp_dataset,
    split_of,
)

from .conftest import TEST_KEY

FAST = {"retries": 2, "backoff_s": 0.01, "progress": False}


def _all_text(out: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())


def test_fetch_writes_mp20_schema_and_split(fake_mp, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MP_API_KEY", TEST_KEY)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "mp"
    result = fetch_mp_dataset(out, endpoint=fake_mp.url, **FAST)

    # the client asked the summary endpoint with the MP-20 criteria and our key header
    query = fake_mp.requests[-1]
    assert query["nsites_max"] == "20"
    assert float(query["energy_above_hull_max"]) == pytest.approx(0.08)
    assert float(query["formation_energy_per_atom_max"]) == pytest.approx(2.0)
    assert "Xe" in query["exclude_elements"].split(",")
    assert query["theoretical"] == "False"
    assert fake_mp.headers[-1]["x-api-key"] == TEST_KEY

    # the pilot rows the MP-20 criteria keep (the e_hull 0.5 document is filtered out)
    crit = MPQueryCriteria()
    expected = {
        d["material_id"]
        for d in fake_mp.docs
        if d["energy_above_hull"] <= 0.08
        and d["formation_energy_per_atom"] <= 2.0
        and d["nsites"] <= 20
        and not set(d["elements"]) & set(crit.exclude_elements)
    }
    # 14 documents: three fail the criteria (the e_hull 0.5 one and two pilot rows)
    assert len(expected) == 11 and len(fake_mp.docs) == 14
    assert result.n_documents == len(expected)
    assert sum(result.counts.values()) == len(expected) - len(result.rejected)
    n = sum(result.counts.values())
    assert n == 10  # the 11 kept less the broken document
    assert result.counts == {"train": 6, "val": 2, "test": 2}  # 0.6 / 0.2 / 0.2 of 10

    header = (out / "train.csv").read_text().splitlines()[0]
    assert header == "," + ",".join(MP20_COLUMNS)
    ids = []
    for split in ("train", "val", "test"):
        frame = pd.read_csv(out / f"{split}.csv", index_col=0)
        ids += frame["material_id"].tolist()
    assert len(ids) == len(set(ids)) == n
    assert "mp-999999999" not in ids
    # the broken document is reported with its id and reason; the rest was written
    assert [m for m, _ in result.rejected] == ["mp-888888888"]
    assert "mp-888888888" not in ids

    # the written CSVs load through the normal loader
    loaded = load_file(out / "train.csv", like="mp_20", progress=False)
    assert len(loaded) == result.counts["train"] and not loaded.errors
    assert all(r.properties["formation_energy_per_atom"] < 2.0 for r in loaded.records)

    saved = json.loads((out / "query.json").read_text())
    assert saved["criteria"]["max_sites"] == 20
    assert saved["counts"] == result.counts
    assert saved["database_version"] == "2025.09.25"
    assert saved["rejected"][0]["material_id"] == "mp-888888888"

    # the key never lands in files or logs
    assert TEST_KEY not in _all_text(out)
    assert TEST_KEY not in caplog.text


def test_split_is_deterministic_and_seeded():
    ids = [f"mp-{i}" for i in range(1000)]
    a = split_of(ids, 42, (0.6, 0.2, 0.2))
    assert a == split_of(list(reversed(ids)), 42, (0.6, 0.2, 0.2))
    counts = {s: sum(1 for v in a.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 600, "val": 200, "test": 200}
    b = split_of(ids, 7, (0.6, 0.2, 0.2))
    assert a != b


def test_missing_key_is_a_clear_error(tmp_path):
    with pytest.raises(MPAPIKeyMissingError, match="MP_API_KEY"):
        fetch_mp_dataset(tmp_path / "x", endpoint="http://127.0.0.1:9/", **FAST)


@pytest.mark.parametrize(
    ("mode", "error"),
    [("401", MPAuthError), ("429", MPRateLimitError), ("500", MPServerError)],
)
def test_http_errors_are_typed_and_key_free(fake_mp, tmp_path, monkeypatch, caplog, mode, error):
    monkeypatch.setenv("MP_API_KEY", TEST_KEY)
    caplog.set_level(logging.DEBUG)
    fake_mp.mode = mode
    with pytest.raises(error) as info:
        fetch_mp_dataset(tmp_path / "out", endpoint=fake_mp.url, **FAST)
    message = str(info.value)
    assert mode in message
    assert TEST_KEY not in message
    assert TEST_KEY not in repr(info.value)
    assert TEST_KEY not in caplog.text
    assert not (tmp_path / "out").exists()
    attempts = len(fake_mp.requests)
    if mode == "401":
        assert attempts == 1  # no point retrying a rejected key
    elif mode == "500":
        assert attempts == FAST["retries"]  # ours only: 2
    else:
        # each of our attempts is the first request plus the client's own 429 retries
        # (urllib3 Retry with MAX_RETRIES, 3 by default): 2 x (1 + 3) = 8 measured
        from mp_api.client.core.settings import MAPI_CLIENT_SETTINGS

        assert attempts == FAST["retries"] * (1 + MAPI_CLIENT_SETTINGS.MAX_RETRIES)


def test_transient_5xx_is_retried(fake_mp, tmp_path, monkeypatch):
    monkeypatch.setenv("MP_API_KEY", TEST_KEY)
    fake_mp.mode = "503-once"
    result = fetch_mp_dataset(tmp_path / "out", endpoint=fake_mp.url, **FAST)
    assert result.counts == {"train": 6, "val": 2, "test": 2}  # as without the 503
    assert len(fake_mp.requests) == 2


def test_wrong_key_message_has_no_key(fake_mp, tmp_path, caplog):
    wrong = "WRONGkey0123456789abcdefghijklmn"
    with pytest.raises(MPAuthError) as info:
        fetch_mp_dataset(tmp_path / "o", api_key=wrong, endpoint=fake_mp.url, **FAST)
    assert wrong not in str(info.value) and wrong not in caplog.text


def test_criteria_validation():
    with pytest.raises(ValidationError, match="unknown element"):
        MPQueryCriteria(exclude_elements=["Xx"])
    with pytest.raises(ValidationError, match="min_sites"):
        MPQueryCriteria(min_sites=30, max_sites=20)
    with pytest.raises(ValidationError, match="sum to 1"):
        MPQueryCriteria(split_fractions=(0.5, 0.2, 0.2))
    kwargs = MPQueryCriteria(chemsys="Li-O", elements=["Li"]).search_kwargs()
    assert kwargs["num_sites"] == (1, 20)
    assert kwargs["chemsys"] == "Li-O" and kwargs["elements"] == ["Li"]


def test_unreachable_service_is_a_connection_error(tmp_path):
    with pytest.raises(MPConnectionError, match="failed"):
        fetch_mp_dataset(tmp_path / "o", api_key=TEST_KEY, endpoint="http://127.0.0.1:1/", **FAST)
