"""A Prefect worker that runs each flow run as a SLURM batch job (``sbatch``).

Work pool type ``slurm-sbatch``. The worker polls its pool like any Prefect worker; for each flow
run it writes a batch script (``#SBATCH`` lines from the job variables ``partition``, ``nodes``,
``cpus_per_task``, ``gpus``, ``mem``, ``time_limit``; the flow-run environment exported; then
``python -m prefect.engine``), submits it with ``sbatch --parsable``, reports the SLURM job id as
the flow run's infrastructure id, follows the job with ``scontrol show job`` (``squeue`` is not
enough: a finished job leaves the queue) and returns the job's exit code. Cancelling the flow run
calls ``scancel``.

Why not an existing package: ``prefect-slurm`` drives slurmrestd's REST API v0.0.40+ (Slurm >=
23.11) and Debian 12 ships Slurm 22.05; ``prefect-submitit`` needs Python >= 3.12. This worker
uses only the ``sbatch``/``scontrol``/``scancel`` command line.

Run it with ``deploy/start-worker.sh slurm`` (``python -m flows.slurm_worker --pool slurm``); create
the pool with ``deploy/deploy.sh`` (``--write-template`` writes the base job template).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import InfrastructureNotFound
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import Field

WORKER_TYPE = "slurm-sbatch"

TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)
"""SLURM job states after which the job will not run any more."""


class SlurmJobConfiguration(BaseJobConfiguration):
    """How one flow run becomes one SLURM job (filled from the pool's job variables)."""

    partition: str = Field(default="debug")
    nodes: int = Field(default=1)
    cpus_per_task: int = Field(default=1)
    gpus: int = Field(default=0)
    mem: str | None = Field(default=None)
    time_limit: str = Field(default="01:00:00")
    working_dir: str | None = Field(default=None)
    script_dir: str | None = Field(default=None)
    python: str | None = Field(default=None)
    poll_interval: float = Field(default=2.0)
    sbatch_extra: list[str] = Field(default_factory=list)

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: Any = None,
        flow: Any = None,
        work_pool: Any = None,
        worker_name: str | None = None,
        worker_id: Any = None,
    ) -> None:
        """Fill in the flow-run environment; the default command is ``<python> -m prefect.engine``.

        (Prefect's default ``prefect flow-run execute`` needs ``prefect`` on the job's PATH.)
        """
        configured = self.command is not None
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )
        if not configured:
            self.command = f"{shlex.quote(self.python or sys.executable)} -m prefect.engine"

    def sbatch_directives(self, job_name: str, log_path: str) -> list[str]:
        """Return the ``#SBATCH`` lines of this job."""
        lines = [
            f"#SBATCH --job-name={job_name}",
            f"#SBATCH --partition={self.partition}",
            f"#SBATCH --nodes={self.nodes}",
            "#SBATCH --ntasks=1",
            f"#SBATCH --cpus-per-task={self.cpus_per_task}",
            f"#SBATCH --time={self.time_limit}",
            f"#SBATCH --output={log_path}",
        ]
        if self.gpus:
            lines.append(f"#SBATCH --gres=gpu:{self.gpus}")
        if self.mem:
            lines.append(f"#SBATCH --mem={self.mem}")
        if self.working_dir:
            lines.append(f"#SBATCH --chdir={self.working_dir}")
        lines += [f"#SBATCH {extra}" for extra in self.sbatch_extra]
        return lines


