"""A real flow run (ephemeral Prefect server, real CHGNet, real MontyStore) and its rerun."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.store import ResultStore

from .conftest import DEPLOY, TINY_CHGNET


@pytest.fixture(scope="module")
def harness() -> None:
    with prefect_test_harness(server_startup_timeout=600):
        yield


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
    first = generate_and_relax(**params)
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
    assert Path(first["artifacts"]["histogram_png"]).stat().st_size > 1000

    second = generate_and_relax(**params)
    [stage] = second["stages"]
    assert stage["n_skipped"] == 3 and stage["n_submitted"] == 0
    assert len(_ledger(tmp_path)) == 3  # nothing recomputed
    with ResultStore(home=tmp_path) as store:
        after = {r["doc_id"]: r["created_at"] for r in store.query("relaxation")}
        assert after == before
        assert store.count("sample") == 3 and store.count("analysis") == 3


def test_nightly_benchmark_reports_every_model(harness: None, tmp_path: Path) -> None:
    """Models without a checkpoint (or with a missing module) stay in the table with a reason."""
    from prefect.client.orchestration import get_client

    from flows.nightly import GENERATORS, nightly_benchmark

    rows = nightly_benchmark(dataset="perov_5", scale="cpu-small", n=2, home=str(tmp_path))
    assert [r["model"] for r in rows] == list(GENERATORS)
    for row in rows:
        assert row["status"].startswith(("no checkpoint", "not available")), row
    reports = list((tmp_path / "reports" / "nightly").glob("perov_5-cpu-small-*.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())[0]["model"] == "diffcsp"

    import anyio

    async def _artifact() -> list:
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["nightly-perov-5-cpu-small"])
                )
            )

    [artifact] = anyio.run(_artifact)
    assert "diffcsp" in str(artifact.data) and "no checkpoint" in str(artifact.data)


@pytest.mark.slow
def test_generate_and_relax_with_a_real_tiny_diffcsp(
    harness: None, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
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
    # every sample is either relaxed and compared (ΔE) or reported with a reason naming it:
    # a 300-step model gives sane 3-5 Å cells, but in one run both samples had atoms 0.07-0.14 Å
    # apart (invalid input), in another one relaxed and one was left-handed (now relaxed on a
    # right-handed basis), so the test does not require a ΔE
    for row in out["rows"]:
        assert row["delta_e_mev_per_atom"] is not None or row["error"].startswith(
            row["structure_id"] + ":"
        ), row
    assert metrics["mean_delta_e_mev_per_atom"]["counts"]["n_total"] == 2
    match = metrics["diffcsp.match_rate"]
    assert 0.0 <= match["value"] <= 1.0
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
    diffcsp, cdvae = rows
    assert diffcsp["status"] == "ok", diffcsp
    assert diffcsp["n_samples"] == 2 and 0 <= diffcsp["n_relaxed"] <= 2
    assert diffcsp["match_rate"] is not None and 0.0 <= diffcsp["match_rate"] <= 1.0
    assert cdvae["status"].startswith(("no checkpoint", "not available")), cdvae


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
