from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Structure

from analysis.evaluate import evaluate_samples, evaluate_split
from analysis.results import read_metrics_json
from generators.sample_io import SampleRecord, write_chunk, write_index


def _write_dir(path: Path, mode: str, rows: list[dict], chunk_size: int = 4) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    chunks = []
    for n, start in enumerate(range(0, len(rows), chunk_size)):
        name = f"chunk_{n:05d}.json"
        (path / name).write_text(json.dumps(rows[start : start + chunk_size]))
        chunks.append(name)
    write_index(
        path,
        {
            "model": "test",
            "dataset": "perov_5",
            "mode": mode,
            "checkpoint_sha256": "0" * 64,
            "chunk_size": chunk_size,
            "total": len(rows),
            "chunks": chunks,
        },
    )
    return path


def _row(sid: str, structure, target=None, cand=0, error=None) -> dict:
    if isinstance(structure, Structure):
        structure = structure.as_dict()
    return {
        "sample_id": sid,
        "target_id": target,
        "candidate": cand,
        "structure": structure,
        "error": error,
    }


def _bad_rows(template: Structure) -> list[dict]:
    nan = template.as_dict()
    nan["sites"][0]["abc"] = [float("nan"), 0.0, 0.0]
    flat = template.as_dict()
    flat["lattice"]["matrix"][2] = [0.0, 0.0, 0.0]
    unknown = template.as_dict()
    unknown["sites"][1]["species"][0]["element"] = "Qq"
    garbage = {"lattice": "not a lattice"}
    return [
        _row("bad-nan", nan),
        _row("bad-flat", flat),
        _row("bad-unknown", unknown),
        _row("bad-garbage", garbage),
        _row("bad-none", None, error="sampler produced NaN"),
    ]


def test_generation_dir_with_bad_items(tmp_path, perov_test_300):
    ids, gt = perov_test_300
    good = [s.copy() for s in gt[:10]]
    rows = [_row(f"g{i}", s) for i, s in enumerate(good)] + _bad_rows(gt[0])
    sample_dir = _write_dir(tmp_path / "samples", "generate", rows)
    results = evaluate_samples(
        sample_dir,
        "perov_5",
        gt=gt[:10],
        gt_ids=ids[:10],
        n_samples=5,
        fingerprint_cache=tmp_path / "fp.sqlite",
        n_jobs=1,
        progress=False,
    )
    written = read_metrics_json(sample_dir / "metrics.json")
    assert set(written) == set(results)
    v = results["validity"]
    assert v.counts["n_total"] == 15 and v.counts["n_constructed"] == 10
    reasons = {e["id"]: e["reason"] for e in results["construction_validity"].errors}
    assert reasons["bad-nan"].startswith("nan_value")
    assert reasons["bad-flat"].startswith("unrealistically_small_lattice")
    assert reasons["bad-unknown"].startswith("unknown_element")
    assert reasons["bad-garbage"].startswith("malformed_input")
    assert "sampler produced NaN" in reasons["bad-none"]
    n_valid_good = v.counts["n_valid"]
    assert v.value == pytest.approx(n_valid_good / 15)
    assert results["cov_recall"].value == 1.0
    assert results["cov_precision"].value == pytest.approx(10 / 15)
    assert results["wdist_density"].definition["n_used"] == 5
    assert results["struct_div"].counts["n_samples"] == 5 and results["struct_div"].value > 0
    assert "SMACT-14" in results["comp_validity"].definition["smact_oxidation_states"]
    assert results["validity"].definition["dataset"] == "perov_5"


def test_csp_dir_grouped_by_target_and_candidate(tmp_path, perov_test_300):
    ids, gt = perov_test_300
    ids, gt = ids[:6], gt[:6]
    rng = np.random.default_rng(0)
    rows = []
    for t, (mid, s) in enumerate(zip(ids, gt, strict=True)):
        far = Structure(s.lattice.matrix * np.array([1.0, 1.0, 1.8]), s.species, s.frac_coords)
        # candidate 0 never matches; candidate 1 is the ground truth itself (except target 5)
        rows.append(_row(f"{mid}-0", far, mid, 0))
        second = s.copy() if t < 5 else None
        rows.append(_row(f"{mid}-1", second, mid, 1, None if second else "failed"))
    rng.shuffle(rows)  # order in the files must not matter
    sample_dir = _write_dir(tmp_path / "csp", "csp", rows, chunk_size=5)
    results = evaluate_samples(sample_dir, "perov_5", gt=gt, gt_ids=ids, n_jobs=1, progress=False)
    assert results["diffcsp.match_rate"].value == 0.0  # k = 1 uses candidate 0 only
    assert results["continuousp.match_rate"].value == pytest.approx(5 / 6)
    assert results["continuousp.rmse"].value == pytest.approx(0.0, abs=1e-8)
    multi = results["diffcsp_multi.match_rate"]
    assert multi.counts["n_targets"] == 6 and multi.definition["k_available_max"] == 2
    assert multi.value <= 5 / 6


