"""One relaxation queue over several groups (the experiment's DFT phase): order, width, budget.

The task runner is replaced by a scripted one whose chunks finish in an order the test sets, so
the queue's decisions (what is submitted when) are checked against a hand-written schedule.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pymatgen.core import Lattice, Structure

import flows.relax_stage as stage
from flows.hashing import structure_hash
from flows.store import Provenance, ResultStore
from flows.tasks import describe_relaxer

SPEC = ("chgnet+espresso", {})


class _Future:
    def __init__(self, items: list[tuple[str, dict[str, Any]]], settings_hash: str) -> None:
        self.ids = [sid for sid, _ in items]
        self._settings_hash = settings_hash

    def result(self) -> list[dict[str, Any]]:
        return [
            {"structure_id": sid, "status": "ok", "settings_hash": self._settings_hash}
            for sid in self.ids
        ]


class _Runner:
    """Records submissions; ``finish_order`` says which running chunk finishes next."""

    def __init__(self, finish_order: list[str], clock: list[float], tick: float) -> None:
        self.submitted: list[str] = []
        self.running: list[_Future] = []
        self.max_running = 0
        self.finish_order = list(finish_order)
        self.clock, self.tick = clock, tick
        self.settings_hash = describe_relaxer(*SPEC)["settings_hash"]

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def submit(self, task: Any, parameters: dict[str, Any]) -> _Future:
        future = _Future(parameters["items"], self.settings_hash)
        self.submitted += future.ids
        self.running.append(future)
        self.max_running = max(self.max_running, len(self.running))
        return future

    def next_done(self, futures: list[_Future]) -> list[_Future]:
        wanted = self.finish_order.pop(0)
        [future] = [f for f in futures if wanted in f.ids]
        self.running.remove(future)
        self.clock[0] += self.tick
        return [future]


def _groups() -> list[stage.QueueGroup]:
    def items(prefix: str, n: int) -> list[tuple[str, Structure, str]]:
        out = []
        for i in range(n):
            s = Structure(Lattice.cubic(3.0 + 0.1 * i + (prefix == "b")), ["C"], [[0, 0, 0]])
            out.append((f"{prefix}{i}", s, structure_hash(s)))
        return out

    return [
        stage.QueueGroup("model a", items("a", 3), Provenance(model="model a")),
        stage.QueueGroup("model b", items("b", 1), Provenance(model="model b")),
    ]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch):
    clock = [0.0]

    def make(finish_order: list[str], tick: float = 10.0) -> _Runner:
        runner = _Runner(finish_order, clock, tick)
        monkeypatch.setattr(stage, "build_task_runner", lambda *a, **k: runner)
        monkeypatch.setattr(stage, "as_completed", runner.next_done)
        monkeypatch.setattr(stage, "get_run_logger", lambda: logging.getLogger("test"))
        monkeypatch.setattr(stage.time, "perf_counter", lambda: clock[0])
        return runner

    return make


def test_next_structure_starts_when_any_finishes_and_groups_take_turns(
    tmp_path: Path, scripted
) -> None:
    # a0 is slow: b0, a1 and a2 finish before it; with two in flight, a worker never waits
    runner = scripted(["b0", "a1", "a2", "a0"])
    outcome = stage.run_relax_queue(_groups(), *SPEC, home=str(tmp_path), chunk_size=1, in_flight=2)
    assert runner.submitted == ["a0", "b0", "a1", "a2"]  # turns: a, b, then a's rest
    assert runner.max_running == 2
    assert outcome.not_started == {"model a": [], "model b": []}
    assert outcome.summaries["model a"].n_stored == 3
    assert outcome.summaries["model b"].n_stored == 1
    # each result is stored with its own group's provenance
    with ResultStore(home=str(tmp_path)) as store:
        models = {d["structure_id"]: d["provenance"]["model"] for d in store.query("relaxation")}
    assert models == {"a0": "model a", "a1": "model a", "a2": "model a", "b0": "model b"}
    # seconds are submission-to-result wall times: a0 ran from t=0 to t=40, b0 0-10,
    # a1 10-20, a2 20-30
    assert outcome.seconds == {"model a": 40.0 + 10.0 + 10.0, "model b": 10.0}

    # a rerun submits nothing: everything is stored
    again = scripted([])
    rerun = stage.run_relax_queue(_groups(), *SPEC, home=str(tmp_path), chunk_size=1)
    assert again.submitted == []
    assert rerun.summaries["model a"].n_skipped == 3


def test_budget_stops_new_submissions_and_lists_them(tmp_path: Path, scripted) -> None:
    # each completion advances the clock by 10 s; budget 15 s: a0 and b0 start at t=0, a1 at
    # t=10 (after b0), nothing after t=20
    runner = scripted(["b0", "a0", "a1"])
    outcome = stage.run_relax_queue(
        _groups(), *SPEC, home=str(tmp_path), chunk_size=1, in_flight=2, max_seconds=15.0
    )
    assert runner.submitted == ["a0", "b0", "a1"]
    assert outcome.not_started == {"model a": ["a2"], "model b": []}
    assert outcome.summaries["model a"].n_submitted == 2


def test_spent_budget_builds_no_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("no task runner may be built when the budget is spent")

    monkeypatch.setattr(stage, "build_task_runner", refuse)
    monkeypatch.setattr(stage, "get_run_logger", lambda: logging.getLogger("test"))
    outcome = stage.run_relax_queue(_groups(), *SPEC, home=str(tmp_path), max_seconds=0.0)
    assert outcome.not_started == {"model a": ["a0", "a1", "a2"], "model b": ["b0"]}


def test_queue_progress_estimates_from_the_median_chunk() -> None:
    # median of 10, 20 and 90 min is 20; 4 waiting and 2 running (counted half) on 2 workers:
    # 20 * (4 + 1) / 2 = 50 min
    text = stage.queue_progress([600.0, 1200.0, 5400.0], 4, 2, 2)
    assert text == "queue: 2 running, 4 waiting, about 50 min left (median chunk 20.0 min over 3)"
    # 15 h of work on one worker is given in hours
    assert "about 15.0 h left" in stage.queue_progress([3600.0], 15, 0, 1)
    assert stage.queue_progress([], 3, 1, 2) == "queue: 1 running, 3 waiting"
    assert stage.queue_progress([60.0], 0, 0, 2) == "queue: 0 running, 0 waiting"


def test_each_stored_chunk_logs_its_time_and_what_is_left(
    tmp_path: Path, scripted, caplog: pytest.LogCaptureFixture
) -> None:
    # one worker, 10 s per chunk: after the first of four chunks three wait, 0.5 min left
    scripted(["a0", "b0", "a1", "a2"])
    with caplog.at_level(logging.INFO, logger="test"):
        stage.run_relax_queue(_groups(), *SPEC, home=str(tmp_path), chunk_size=1, in_flight=1)
    stored = [r.getMessage() for r in caplog.records if "stored" in r.getMessage()]
    assert stored[0] == (
        "chgnet+espresso (model a): stored 1/3 structures (a0, 0.2 min); queue: 0 running, "
        "3 waiting, about 0.5 min left (median chunk 0.2 min over 1)"
    )
    assert stored[-1].endswith("queue: 0 running, 0 waiting")
