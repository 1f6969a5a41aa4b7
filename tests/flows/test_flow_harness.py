"""A real flow run (ephemeral Prefect server, real CHGNet, real MontyStore) and its rerun."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from flows.store import ResultStore

from .conftest import (
    DEPLOY,
    ROOT,
    TINY_CHGNET,
    child_flow_runs,
    run_artifacts,
    run_log_messages,
)

RUN_ARTIFACT_KEYS = {
    f"dataset-perov-5-chgnet-{kind}"
    for kind in ("metrics", "per-structure", "delta-e-histogram", "store")
}
"""The artifact keys of a generate-and-relax run of the smoke model on perov_5 with CHGNet."""


def _ledger(home: Path) -> list[dict]:
    path = home / "ledger" / "relaxations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_generate_and_relax_then_rerun_skips(harness: None, tmp_path: Path) -> None:
    from flows.pipeline import generate_and_relax

    params = dict(
        model="dataset",
        dataset="perov_5",
        n=3,
        relaxer="chgnet",
        relaxer_settings=TINY_CHGNET,
        chunk_size=2,
        # Dask workers as threads of this process: CHGNet loads once (processes are covered
        # by the end-to-end test in test_services.py)
        cluster_kwargs={"processes": False},
        home=str(tmp_path),
    )
    state = generate_and_relax(**params, return_state=True)
    assert state.is_completed(), state
    first = state.result()
    parent = str(state.state_details.flow_run_id)
    [stage] = first["stages"]
    assert stage["n_input"] == 3 and stage["n_skipped"] == 0
    assert stage["n_stored"] == 3 and stage["n_crashed_chunks"] == 0
    assert len(_ledger(tmp_path)) == 3  # three relaxations really computed

    with ResultStore(home=tmp_path) as store:
        assert store.count("sample") == 3
        relaxations = store.query("relaxation")
        assert len(relaxations) == 3
        assert {r["relaxer"] for r in relaxations} == {"chgnet"}
        assert all(r["provenance"]["model"] == "dataset" for r in relaxations)
        assert all(r["provenance"]["relaxer_settings"]["fmax"] == 0.2 for r in relaxations)
        analyses = store.query("analysis")
        assert len(analyses) == 3
        ok = [a for a in analyses if a["error"] is None]
        assert ok, analyses
        # rattled structures relax downhill with CHGNet's own energies
        assert all(a["delta_e_mev_per_atom"] > 0 for a in ok)
        before = {r["doc_id"]: r["created_at"] for r in relaxations}

    metrics = {m["name"]: m for m in first["metrics"]}
    assert metrics["mean_delta_e_mev_per_atom"]["counts"]["n_total"] == 3
    png = Path(first["artifacts"]["histogram_png"])
    assert png.stat().st_size > 1000
    assert png.parent == tmp_path / "reports" / parent  # named after the run the user started

    # the artifacts are on the run the user started, none on its analyze subflow
    artifacts = run_artifacts(parent)
    assert set(artifacts) == RUN_ARTIFACT_KEYS
    per_structure = json.loads(artifacts["dataset-perov-5-chgnet-per-structure"].data)
    assert sorted(r["structure_id"] for r in per_structure) == sorted(
        a["structure_id"] for a in analyses
    )
    children = child_flow_runs(parent)
    assert set(children) == {"sample-structures", "analyze"}
    assert run_artifacts(children["analyze"]) == {}
    # the keys the docs name are the keys written
    docs = (ROOT / "docs" / "orchestration.md").read_text()
    for key in RUN_ARTIFACT_KEYS:
        assert f"`{key}`" in docs, key

    second = generate_and_relax(**params)
    [stage] = second["stages"]
    assert stage["n_skipped"] == 3 and stage["n_submitted"] == 0
    assert len(_ledger(tmp_path)) == 3  # nothing recomputed
    with ResultStore(home=tmp_path) as store:
        after = {r["doc_id"]: r["created_at"] for r in store.query("relaxation")}
        assert after == before
        assert store.count("sample") == 3 and store.count("analysis") == 3


def test_nightly_benchmark_reports_every_model(
    harness: None, no_shipped_models: None, tmp_path: Path
) -> None:
    """Models without a checkpoint (or with a missing module) stay in the table with a reason."""
    from flows.nightly import GENERATORS, nightly_benchmark

    state = nightly_benchmark(
        dataset="perov_5", scale="cpu-small", n=2, home=str(tmp_path), return_state=True
    )
    rows = state.result()
    assert [r["model"] for r in rows] == list(GENERATORS)
    for row, model in zip(rows, GENERATORS, strict=True):
        where = tmp_path / "checkpoints" / model / "perov_5" / "cpu-small"
        assert row["status"] == (
            f"no checkpoint in {where} (run train-generator or pass train_missing=true)"
        ), row
    reports = list((tmp_path / "reports" / "nightly").glob("perov_5-cpu-small-*.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())[0]["model"] == "diffcsp"

    artifacts = run_artifacts(str(state.state_details.flow_run_id))
    assert set(artifacts) == {"nightly-perov-5-cpu-small", "nightly-perov-5-cpu-small-markdown"}
    table = json.loads(artifacts["nightly-perov-5-cpu-small"].data)
    assert [r["model"] for r in table] == list(GENERATORS)
    assert all(r["status"].startswith("no checkpoint in ") for r in table)


def test_training_progress_reaches_the_flow_run_logs(
    harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``generators.trainer`` logs with the standard logging module (epoch, loss, ETA)
    lands in the logs of the train-generator run, and the logger is left as it was."""
    import logging
    from types import SimpleNamespace

    from prefect import flow

    import generators.trainer
    from flows.pipeline import train_generator

    logger = logging.getLogger("generators.trainer")
    level, handlers = logger.level, list(logger.handlers)

    def fake_train(model, dataset, config_name, out_dir, **kwargs):  # type: ignore[no-untyped-def]
        for epoch in (1, 2):
            logger.info("epoch %d/2 train loss %.3f ETA %d s", epoch, 1.0 / epoch, 10 * (2 - epoch))
        logger.debug("a debug line stays out")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "best.pt").write_bytes(b"x")
        return SimpleNamespace(out_dir=out_dir, epochs=2, stop_reason="max_epochs")

    monkeypatch.setattr(generators.trainer, "train", fake_train)

    @flow(name="trains-first")
    def parent() -> str:  # like generate-and-relax with train_config: train-generator inside
        return train_generator("diffcsp", "perov_5", "cpu-small", home=str(tmp_path))

    state = parent(return_state=True)
    assert state.result() == str(
        tmp_path / "checkpoints" / "diffcsp" / "perov_5" / "cpu-small" / "best.pt"
    )
    parent_id = str(state.state_details.flow_run_id)
    # in the train-generator run's logs, and in those of the run the user started
    for run_id in (child_flow_runs(parent_id)["train-generator"], parent_id):
        messages = run_log_messages(run_id, expect="epoch 2/2 train loss 0.500 ETA 0 s")
        assert "epoch 1/2 train loss 1.000 ETA 10 s" in messages, messages
        assert "epoch 2/2 train loss 0.500 ETA 0 s" in messages, messages
        assert "a debug line stays out" not in messages
        assert messages.count("epoch 1/2 train loss 1.000 ETA 10 s") == 1
    assert logger.level == level and logger.handlers == handlers


