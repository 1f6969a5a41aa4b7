from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure

from analysis.construction import CheckedStructure
from analysis.evaluate import evaluate, evaluate_samples
from analysis.ground_truth import GroundTruth, read_gt_file
from analysis.results import read_metrics_json
from dftloop_io.samples import SampleRecord, write_chunk, write_index
from flows.evaluation import evaluate_split


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
    # the ten good rows are the first ten perov_5 test crystals, all valid (the first SMACT-invalid
    # test row is index 14, see test_matching); the five bad rows are not
    assert v.counts["n_valid"] == 10
    assert v.value == pytest.approx(10 / 15)
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
    evaluation = evaluate(sample_dir, "perov_5", gt=gt, gt_ids=ids, n_jobs=1, progress=False)
    results = evaluation.metrics
    assert results["diffcsp.match_rate"].value == 0.0  # k = 1 uses candidate 0 only
    assert results["continuousp.match_rate"].value == pytest.approx(5 / 6)
    assert results["continuousp.rmse"].value == pytest.approx(0.0, abs=1e-8)
    multi = results["diffcsp_multi.match_rate"]
    assert multi.counts["n_targets"] == 6 and multi.definition["k_available_max"] == 2
    # best of k = 2: candidate 1 (the ground truth) matches for targets 0-4, target 5 has none
    assert multi.value == pytest.approx(5 / 6) and multi.counts["n_matched"] == 5
    # per target: candidate 1 is the ground truth itself for targets 0-4, target 5 has none
    rows = {row["target_id"]: row for row in evaluation.rows}
    assert sorted(rows) == sorted(ids)
    for t, mid in enumerate(ids):
        row = rows[mid]
        assert row["n_candidates"] == 2 and row["gt_valid"] is True
        assert row["diffcsp.matched"] is False and row["diffcsp.rms"] is None
        assert row["continuousp.matched"] is (t < 5)
        if t < 5:
            assert row["continuousp.best_candidate"] == 1
            assert row["continuousp.rms"] == pytest.approx(0.0, abs=1e-8)
            assert row["continuousp.reason"] is None
    assert rows[ids[5]]["continuousp.reason"] == "no candidate matches the ground truth"
    # target 5: candidate 0 (the cell stretched along c) is valid, candidate 1 failed to build
    assert rows[ids[5]]["candidate0_valid"] is True and rows[ids[5]]["n_candidates_valid"] == 1
    assert (
        sum(r["continuousp.matched"] for r in rows.values())
        == results["continuousp.match_rate"].counts["n_matched"]
    )
    csv_path = evaluation.write_rows_csv(tmp_path / "rows.csv")
    table = pd.read_csv(csv_path)
    assert len(table) == 6 and table["continuousp.matched"].sum() == 5
    assert table["diffcsp.rms"].isna().all()


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
    # the first 12 test rows are all valid (the first SMACT-invalid one is index 14), so the
    # gated protocols match all of them too
    assert res["validity"].value == 1.0 and res["diffcsp.match_rate"].value == 1.0
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
    assert bad.exit_code == 2  # a usage error
    assert "give SAMPLE_DIR, or --split (or --gt-file) to evaluate a split itself" in _text(bad)
    bad = runner.invoke(
        app,
        ["evaluate", "--dataset", "perov_5", "--split", "test", "--oxidation-states", "smact99"],
    )
    assert bad.exit_code == 2
    assert (
        "--oxidation-states must be one of ['icsd16', 'icsd24', 'pymatgen_sp', 'smact14', "
        "'wiki'], not 'smact99'" in _text(bad)
    )


