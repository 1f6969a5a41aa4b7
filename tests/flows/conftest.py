"""Fixtures of the orchestration tests: a Prefect home in tmp, a real server, workers, SLURM."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Prefect reads its settings at import: give this test process its own home before any test
# module imports prefect (environment.md: raise the ephemeral start-up timeout on this box).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="dftloop-prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "240")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DFTLOOP_TORCH_THREADS", "1")

TINY_CHGNET = {"fmax": 0.2, "max_steps": 30}
"""CHGNet settings of the tests: a few ionic steps per structure on 5-atom perovskites."""

HEARTBEAT_SECONDS = 30
"""Flow-run heartbeat period of the test server's workers (the crash window is 3 of them)."""


@pytest.fixture(scope="session")
def harness() -> Iterator[None]:
    """One ``prefect_test_harness`` (a temporary server and database) for every test that runs
    flows in this process; tests find their own runs by flow-run id."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):
        yield


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrefectServer:
    """A Prefect server started by deploy/start-prefect-server.sh, and helpers around it."""

    env: dict[str, str]
    home: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['PREFECT_SERVER_API_PORT']}/api"

    @property
    def ui(self) -> str:
        return self.api.removesuffix("/api")

    def script(self, name: str, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run(
            ["bash", str(DEPLOY / name), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{name} {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def prefect(self, *args: str, timeout: float = 300) -> str:
        """The ``prefect`` CLI as the docs print it: ``source deploy/env.sh`` first (the test
        environment sets the port, not ``PREFECT_API_URL``)."""
        proc = subprocess.run(
            ["bash", "-c", 'source deploy/env.sh && exec .venv/bin/prefect "$@"', "prefect", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"prefect {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def request(self, path: str, payload: dict | None = None) -> object:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.api + path,
            data=data,
            method="POST" if data is not None else "GET",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def run_deployment(self, name: str, **params: object) -> str:
        """``prefect deployment run NAME -p k=v ...``; return the flow run id."""
        args = ["deployment", "run", name]
        for key, value in params.items():
            args += ["-p", f"{key}={json.dumps(value)}"]
        out = self.prefect(*args)
        match = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert match, out
        return match.group(1)

    def flow_run(self, run_id: str) -> dict:
        return self.request(f"/flow_runs/{run_id}")  # type: ignore[return-value]

    def wait(self, run_id: str, timeout: float = 900) -> dict:
        """Wait until the flow run is final; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(3)
        raise TimeoutError(f"flow run {run_id} not finished after {timeout} s: {run['state']}")

    def start_worker(self, pool: str) -> int:
        self.script("start-worker.sh", pool, "--background")
        return int((self.home / "prefect" / f"worker-{pool}.pid").read_text())

    def stop_worker(self, pool: str) -> None:
        self.script("stop-worker.sh", pool, timeout=120)

    def kill_worker(self, pool: str, flow_run_ids: tuple[str, ...] = ()) -> None:
        """kill -9 the worker and the flow runs it started (each in its own process group,
        with its Dask workers): what a crash of the worker's machine does."""
        pid_file = self.home / "prefect" / f"worker-{pool}.pid"
        groups = {int(pid_file.read_text())}
        for run_id in flow_run_ids:
            infra = self.flow_run(run_id).get("infrastructure_pid")
            if infra:
                pid = int(str(infra).rsplit(":", 1)[-1])
                with contextlib.suppress(ProcessLookupError):
                    groups.add(os.getpgid(pid))
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        pid_file.unlink()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real Prefect server on 127.0.0.1 (free port) with every deployment of deploy/prefect.yaml.

    Started and deployed with the project's own scripts; DFTLOOP_HOME and PREFECT_HOME in tmp.
    """
    home = tmp_path_factory.mktemp("dftloop-home")
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "JOBFLOW_")) and k != "DFTLOOP_HOME"
    }
    env.update(
        DFTLOOP_HOME=str(home),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_STARTUP_TIMEOUT="240",
        # heartbeats every 30 s (Prefect's minimum): a killed run is Crashed after 90 s
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS),
        DFTLOOP_TORCH_THREADS="1",
    )
    server = PrefectServer(env=env, home=home)
    server.script("start-prefect-server.sh", "--background")
    try:
        server.script("deploy.sh")
        yield server
    finally:
        for pool in ("local", "slurm"):
            if (home / "prefect" / f"worker-{pool}.pid").exists():
                with contextlib.suppress(Exception):
                    server.stop_worker(pool)
        server.script("stop-prefect-server.sh", timeout=120)


def run_artifacts(flow_run_id: str) -> dict[str, object]:
    """``{key: artifact}`` of the keyed artifacts created on one flow run (the current API;
    Prefect's own unkeyed ones, e.g. of a failed task's result, are left out)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


def child_flow_runs(flow_run_id: str) -> dict[str, str]:
    """``{flow name: flow run id}`` of the subflow runs of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        names = {f.id: f.name for f in client.read_flows()}
    return {names[r.flow_id]: str(r.id) for r in runs}


def run_log_messages(flow_run_id: str, timeout: float = 60, expect: str = "") -> list[str]:
    """The log messages of one flow run (waits up to ``timeout`` s for ``expect`` to arrive:
    Prefect sends logs in batches from a background worker)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        messages = [log.message for log in logs]
        if any(expect in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(1)


@pytest.fixture
def no_shipped_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No registered (shipped or user) checkpoints: the nightly table finds only what a test
    trained or passed."""
    monkeypatch.delenv("DFTLOOP_MODEL_REGISTRY", raising=False)
    monkeypatch.setattr("generators.model_zoo.REGISTRY_FILE", tmp_path / "no-registry.json")
