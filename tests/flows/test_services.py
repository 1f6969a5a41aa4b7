"""End to end through a real Prefect server, real workers, real CHGNet, the real store, SLURM.

The module fixture starts the server with deploy/start-prefect-server.sh and registers the
deployments with deploy/deploy.sh (nothing is skipped: every service is started here).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from flows.crash_detection import AUTOMATION_NAME
from flows.store import ResultStore

from .conftest import DEPLOY, HEARTBEAT_SECONDS, TINY_CHGNET, PrefectServer

pytestmark = pytest.mark.services

E2E = {"n": 3, "seed": 11, "relaxer_settings": TINY_CHGNET}


def _ledger(home: Path) -> list[dict]:
    path = home / "ledger" / "relaxations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _docs(server: PrefectServer, kind: str, seed: int) -> list[dict]:
    """Documents of one kind that belong to the samples drawn with ``seed``."""
    with ResultStore(home=server.home) as store:
        samples = [
            d for d in store.query("sample") if d["provenance"]["config"].get("seed") == seed
        ]
        if kind == "sample":
            return samples
        hashes = {d["structure_hash"] for d in samples}
        return [d for d in store.query(kind) if d["structure_hash"] in hashes]


def _chromium_dom(url: str, expect: str, attempts: int = 4) -> str:
    """The DOM of ``url`` after headless Chromium ran the UI's JavaScript (retried until
    ``expect`` appears: the single-page UI renders late on a busy machine)."""
    dom = ""
    for attempt in range(attempts):
        proc = subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                f"--virtual-time-budget={20000 * (attempt + 1)}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        dom = proc.stdout
        if expect in dom:
            break
    return dom


def test_generate_and_relax_local_end_to_end(prefect_server: PrefectServer) -> None:
    server = prefect_server
    server.start_worker("local")
    run_id = server.run_deployment("generate-and-relax/local", **E2E)
    run = server.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]

    samples = _docs(server, "sample", 11)
    relaxations = _docs(server, "relaxation", 11)
    analyses = _docs(server, "analysis", 11)
    assert len(samples) == 3
    hashes = {s["structure_hash"] for s in samples}
    assert {r["structure_hash"] for r in relaxations} == hashes
    assert all(r["status"] in ("ok", "not_converged") for r in relaxations), relaxations
    assert {a["structure_hash"] for a in analyses} == hashes
    assert all(a["delta_e_mev_per_atom"] is not None for a in analyses)

    # the four artifacts are on the run the user started (not on its analyze subflow)
    artifacts = server.request(
        "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
    )
    by_key = {a["key"]: a for a in artifacts}  # type: ignore[union-attr]
    prefix = "dataset-perov-5-chgnet"
    kinds = ("metrics", "per-structure", "delta-e-histogram", "store")
    assert set(by_key) == {f"{prefix}-{kind}" for kind in kinds}
    assert "data:image/png;base64," in by_key[f"{prefix}-delta-e-histogram"]["data"]

    # deploy.sh created the automation that marks runs without heartbeats Crashed
    [automation] = server.request(
        "/automations/filter", {"automations": {"name": {"any_": [AUTOMATION_NAME]}}}
    )  # type: ignore[misc]
    assert automation["trigger"]["within"] == 3 * HEARTBEAT_SECONDS
    assert automation["actions"][0]["state"] == "CRASHED"

    # the UI (headless Chromium) shows the per-structure table with the sample ids
    table = by_key[f"{prefix}-per-structure"]
    dom = _chromium_dom(f"{server.ui}/artifacts/artifact/{table['id']}", "<table")
    assert "<table" in dom
    for sample in samples:
        assert sample["sample_id"] in dom
    image = '<img src="data:image/png;base64,'
    histogram = by_key[f"{prefix}-delta-e-histogram"]
    dom = _chromium_dom(f"{server.ui}/artifacts/artifact/{histogram['id']}", image)
    assert image in dom


@pytest.mark.slow
def test_resume_after_worker_kill(prefect_server: PrefectServer) -> None:
    """kill -9 the worker and its flow run mid-relaxation: the run is marked Crashed by the
    heartbeat automation; restart, rerun: completes, nothing recomputed or lost."""
    server = prefect_server
    params = {"n": 5, "seed": 12, "chunk_size": 1, "relaxer_settings": TINY_CHGNET}
    if not (server.home / "prefect" / "worker-local.pid").exists():
        server.start_worker("local")
    first = server.run_deployment("generate-and-relax/local", **params)
    deadline = time.monotonic() + 900
    while len(_docs(server, "relaxation", 12)) < 2:
        assert time.monotonic() < deadline, "no relaxation stored in time"
        assert server.flow_run(first)["state"]["type"] not in ("COMPLETED", "FAILED", "CRASHED")
        time.sleep(1)
    server.kill_worker("local", (first,))
    killed = time.monotonic()
    time.sleep(2)
    before = {d["doc_id"]: d["created_at"] for d in _docs(server, "relaxation", 12)}
    time.sleep(15)  # nothing of the killed run is still writing
    assert {d["doc_id"] for d in _docs(server, "relaxation", 12)} == set(before)
    assert 2 <= len(before) < 5, before
    done_hashes = {d["structure_hash"] for d in _docs(server, "relaxation", 12)}

    # no process is left to report: the heartbeat automation marks the run Crashed after three
    # missed heartbeats (90 s here), with a message that says what happened
    assert server.flow_run(first)["state"]["type"] == "RUNNING"
    run = server.wait(first, timeout=6 * HEARTBEAT_SECONDS)
    crashed_after = time.monotonic() - killed
    assert run["state"]["type"] == "CRASHED", run["state"]
    assert run["state"]["message"].startswith(f"No heartbeat for {3 * HEARTBEAT_SECONDS} s")
    assert crashed_after > 2 * HEARTBEAT_SECONDS, crashed_after  # not before beats were missed

    server.start_worker("local")
    second = server.run_deployment("generate-and-relax/local", **params)
    run = server.wait(second)
    assert run["state"]["type"] == "COMPLETED", run["state"]

    after = {d["doc_id"]: d["created_at"] for d in _docs(server, "relaxation", 12)}
    assert len(after) == 5 and len(_docs(server, "sample", 12)) == 5
    assert len(_docs(server, "analysis", 12)) == 5
    for doc_id, created in before.items():  # no document lost or rewritten
        assert after[doc_id] == created
    ledger = [e for e in _ledger(server.home) if e["structure_hash"] in done_hashes]
    assert len(ledger) == len(done_hashes)  # finished relaxations were computed exactly once


def test_sbatch_on_the_one_node_cluster() -> None:
    """deploy/slurm/start-cluster.sh brings up a cluster that runs a job; sacct is not there
    (no accounting database), the job is followed with scontrol and the jobcomp file."""
    subprocess.run(["bash", str(DEPLOY / "slurm" / "start-cluster.sh")], check=True, timeout=120)
    job_id = subprocess.run(
        ["sbatch", "--parsable", "--wrap", "echo dftloop-sbatch-ok", "--output", "/dev/null"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert job_id.isdigit(), job_id
    deadline = time.monotonic() + 120
    info = ""
    while time.monotonic() < deadline:
        info = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True
        ).stdout
        if "JobState=COMPLETED" in info:
            break
        time.sleep(1)
    assert "JobState=COMPLETED" in info and "ExitCode=0:0" in info, info
    jobcomp = Path("/var/log/slurm/jobcomp.log").read_text()
    assert f"JobId={job_id} " in jobcomp and "JobState=COMPLETED" in jobcomp
    sacct = subprocess.run(["sacct", "-j", job_id], capture_output=True, text=True)
    assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stderr.lower()


@pytest.mark.slow
def test_generate_and_relax_through_slurm_pool(prefect_server: PrefectServer) -> None:
    """The flow runs as an sbatch job of the one-node cluster (deploy/slurm/start-cluster.sh)."""
    server = prefect_server
    subprocess.run(["bash", str(DEPLOY / "slurm" / "start-cluster.sh")], check=True, timeout=120)
    server.start_worker("slurm")
    # the samples of the local end-to-end run (when it ran first, the store has their
    # relaxations and the job only skips them and analyses)
    run_id = server.run_deployment("generate-and-relax/slurm", **E2E)
    run = server.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    job_id = run["infrastructure_pid"]
    assert job_id and job_id.isdigit()
    # the flow run reports completion a few seconds before its process (and job) ends
    for _ in range(120):
        info = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True
        ).stdout
        if not re.search(r"JobState=(RUNNING|COMPLETING|PENDING)", info):
            break
        time.sleep(1)
    assert "JobState=COMPLETED" in info and "ExitCode=0:0" in info, info
    log = (server.home / "prefect" / "slurm-jobs" / f"{run_id}.log").read_text()
    assert "chgnet: 3 structures" in log  # the flow itself ran inside the SLURM job
    assert len(_docs(server, "analysis", 11)) == 3
