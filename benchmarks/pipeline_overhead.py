"""Time a ``generate-and-relax`` run spends outside the library calls (Prefect, store, files).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pipeline_overhead.py \\
        [--n 32 256] [--steps 1000 100] [--rounds 1] [--rerun] [--ephemeral] \\
        [--cluster-kwargs '{"processes": true}' null] [--json FILE]

Each run is the main job's flow (:func:`flows.main_job.main_job_parameters`: the shipped
``diffcsp-perov5-csp`` checkpoint CSP-samples the first ``n`` perov_5 test compositions, CHGNet
relaxes every sample with fmax 0.05 eV/Å and at most 500 steps, the analysis compares each
sample with its relaxed structure and computes the CSP metrics), run in this process against a
Prefect server started with ``deploy/start-prefect-server.sh`` (temporary ``PREFECT_HOME``, free
port; ``--ephemeral``: Prefect's ephemeral API, as ``deploy/run-main.sh`` runs the main job,
started before the runs), in a fresh project directory (embedded MontyStore), relaxations
fanned out to the default local Dask worker (``--cluster-kwargs``: one or more JSON settings of
the relaxations' local cluster, run one after the other in every round; ``null`` is the
default). ``--steps`` gives the sampling steps for each ``n`` (the last value repeats).

The library time is the union of the intervals that :mod:`flows.timing` records around the
library calls (``DFTLOOP_LIBRARY_TIMES``): ``generators.sampler.sample``, the relaxer's
``relax`` in the Dask worker, ``analysis.stability.compare_to_relaxed`` and
``summarize_stability``, the CSP metrics (CHGNet's weights load inside the first ``relax``
call and count as library time). Everything else inside the flow's wall time is overhead:
Prefect's flow and task machinery, the Dask cluster (with worker processes: their start, their
own imports, their shutdown), store reads and writes, (de)serialisation of structures and
results, hashing, artifacts. The libraries are imported before the clock starts (a script
calling them would import them too).

Each round uses another sampling seed (so nothing comes from Prefect's task cache); ``--rerun``
also times a second run of the same parameters, where everything is found in the store.
Prints wall, library and overhead seconds, the overhead fraction, where the overhead is (per
subflow / stage), and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def prefect_server(root: Path) -> Iterator[dict[str, str]]:
    """A Prefect server started by the deploy scripts; yields the client's Prefect variables."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "JOBFLOW_"))}
    env.update(
        DFTLOOP_HOME=str(root / "server-home"),
        PREFECT_HOME=str(root / "prefect"),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_STARTUP_TIMEOUT="300",
    )

    def script(name: str, *args: str) -> None:
        proc = subprocess.run(
            ["bash", str(DEPLOY / name), *args], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    script("start-prefect-server.sh", "--background")
    try:
        yield {
            "PREFECT_HOME": str(root / "prefect"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        }
    finally:
        script("stop-prefect-server.sh")


def union_seconds(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` clipped to ``[lo, hi]``."""
    total, end = 0.0, lo
    for a, b in sorted(intervals):
        a, b = max(a, end), min(b, hi)
        if b > a:
            total += b - a
            end = b
    return total


def read_intervals(path: Path) -> list[dict[str, Any]]:
    """The library-call records written by :func:`flows.timing.library_time`."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def child_runs(flow_run_id: str) -> list[tuple[str, float, float]]:
    """``(subflow name, start, end)`` (epoch seconds) of a flow run's subflow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        names = {f.id: f.name for f in client.read_flows()}
    out = []
    for run in runs:
        if run.start_time and run.end_time:
            out.append((names[run.flow_id], run.start_time.timestamp(), run.end_time.timestamp()))
    return sorted(out, key=lambda r: r[1])


def relax_task_runs(flow_run_id: str) -> list[tuple[float, float]]:
    """``(start, end)`` (epoch seconds) of the flow run's ``relax_chunk`` task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(
        (r.start_time.timestamp(), r.end_time.timestamp())
        for r in runs
        if r.name.startswith("relax-") and r.start_time and r.end_time
    )


def relax_breakdown(
    lo: float, hi: float, tasks: list[tuple[float, float]], relax: list[tuple[float, float]]
) -> dict[str, float]:
    """Where the relaxation stage's time goes: before the first chunk task runs (store look-up,
    Dask cluster and worker start), inside the chunk tasks but outside the relaxer, between
    chunk tasks, and after the last one (last store write, cluster shutdown)."""
    if not tasks:
        return {}
    inside = sum(b - a for a, b in tasks)
    return {
        "before_first_chunk_s": tasks[0][0] - lo,
        "in_chunk_tasks_not_relaxing_s": inside - union_seconds(relax, lo, hi),
        "between_chunk_tasks_s": (tasks[-1][1] - tasks[0][0]) - union_seconds(tasks, lo, hi),
        "after_last_chunk_s": hi - tasks[-1][1],
        "chunks": len(tasks),
    }


def phases(
    t0: float, t1: float, subflows: list[tuple[str, float, float]]
) -> list[tuple[str, float, float]]:
    """Split ``[t0, t1]`` into the subflows and the flow's own stretches between them."""
    out, cursor = [], t0
    for name, a, b in subflows:
        if a > cursor:
            out.append(("generate-and-relax (own)", cursor, a))
        out.append((name, a, b))
        cursor = max(cursor, b)
    if t1 > cursor:
        out.append(("generate-and-relax (own)", cursor, t1))
    return out


def run_once(
    n: int,
    steps: int,
    seed: int,
    home: Path,
    times: Path,
    cluster_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``generate-and-relax`` run of the main job's parameters; return the measurements."""
    from flows.main_job import main_job_parameters
    from flows.pipeline import generate_and_relax

    env = {
        "DFTLOOP_HOME": str(home),
        "DFTLOOP_MAIN_N": str(n),
        "DFTLOOP_MAIN_STEPS": str(steps),
    }
    params = main_job_parameters(env)
    if cluster_kwargs is not None:
        params["cluster_kwargs"] = cluster_kwargs
    load0 = os.getloadavg()
    t0 = time.time()
    state = generate_and_relax(**params, seed=seed, return_state=True)
    t1 = time.time()
    load1 = os.getloadavg()
    result = state.result()
    records = read_intervals(times)
    intervals = [(r["start"], r["end"]) for r in records]
    library = union_seconds(intervals, t0, t1)
    by_name: dict[str, float] = {}
    for r in records:
        by_name[r["name"]] = by_name.get(r["name"], 0.0) + r["end"] - r["start"]
    run_id = str(state.state_details.flow_run_id)
    split = []
    for name, a, b in phases(t0, t1, child_runs(run_id)):
        split.append(
            {
                "phase": name,
                "wall_s": b - a,
                "library_s": union_seconds(intervals, a, b),
            }
        )
    stage = result["stages"][0]
    relax_phase = [p for p in phases(t0, t1, child_runs(run_id)) if p[0].endswith("(own)")]
    relax_phase = max(relax_phase, key=lambda p: p[2] - p[1])  # the stretch between subflows
    relax_calls = [(r["start"], r["end"]) for r in records if r["name"] == "relax"]
    breakdown = relax_breakdown(
        relax_phase[1], relax_phase[2], relax_task_runs(run_id), relax_calls
    )
    return {
        "n": n,
        "steps": steps,
        "seed": seed,
        "wall_s": t1 - t0,
        "library_s": library,
        "overhead_s": t1 - t0 - library,
        "overhead_frac": (t1 - t0 - library) / (t1 - t0),
        "library_by_call_s": by_name,
        "phases": split,
        "relax_stage": breakdown,
        "relaxed": stage["n_stored"],
        "skipped": stage["n_skipped"],
        "load_before": load0,
        "load_after": load1,
    }


def report(m: dict[str, Any], label: str) -> None:
    """Print one run's measurements."""
    print(
        f"\n{label}: n={m['n']} steps={m['steps']} seed={m['seed']} "
        f"(relaxed {m['relaxed']}, found in the store {m['skipped']})"
    )
    print(
        f"  wall {m['wall_s']:8.1f} s   library {m['library_s']:8.1f} s   "
        f"overhead {m['overhead_s']:7.1f} s = {100 * m['overhead_frac']:.2f} %"
    )
    calls = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(m["library_by_call_s"].items()))
    print(f"  library calls: {calls}")
    for p in m["phases"]:
        print(
            f"    {p['phase']:28s} wall {p['wall_s']:8.1f} s  library {p['library_s']:8.1f} s  "
            f"overhead {p['wall_s'] - p['library_s']:6.1f} s"
        )
    if m["relax_stage"]:
        shown = ", ".join(
            f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f}" for k, v in m["relax_stage"].items()
        )
        print(f"  relaxation stage: {shown} (s)")
    la, lb = m["load_before"], m["load_after"]
    print(
        f"  load average before {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, after {lb[0]:.2f} "
        f"{lb[1]:.2f} {lb[2]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[32, 256])
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[1000], help="sampling steps per --n value"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rerun", action="store_true", help="also time a run finding all stored")
    parser.add_argument(
        "--ephemeral",
        action="store_true",
        help="no server: Prefect's ephemeral API, as deploy/run-main.sh runs the main job",
    )
    parser.add_argument(
        "--cluster-kwargs",
        type=json.loads,
        nargs="+",
        default=[None],
        help="JSON cluster settings of the relaxation stage; several alternate in each round",
    )
    parser.add_argument("--json", type=Path, help="write the measurements to this file")
    args = parser.parse_args()
    steps = {n: args.steps[min(i, len(args.steps) - 1)] for i, n in enumerate(args.n)}

    root = Path(tempfile.mkdtemp(prefix="dftloop-overhead-"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("DFTLOOP_TORCH_THREADS", "1")
    os.environ.pop("JOBFLOW_CONFIG_FILE", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    measured: list[dict[str, Any]] = []
    try:
        server = (
            contextlib.nullcontext({"PREFECT_HOME": str(root / "prefect")})
            if args.ephemeral
            else prefect_server(root)
        )
        with server as prefect_env:
            os.environ.update(prefect_env)  # before prefect is imported: settings load then
            # the libraries, imported before any clock starts
            import analysis.evaluate
            import analysis.stability  # noqa: F401
            import flows.pipeline  # noqa: F401
            import generators.sampler  # noqa: F401
            import relax  # noqa: F401
            from flows.timing import LIBRARY_TIMES_ENV

            api = prefect_env.get("PREFECT_API_URL", "ephemeral")
            if args.ephemeral:  # started once per process, like the imports: not in a run
                from prefect.client.orchestration import get_client

                tic = time.perf_counter()
                with get_client(sync_client=True) as client:
                    client.hello()
                    api = f"ephemeral {client.api_url}"
                api += f" (started in {time.perf_counter() - tic:.1f} s, before the runs)"
            print(f"Prefect API {api}; cpus {os.cpu_count()}")
            for rnd in range(args.rounds):
                for n in args.n:
                    for k, kwargs in enumerate(args.cluster_kwargs):
                        home = root / f"home-{n}-{rnd}-{k}"
                        for label in ("run", "rerun") if args.rerun else ("run",):
                            times = root / f"times-{n}-{rnd}-{k}-{label}.jsonl"
                            os.environ[LIBRARY_TIMES_ENV] = str(times)
                            seed = rnd * len(args.cluster_kwargs) + k
                            m = run_once(n, steps[n], seed, home, times, kwargs)
                            m.update(round=rnd, label=label, cluster_kwargs=kwargs)
                            measured.append(m)
                            report(m, f"round {rnd} {label} cluster_kwargs {kwargs}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\nsummary (overhead = wall - library, fraction of wall):")
    for m in measured:
        print(
            f"  n={m['n']:4d} steps={m['steps']:5d} {m['label']:5s} round {m['round']} "
            f"{m['cluster_kwargs'] or ''}: "
            f"wall {m['wall_s']:7.1f} s, library {m['library_s']:7.1f} s, overhead "
            f"{m['overhead_s']:6.1f} s ({100 * m['overhead_frac']:.2f} %)"
        )
    if args.json:
        args.json.write_text(json.dumps(measured, indent=1))


if __name__ == "__main__":
    sys.exit(main())