class SlurmVariables(BaseVariables):
    """Job variables of the ``slurm`` pool (settable per deployment or per run)."""

    partition: str = Field(default="debug", description="SLURM partition (sbatch --partition).")
    nodes: int = Field(default=1, description="Number of nodes.")
    cpus_per_task: int = Field(default=1, description="CPUs of the job (--cpus-per-task).")
    gpus: int = Field(default=0, description="GPUs (--gres=gpu:N); 0 for none.")
    mem: str | None = Field(default=None, description="Memory, e.g. '8G' (default DefMemPerCPU).")
    time_limit: str = Field(default="01:00:00", description="Wall-time limit (--time).")
    working_dir: str | None = Field(
        default=None, description="Directory the job starts in (--chdir)."
    )
    script_dir: str | None = Field(
        default=None,
        description="Where batch scripts and job logs go (default $PREFECT_HOME/slurm-jobs).",
    )
    python: str | None = Field(
        default=None, description="Python interpreter of the job (default: the worker's)."
    )
    poll_interval: float = Field(default=2.0, description="Seconds between job-state polls.")
    sbatch_extra: list[str] = Field(
        default_factory=list, description="Further sbatch options, e.g. ['--exclusive']."
    )


class SlurmWorkerResult(BaseWorkerResult):
    """The SLURM job id (``identifier``) and the job's exit code (``status_code``)."""


async def _run(*cmd: str, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def parse_scontrol(text: str) -> dict[str, str]:
    """Parse ``scontrol show job -o`` output (``Key=Value`` pairs) into a dict."""
    return dict(re.findall(r"(\w+)=(\S*)", text))


def slurm_exit_code(info: dict[str, str]) -> int:
    """Return the job's exit code from ``ExitCode=code:signal`` (signal → 128 + signal)."""
    code, _, signal = info.get("ExitCode", "0:0").partition(":")
    if signal and signal != "0":
        return 128 + int(signal)
    return int(code or 0)


async def job_info(job_id: str) -> dict[str, str] | None:
    """Return the ``scontrol show job`` fields of a job, or ``None`` if SLURM forgot it."""
    code, out, _ = await _run("scontrol", "show", "job", "-o", job_id)
    if code != 0 or "JobState=" not in out:
        return None
    return parse_scontrol(out)


def build_script(configuration: SlurmJobConfiguration, job_name: str, log_path: str) -> str:
    """Return the batch script of one flow run.

    The script exports the flow-run environment (API URL, flow run id, ...), runs the flow-run
    command and writes its exit code next to the log (used when SLURM has purged the job).
    """
    python = configuration.python or sys.executable
    command = configuration.command or f"{shlex.quote(python)} -m prefect.engine"
    env_lines = [
        f"export {key}={shlex.quote(str(value))}"
        for key, value in sorted((configuration.env or {}).items())
        if value is not None and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key)
    ]
    return "\n".join(
        [
            "#!/bin/bash",
            *configuration.sbatch_directives(job_name, log_path),
            "",
            *env_lines,
            "",
            command,
            "status=$?",
            f"echo $status > {shlex.quote(log_path + '.exitcode')}",
            "exit $status",
            "",
        ]
    )