def _text(result) -> str:  # type: ignore[no-untyped-def]
    """A CLI result's output without the error panel's frame and line breaks."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())


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


def test_generation_accepts_checked_ground_truth(perov_test_300):
    """CheckedStructure ground truth works in generation mode as it does in CSP mode."""
    ids, gt = perov_test_300
    samples = [s.copy() for s in gt[:6]]
    options = {"n_samples": 6, "with_coverage": False, "progress": False, "n_jobs": 1}
    checked = [CheckedStructure(mid, s) for mid, s in zip(ids[:6], gt[:6], strict=True)]
    broken = CheckedStructure("broken", None, "missing_structure: none")
    res = evaluate_samples(samples, "perov_5", gt=[*checked, broken], **options)
    plain = evaluate_samples(samples, "perov_5", gt=gt[:6], **options)
    # the samples are the ground truth: both distances are zero, as with plain structures
    assert res["wdist_density"].value == pytest.approx(0.0, abs=1e-12)
    assert res["wdist_num_elems"].value == pytest.approx(0.0, abs=1e-12)
    assert res["wdist_density"].value == plain["wdist_density"].value
    assert res["validity"].definition["n_gt_not_constructed"] == 1
    assert plain["validity"].definition["n_gt_not_constructed"] == 0


def test_generation_rows_and_missing_ground_truth(perov_test_300):
    _, gt = perov_test_300
    samples = [gt[0], None, gt[1]]
    evaluation = evaluate(
        samples, "perov_5", gt=gt[:2], with_coverage=False, n_samples=2, progress=False, n_jobs=1
    )
    assert evaluation.mode == "generate"
    assert [r["sample_id"] for r in evaluation.rows] == ["0", "1", "2"]
    assert [r["constructed"] for r in evaluation.rows] == [True, False, True]
    assert (
        evaluation.rows[1]["valid"] is False and "missing_structure" in evaluation.rows[1]["reason"]
    )
    with pytest.raises(ValueError, match="no ground truth"):
        evaluate(samples, "perov_5", with_coverage=False, progress=False)


def test_ground_truth_loader_reads_all_rows_only_when_a_target_is_missing(perov_test_300):
    ids, gt = perov_test_300
    calls: list[int | None] = []

    def loader(limit: int | None) -> GroundTruth:
        calls.append(limit)
        n = 300 if limit is None else limit
        return GroundTruth(ids[:n], gt[:n], "test rows", "test")

    first = [SampleRecord(f"s{i}", gt[i], ids[i]) for i in range(3)]
    evaluate_samples(
        first,
        "perov_5",
        mode="csp",
        gt=loader,
        limit=3,
        protocols=["cdvae"],
        progress=False,
        n_jobs=1,
    )
    assert calls == [3]
    later = [SampleRecord(f"s{i}", gt[i], ids[i]) for i in (10, 11)]
    res = evaluate_samples(
        later,
        "perov_5",
        mode="csp",
        gt=loader,
        limit=2,
        protocols=["cdvae"],
        progress=False,
        n_jobs=1,
    )
    assert calls == [3, 2, None]
    assert res["cdvae.match_rate"].value == 1.0


def _original_gt_structure(cif: str) -> Structure:
    """CDVAE/DiffCSP --gt_file: get_gt_crys_ori, then Crystal (lattice from its parameters)."""
    from pymatgen.core import Lattice

    structure = Structure.from_str(cif, fmt="cif")
    lengths, angles = np.array(structure.lattice.abc), np.array(structure.lattice.angles)
    atom_types = np.array([site.Z for site in structure.species])
    return Structure(
        lattice=Lattice.from_parameters(*(lengths.tolist() + angles.tolist())),
        species=atom_types,
        coords=structure.frac_coords,
        coords_are_cartesian=False,
    )


def test_gt_file_is_read_as_the_original_evaluator_reads_it(data_dir, tmp_path):
    table = pd.read_csv(data_dir / "perov_5" / "test.csv", nrows=20)
    path = tmp_path / "gt.csv"
    table.to_csv(path, index=False)
    truth = read_gt_file(path, limit=12)
    assert truth.ids == [str(i) for i in table["material_id"][:12]]
    assert truth.label == "gt.csv" and truth.row_errors == []
    for cif, ours in zip(table["cif"][:12], truth.structures, strict=True):
        theirs = _original_gt_structure(cif)
        assert np.array_equal(ours.lattice.matrix, theirs.lattice.matrix)
        assert np.array_equal(ours.frac_coords, theirs.frac_coords)
        assert [s.Z for s in ours.species] == [s.Z for s in theirs.species]
    # a bad row is reported with its id, the others load
    broken = table.head(3).copy()
    broken.loc[1, "cif"] = "data_x\n_cell_length_a oops\n"
    broken.to_csv(path, index=False)
    truth = read_gt_file(path)
    assert len(truth.structures) == 2
    assert [e["id"] for e in truth.row_errors] == [str(broken["material_id"][1])]
    table[["material_id", "formula"]].to_csv(path, index=False)
    with pytest.raises(ValueError, match="has no 'cif' column"):
        read_gt_file(path)


def test_cli_gt_file_rows_and_quiet(tmp_path, data_dir, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    table = pd.read_csv(data_dir / "perov_5" / "test.csv", nrows=6)
    gt_file = tmp_path / "test.csv"
    table.to_csv(gt_file, index=False)
    ids = [str(i) for i in table["material_id"]]
    truth = read_gt_file(gt_file)
    # targets 0-3: the ground truth itself; target 4: a stretched cell that does not match
    gt4 = truth.structures[4]
    far = Structure(gt4.lattice.matrix * np.array([1.0, 1.0, 1.8]), gt4.species, gt4.frac_coords)
    rows = [_row(f"s{i}", truth.structures[i], ids[i]) for i in range(4)]
    rows.append(_row("s4", far, ids[4]))
    sample_dir = _write_dir(tmp_path / "s", "csp", rows)
    runner = CliRunner()
    args = ["evaluate", str(sample_dir), "--dataset", "perov_5", "--gt-file", str(gt_file)]
    args += ["--protocol", "continuousp", "--jobs", "1", "--no-coverage"]
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0, loud.output
    assert "ground truth: 6 structures (test.csv)" in loud.output
    quiet = runner.invoke(app, [*args, "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "ground truth:" not in quiet.output and "wrote" not in quiet.output
    metrics = read_metrics_json(sample_dir / "metrics.json")
    assert metrics["continuousp.match_rate"].value == pytest.approx(4 / 5)
    assert "--gt_file" in metrics["continuousp.match_rate"].definition["ground_truth"]
    per_target = pd.read_csv(sample_dir / "metrics_per_target.csv")
    assert [str(i) for i in per_target["target_id"]] == ids[:5]
    assert per_target["continuousp.matched"].tolist() == [True] * 4 + [False]
    assert per_target["continuousp.rms"][:4].abs().max() < 1e-8
    # without SAMPLE_DIR the file is evaluated against itself
    self_args = ["evaluate", "--dataset", "perov_5", "--gt-file", str(gt_file), "--no-coverage"]
    self_args += ["--jobs", "1", "--quiet", "--out", str(tmp_path / "self.json")]
    itself = runner.invoke(app, self_args)
    assert itself.exit_code == 0, itself.output
    self_metrics = read_metrics_json(tmp_path / "self.json")
    assert self_metrics["continuousp.match_rate"].value == 1.0
    assert self_metrics["continuousp.match_rate"].counts["n_targets"] == 6
    monkeypatch.chdir(tmp_path)  # a short path: the error box does not wrap it
    bad = runner.invoke(app, [*args[:4], "--gt-file", "nope.csv"])
    assert bad.exit_code != 0 and "does not exist" in bad.output