def test_csp_limit_and_wrong_dataset(tmp_path, perov_test_300):
    ids, gt = perov_test_300
    rows = [_row(f"s{i}", gt[i], ids[i]) for i in range(8)]
    sample_dir = _write_dir(tmp_path / "csp", "csp", rows)
    res = evaluate_samples(
        sample_dir,
        "perov_5",
        gt=gt[:8],
        gt_ids=ids[:8],
        limit=3,
        protocols=["continuousp"],
        progress=False,
        n_jobs=1,
    )
    assert res["continuousp.match_rate"].counts["n_targets"] == 3
    with pytest.raises(ValueError, match="samples are for dataset 'perov_5', not 'carbon_24'"):
        evaluate_samples(sample_dir, "carbon_24", gt=gt[:8], gt_ids=ids[:8], progress=False)


def test_split_against_itself(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    res = evaluate_split(
        "perov_5",
        "test",
        limit=12,
        fingerprint_cache=tmp_path / "fp.sqlite",
        n_jobs=1,
        progress=False,
        out=tmp_path / "m.json",
    )
    assert res["continuousp.match_rate"].value == 1.0
    assert res["continuousp.rmse"].value == pytest.approx(0.0, abs=1e-8)
    # gated protocols match exactly the valid ones
    assert res["diffcsp.match_rate"].value == pytest.approx(res["validity"].value)
    assert res["cov_recall"].value == 1.0 and res["cov_precision"].value == 1.0
    assert res["amsd_recall"].value == pytest.approx(0.0, abs=1e-12)
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["metadata"]["self_evaluation"] is True


def test_cli_evaluate_split_and_sample_dir(tmp_path, data_dir, monkeypatch, perov_test_300):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    runner = CliRunner()
    out = tmp_path / "split.json"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--dataset",
            "perov_5",
            "--split",
            "test",
            "--limit",
            "8",
            "--no-coverage",
            "--out",
            str(out),
            "--jobs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = read_metrics_json(out)
    assert metrics["continuousp.match_rate"].value == 1.0 and "cov_recall" not in metrics
    ids, gt = perov_test_300
    sample_dir = _write_dir(tmp_path / "s", "csp", [_row(f"s{i}", gt[i], ids[i]) for i in range(4)])
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(sample_dir),
            "--dataset",
            "perov_5",
            "--limit",
            "4",
            "--protocol",
            "continuousp",
            "--jobs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_metrics_json(sample_dir / "metrics.json")["continuousp.match_rate"].value == 1.0
    bad = runner.invoke(app, ["evaluate", "--dataset", "perov_5"])
    assert bad.exit_code != 0
    bad = runner.invoke(
        app,
        ["evaluate", "--dataset", "perov_5", "--split", "test", "--oxidation-states", "smact99"],
    )
    assert bad.exit_code != 0 and "smact99" in bad.output


def test_sample_records_are_accepted_directly(perov_test_300):
    ids, gt = perov_test_300
    records = [SampleRecord(f"s{i}", gt[i], ids[i], 0) for i in range(3)]
    res = evaluate_samples(
        records,
        "perov_5",
        mode="reconstruct",
        gt=gt[:3],
        gt_ids=ids[:3],
        protocols=["cdvae"],
        progress=False,
        n_jobs=1,
    )
    assert res["cdvae.match_rate"].definition["mode"] == "reconstruct"
    assert res["cdvae.match_rate"].counts["n_targets"] == 3


def test_write_chunk_format_is_read(tmp_path, perov_test_300):
    ids, gt = perov_test_300
    d = tmp_path / "w"
    name = write_chunk(d, 0, [SampleRecord("a", gt[0]), SampleRecord("b", None, error="x")])
    write_index(
        d,
        {
            "model": "m",
            "dataset": "perov_5",
            "mode": "generate",
            "chunks": [name],
            "total": 2,
            "chunk_size": 2,
        },
    )
    res = evaluate_samples(
        d, "perov_5", gt=gt[:3], gt_ids=ids[:3], with_coverage=False, progress=False, n_jobs=1
    )
    assert res["construction_validity"].value == 0.5