@pytest.mark.slow
def test_generate_and_relax_with_a_real_tiny_diffcsp(
    harness: None,
    no_shipped_models: None,
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Train first (300 full-batch steps on 8 crystals), CSP-sample 2 training compositions with
    200 steps, relax, analyse with the paper metrics; then nightly-benchmark with the checkpoint.

    The model must be trained enough to give sane cells: after 2 epochs, or with 5-20 strided
    sampling steps, DiffCSP's lattice DDPM ends at cells of 10^4-10^5 Å (the respaced posterior
    divides by sqrt(ᾱ_t/ᾱ_t') near t = T); those are rejected as invalid input or, with a
    positive volume, can make CHGNet's neighbour search crawl (a run hung > 10 min once).
    300 steps + 200 sampling steps gave cells of 3-5 Å here (~40 s of training under load).
    Left-handed cells were rejected as "volume negative" until the relax stage made them
    right-handed (flows.tasks.right_handed).
    """
    from flows.pipeline import generate_and_relax

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    out = generate_and_relax(
        model="diffcsp",
        dataset="perov_5",
        n=2,
        train_config="cpu-small",
        train_limit=8,
        train_overrides={
            "train": {
                "batch_size": 8,
                "max_epochs": 300,
                "val_every": 300,
                "scheduler": {"name": "none"},
            }
        },
        sample_steps=200,
        sample_split="train",
        relaxer="chgnet",
        relaxer_settings=TINY_CHGNET,
        cluster_kwargs={"processes": False},
        home=str(tmp_path),
        evaluate_metrics=True,
        eval_coverage=False,
    )
    checkpoint = Path(out["checkpoint"])
    assert checkpoint.is_file() and checkpoint.name == "best.pt"
    # trained with overrides: its own run directory, never the plain cpu-small one
    assert checkpoint.parent.name.startswith("cpu-small-")
    assert out["provenance"]["model"] == "diffcsp"
    [stage] = out["stages"]
    assert stage["n_crashed_chunks"] == 0
    from generators.data import load_split

    first_train = [r.material_id for r in load_split("perov_5", "train", limit=2).records]
    with ResultStore(home=tmp_path) as store:
        samples = store.query("sample")
        assert len(samples) == 2
        assert all(s["provenance"]["checkpoint_sha256"] for s in samples)
        assert sorted(s["target_id"] for s in samples) == sorted(first_train)
        built = [s for s in samples if s["structure"] is not None]
        assert len(built) == 2 and stage["n_input"] == 2
        assert store.count("relaxation") == len({s["structure_hash"] for s in built})
        assert store.count("analysis") == 2
    metrics = {m["name"]: m for m in out["metrics"]}
    with_delta_e = [r for r in out["rows"] if r.get("delta_e_mev_per_atom") is not None]
    assert metrics["mean_delta_e_mev_per_atom"]["counts"]["n_with_energy"] == len(with_delta_e)
    # every sample is either relaxed and compared (ΔE) or reported with a reason naming it:
    # a 300-step model gives sane 3-5 Å cells, but in one run both samples had atoms 0.07-0.14 Å
    # apart (invalid input), in another one relaxed and one was left-handed (now relaxed on a
    # right-handed basis), so the test does not require a ΔE
    for row in out["rows"]:
        assert row.get("delta_e_mev_per_atom") is not None or row["error"].startswith(
            row["structure_id"] + ":"
        ), row
    assert metrics["mean_delta_e_mev_per_atom"]["counts"]["n_total"] == 2
    match = metrics["diffcsp.match_rate"]
    assert match["counts"]["n_targets"] == 2 and match["counts"]["n_gt_invalid"] == 0
    train_targets = {
        r.material_id: r.structure for r in load_split("perov_5", "train", limit=2).records
    }
    n_matched = _matched_by_hand(samples, train_targets)
    assert match["counts"]["n_matched"] == n_matched and match["value"] == n_matched / 2
    assert "perov_5/train" in json.dumps(match)
    assert Path(out["artifacts"]["per_structure_csv"]).read_text().count("\n") == 3

    # the nightly table with this checkpoint (CSP of 2 test-split targets): diffcsp runs,
    # cdvae has no checkpoint (or its module does not import) and says so
    from flows.nightly import nightly_benchmark

    rows = nightly_benchmark(
        dataset="perov_5",
        n=2,
        models=["diffcsp", "cdvae"],
        checkpoints={"diffcsp": str(checkpoint)},
        sample_steps=200,
        relaxer_settings=TINY_CHGNET,
        eval_limit=2,
        eval_coverage=False,
        home=str(tmp_path),
    )
    by_model = {r["model"]: r for r in rows}  # the models, then the test-split floor row
    diffcsp, cdvae = by_model["diffcsp"], by_model["cdvae"]
    # CSP ran; DiffCSP-C (the cpu-small-generate checkpoint) is missing: not "ok"
    assert diffcsp["status"] == "partial: generation not run", diffcsp
    assert diffcsp["notes"]["generation"].startswith("not run: no checkpoint in ")
    assert diffcsp["relaxed_samples"] == "csp"
    assert diffcsp["notes"]["relax"].startswith(
        "ΔE and RMSD are of the CSP samples (structures predicted for the test compositions), "
        "not of generated crystals (generation: not run: no checkpoint in "
    ), diffcsp["notes"]
    nightly_rows = _analysis_rows(tmp_path, "diffcsp", other_than=out["sample_dir"])
    assert len(nightly_rows) == 2
    with_delta_e = [r for r in nightly_rows if r.get("delta_e_mev_per_atom") is not None]
    assert diffcsp["n_samples"] == 2 and diffcsp["n_relaxed"] == len(with_delta_e)
    with ResultStore(home=tmp_path) as store:
        nightly_samples = [
            doc
            for doc in store.query("sample")
            if doc["provenance"]["model"] == "diffcsp"
            and doc["provenance"]["config"]["sample_dir"] != out["sample_dir"]
        ]
    assert len(nightly_samples) == 2
    # CSP of the first two test-split compositions (valid ones: the first SMACT-invalid perov_5
    # test row is the 15th)
    test_targets = {
        r.material_id: r.structure for r in load_split("perov_5", "test", limit=2).records
    }
    assert sorted(d["target_id"] for d in nightly_samples) == sorted(test_targets)
    assert diffcsp["match_rate"] == _matched_by_hand(nightly_samples, test_targets) / 2
    assert cdvae["status"].startswith("no checkpoint in "), cdvae


@pytest.mark.slow
@pytest.mark.services
def test_relaxation_fan_out_on_dask_slurm_cluster(harness: None, tmp_path: Path) -> None:
    """cluster="slurm": the relax tasks run on a dask-jobqueue worker that is an sbatch job."""
    from flows.pipeline import generate_and_relax

    subprocess.run(["bash", str(DEPLOY / "slurm" / "start-cluster.sh")], check=True, timeout=120)
    logs = tmp_path / "dask-logs"
    out = generate_and_relax(
        model="dataset",
        n=2,
        seed=5,
        relaxer_settings=TINY_CHGNET,
        cluster="slurm",
        cluster_kwargs={"walltime": "00:20:00", "log_directory": str(logs)},
        home=str(tmp_path),
    )
    [stage] = out["stages"]
    assert stage["n_stored"] == 2 and not stage["errors"]
    assert list(logs.glob("dask-worker-*.err"))  # the Dask worker was a SLURM job
    ledger = (tmp_path / "ledger" / "relaxations.jsonl").read_text().splitlines()
    pids = {json.loads(line)["pid"] for line in ledger}
    assert os.getpid() not in pids


def _matched_by_hand(samples: list[dict], targets: dict[str, Structure]) -> int:
    """How many CSP sample documents match their target, counted without analysis.matching as
    DiffCSP's compute_metrics.py does: samples that pass its structural check (every interatomic
    distance >= 0.5 Å, volume >= 0.1 Å^3) and for which pymatgen's StructureMatcher(stol=0.5,
    angle_tol=10, ltol=0.3).get_rms_dist finds a mapping (not ``fit``, whose criterion is the
    largest displacement). The composition check needs no recount: a CSP sample has its
    target's composition, and the targets passed it (``n_gt_invalid == 0``)."""
    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    n = 0
    for doc in samples:
        structure = doc["structure"]
        if structure is None:
            continue
        if isinstance(structure, dict):
            structure = Structure.from_dict(structure)
        distances = structure.distance_matrix + np.eye(len(structure)) * 10.5
        if distances.min() < 0.5 or structure.volume < 0.1:
            continue
        n += matcher.get_rms_dist(structure, targets[doc["target_id"]]) is not None
    return n


def _analysis_rows(home: Path, model: str, other_than: str) -> list[dict]:
    """The stored analysis documents of ``model``'s samples outside the sample directory
    ``other_than`` (the nightly's samples, beside those of an earlier run in the same store)."""
    with ResultStore(home=home) as store:
        analyses = store.query("analysis")
    return [
        a
        for a in analyses
        if a["provenance"]["model"] == model
        and a["provenance"]["config"]["sample_dir"] != other_than
    ]