class SlurmWorker(BaseWorker[SlurmJobConfiguration, SlurmVariables, SlurmWorkerResult]):
    """Prefect worker that submits flow runs as ``sbatch`` jobs and follows them."""

    type = WORKER_TYPE
    job_configuration = SlurmJobConfiguration
    job_configuration_variables = SlurmVariables
    _description = "Run each flow run as a SLURM batch job (sbatch / scontrol / scancel)."
    _display_name = "SLURM (sbatch)"

    async def run(
        self,
        flow_run: FlowRun,
        configuration: SlurmJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> SlurmWorkerResult:
        """Submit the flow run with ``sbatch`` and wait until the job ends.

        Parameters
        ----------
        flow_run
            The flow run.
        configuration
            Its job configuration.
        task_status
            Receives the SLURM job id as soon as the job is submitted.

        Returns
        -------
        SlurmWorkerResult
            Job id and exit code.
        """
        from prefect.settings import PREFECT_HOME

        logger = self.get_flow_run_logger(flow_run)
        script_dir = Path(configuration.script_dir or Path(PREFECT_HOME.value()) / "slurm-jobs")
        script_dir.mkdir(parents=True, exist_ok=True)
        job_name = f"prefect-{flow_run.name}"
        log_path = str(script_dir / f"{flow_run.id}.log")
        script_path = script_dir / f"{flow_run.id}.sbatch"
        script_path.write_text(build_script(configuration, job_name, log_path))
        code, out, err = await _run("sbatch", "--parsable", str(script_path))
        if code != 0:
            raise RuntimeError(f"sbatch failed for flow run {flow_run.id}: {err.strip() or out}")
        job_id = out.strip().split(";")[0]
        logger.info("flow run %s submitted as SLURM job %s (log %s)", flow_run.id, job_id, log_path)
        if task_status is not None:
            task_status.started(job_id)
        status = await self._wait(job_id, log_path, configuration.poll_interval)
        logger.info("SLURM job %s finished with exit code %s", job_id, status)
        return SlurmWorkerResult(identifier=job_id, status_code=status)

    async def _wait(self, job_id: str, log_path: str, poll: float) -> int:
        exit_file = Path(log_path + ".exitcode")
        while True:
            info = await job_info(job_id)
            if info is None:  # purged after MinJobAge: the script wrote its exit code
                return int(exit_file.read_text().strip()) if exit_file.is_file() else -1
            state = info.get("JobState", "")
            if state in TERMINAL_STATES:
                if state == "COMPLETED":
                    return slurm_exit_code(info)
                return slurm_exit_code(info) or 1
            await anyio.sleep(poll)

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: SlurmJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Cancel the SLURM job of a flow run (``scancel``; SIGTERM first, then the kill).

        Raises
        ------
        InfrastructureNotFound
            If SLURM does not know the job (any more).
        """
        job_id = str(infrastructure_pid)
        info = await job_info(job_id)
        if info is None or info.get("JobState") in TERMINAL_STATES:
            raise InfrastructureNotFound(f"SLURM job {job_id} is not running")
        await _run("scancel", "--signal=TERM", job_id)
        for _ in range(max(1, int(grace_seconds))):
            info = await job_info(job_id)
            if info is None or info.get("JobState") in TERMINAL_STATES:
                return
            await anyio.sleep(1)
        await _run("scancel", job_id)


def base_job_template() -> dict[str, Any]:
    """Return the base job template of the ``slurm-sbatch`` pool."""
    return SlurmWorker.get_default_base_job_template()


async def create_pool(name: str = "slurm") -> None:
    """Create (or update the template of) the work pool ``name`` of type ``slurm-sbatch``.

    ``prefect work-pool create --type`` accepts only the worker types Prefect ships, hence this.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists

    template = base_job_template()
    async with get_client() as client:
        try:
            await client.create_work_pool(
                WorkPoolCreate(name=name, type=WORKER_TYPE, base_job_template=template)
            )
            print(f"created work pool {name!r} (type {WORKER_TYPE})")
        except ObjectAlreadyExists:
            await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
            print(f"updated work pool {name!r} (type {WORKER_TYPE})")


def main(argv: list[str] | None = None) -> None:
    """Start a SLURM worker, or write the pool's base job template (``--write-template``)."""
    parser = argparse.ArgumentParser(prog="python -m flows.slurm_worker", description=__doc__)
    parser.add_argument("--pool", default="slurm", help="work pool name")
    parser.add_argument("--name", default=None, help="worker name")
    parser.add_argument("--limit", type=int, default=None, help="max concurrent flow runs")
    parser.add_argument("--write-template", metavar="PATH", help="write the base job template")
    parser.add_argument(
        "--create-pool", action="store_true", help="create or update the pool, then exit"
    )
    args = parser.parse_args(argv)
    if args.write_template:
        Path(args.write_template).write_text(json.dumps(base_job_template(), indent=2))
        return
    if args.create_pool:
        anyio.run(create_pool, args.pool)
        return

    async def _serve() -> None:
        async with SlurmWorker(
            work_pool_name=args.pool, name=args.name, limit=args.limit
        ) as worker:
            await worker.start()

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_serve)


if __name__ == "__main__":
    main()
