"""CPU time of a training from its run files (benchmarks/zoo_card.py) and in words."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from analysis.training_budget import cpu_hours_text

GNU_TIME = "\tUser time (seconds): {u}\n\tSystem time (seconds): {s}\n\tExit status: 0\n"


def _run(tmp_path: Path, driver: str, times: list[tuple[float, float]]) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    run.joinpath("driver.log").write_text(driver)
    run.joinpath("time.log").write_text("".join(GNU_TIME.format(u=u, s=s) for u, s in times))
    return run


RECORDS = [{"epoch": e, "seconds": 600.0} for e in (1, 2, 3)]  # 30 min of epochs


def test_complete_segments_give_exact_wall_and_cpu(tmp_path: Path, zoo_card: ModuleType) -> None:
    run = _run(
        tmp_path,
        "start 2026-01-01T00:00:00Z resume=none\nend 2026-01-01T00:20:00Z rc=0\n"
        "start 2026-01-01T01:00:00Z resume=x\nend 2026-01-01T01:13:00Z rc=0\n",
        [(900.0, 30.0), (570.0, 0.0)],
    )
    times = zoo_card._times(run, RECORDS)
    assert times["wall_minutes"] == 33.0 and times["segments"] == 2
    assert times["cpu_minutes"] == 25.0 and "cpu_minutes_recorded" not in times
    assert cpu_hours_text(times) == "0.4 CPU h"


def test_a_segment_stopped_without_stamps_gives_bounds(
    tmp_path: Path, zoo_card: ModuleType
) -> None:
    """A segment killed with its GNU time wrapper leaves no end stamp and no time record:
    the wall time falls back to the epochs' times and the CPU time becomes a range."""
    run = _run(
        tmp_path,
        "start 2026-01-01T00:00:00Z resume=none\n"
        "start 2026-01-01T01:00:00Z resume=x\nend 2026-01-01T01:13:00Z rc=0\n",
        [(570.0, 30.0)],
    )
    times = zoo_card._times(run, RECORDS)
    assert times["wall_minutes"] == 30.0 and "1 of 2 segments" in times["wall_source"]
    assert times["cpu_minutes"] is None and times["cpu_minutes_recorded"] == 10.0
    assert "GNU time recorded 1 of 2 segments" in times["cpu_note"]
    assert cpu_hours_text(times) == "0.2-0.5 CPU h"


@pytest.mark.parametrize(
    ("training", "text"),
    [
        ({"cpu_minutes": 75.9}, "1.3 CPU h"),
        (
            {"cpu_minutes": None, "cpu_minutes_recorded": 59.2, "epoch_minutes": 116.3},
            "1.0-1.9 CPU h",
        ),
        ({"cpu_minutes": None, "cpu_minutes_recorded": 59.2}, "≥ 1.0 CPU h"),
        ({}, None),
    ],
)
def test_cpu_hours_text(training: dict, text: str | None) -> None:
    assert cpu_hours_text(training) == text


def test_shipped_cards_state_their_cpu_time() -> None:
    """Every shipped card gives its CPU time, exact or as a range, never nothing."""
    registry = Path(__file__).resolve().parents[2] / "generators" / "zoo" / "registry.json"
    for card in json.loads(registry.read_text())["models"]:
        assert cpu_hours_text(card["training"]) is not None, card["name"]
