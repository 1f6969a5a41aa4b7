"""Bigger self-evaluations with CrystalNN fingerprints (minutes): run with ``-m slow``."""

from __future__ import annotations

import pytest

from flows.evaluation import evaluate_split


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "limit"), [("perov_5", 300), ("carbon_24", 100)])
def test_split_against_itself_with_coverage(dataset, limit, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    res = evaluate_split(
        dataset,
        "test",
        limit=limit,
        fingerprint_cache=tmp_path / "fp.sqlite",
        progress=False,
        out=tmp_path / "metrics.json",
    )
    assert res["continuousp.match_rate"].value == 1.0
    assert res["continuousp.rmse"].value == pytest.approx(0.0, abs=1e-8)
    assert res["diffcsp.match_rate"].value == pytest.approx(res["validity"].value)
    assert res["cov_recall"].value == 1.0 and res["cov_precision"].value == 1.0
    assert res["amsd_recall"].value == pytest.approx(0.0, abs=1e-12)
    assert res["amcd_recall"].value == pytest.approx(0.0, abs=1e-12)
    if dataset == "carbon_24":
        assert res["comp_validity"].value == 1.0  # single element
        assert res["wdist_num_elems"].value == 0.0
    else:
        assert (
            res["comp_validity"].counts["n_total"] - res["comp_validity"].counts["n_comp_valid"]
            == 3
        )
