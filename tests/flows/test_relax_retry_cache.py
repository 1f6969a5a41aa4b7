"""--retry-failed bypasses Prefect's task cache: a cached failed chunk is not replayed."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pymatgen.core import Lattice, Structure

from flows import relax_stage
from flows.hashing import structure_hash
from flows.store import Provenance, ResultStore
from flows.tasks import describe_relaxer

from .conftest import TINY_CHGNET

DIAMOND = Structure(Lattice.cubic(3.57), ["C", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])


class _Future:
    def __init__(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        self.items = items

    def result(self) -> list[dict[str, Any]]:
        return [{"status": "ok", "error": None, "structure_id": sid} for sid, _ in self.items]


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retry_failed: bool) -> list[Any]:
    submitted: list[Any] = []

    class Runner:
        def submit(self, task: Any, parameters: dict[str, Any]) -> _Future:
            submitted.append(task)
            return _Future(parameters["items"])

    @contextmanager
    def runner(*_args: Any, **_kwargs: Any):  # type: ignore[no-untyped-def]
        yield Runner()

    monkeypatch.setattr(relax_stage, "build_task_runner", runner)
    monkeypatch.setattr(relax_stage, "as_completed", lambda futures: iter(futures))
    monkeypatch.setattr(relax_stage, "get_run_logger", lambda: logging.getLogger("test"))
    relax_stage.run_relax_stage(
        [("d", DIAMOND, structure_hash(DIAMOND))],
        "chgnet",
        TINY_CHGNET,
        Provenance(model="dataset"),
        home=str(tmp_path),
        retry_failed=retry_failed,
    )
    return submitted


def test_retry_failed_refreshes_the_task_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = describe_relaxer("chgnet", TINY_CHGNET)
    with ResultStore(home=str(tmp_path)) as store:
        store.put_relaxations(
            [
                (
                    structure_hash(DIAMOND),
                    {
                        "structure_id": "d",
                        "settings_hash": info["settings_hash"],
                        "status": "failed",
                        "error": "d: pw.x killed",
                    },
                )
            ],
            Provenance(model="dataset", relaxer="chgnet"),
        )
    assert _run(tmp_path, monkeypatch, retry_failed=False) == []  # failed and stored: skipped
    (task,) = _run(tmp_path, monkeypatch, retry_failed=True)
    assert task.refresh_cache is True
