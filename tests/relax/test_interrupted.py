"""A DFT code stopped from outside (a machine shutdown, a batch system) is not a failed result.

A stand-in pw.x that stops itself with a signal or exits with an error; no real pw.x needed.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from flows.hashing import structure_hash
from flows.store import Provenance, ResultStore
from relax import get_relaxer
from relax.espresso_profile import crashed, stopped_from_outside
from relax.prototypes import diamond


def stand_in_pw(tmp_path: Path, body: str) -> str:
    script = tmp_path / "pw.x"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    ("code", "stopped"),
    [
        (-signal.SIGTERM, True),  # subprocess: killed by SIGTERM
        (-signal.SIGINT, True),
        (128 + signal.SIGTERM, True),  # mpirun / a shell: 143
        (-signal.SIGKILL, False),  # the OOM killer: the calculation itself failed
        (-signal.SIGSEGV, False),
        (1, False),
        (137, False),  # 128 + SIGKILL
    ],
)
def test_stop_signals_are_told_from_crashes(code: int, stopped: bool) -> None:
    assert stopped_from_outside(code) is stopped


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("kill -TERM $$", "interrupted", "stopped from outside"),
        ("exit 3", "failed", "exited with status 3"),
    ],
)
def test_stopped_pw_is_interrupted_and_a_rerun_relaxes_it_again(
    tmp_path: Path, pseudo_dir: Path, body: str, status: str, message: str
) -> None:
    pw = stand_in_pw(tmp_path, body)
    relaxer = get_relaxer(
        "espresso", pw_command=pw, pseudo_dir=pseudo_dir, scratch_dir=tmp_path / "scratch"
    )
    (result,) = relaxer.relax([("d", diamond())])
    assert result.status == status
    assert message in result.error
    # stored like any result, but only a real failure counts as finished
    doc = {**result.model_dump(), "structure_id": "d"}
    with ResultStore(home=str(tmp_path / "home")) as store:
        store.put_relaxations([(structure_hash(diamond()), doc)], Provenance(model="m"))
        pending = store.pending_relaxations([("d", diamond())], result.settings_hash)
    assert [sid for sid, _ in pending] == (["d"] if status == "interrupted" else [])


def test_two_stage_result_is_interrupted_when_the_single_point_was_stopped(
    tmp_path: Path, pseudo_dir: Path
) -> None:
    """The DFT single point of the input runs first: stopped there, the whole result is
    interrupted (an "ok" result without its initial energy would be a silent loss), even when
    the relaxation after it ends otherwise (here: pw.x fails on its second call)."""
    flag = tmp_path / "called-once"
    pw = stand_in_pw(tmp_path, f"[ -e {flag} ] && exit 3\ntouch {flag}\nkill -TERM $$")
    relaxer = get_relaxer(
        "chgnet+espresso",
        chgnet={"max_steps": 2},
        espresso={"pw_command": pw, "pseudo_dir": pseudo_dir, "scratch_dir": tmp_path / "s"},
    )
    (result,) = relaxer.relax([("d", diamond())])
    assert result.status == "interrupted"
    assert "stopped from outside" in result.error


@pytest.mark.parametrize(
    ("code", "crash"),
    [
        (-signal.SIGSEGV, True),  # subprocess: a segmentation fault
        (128 + signal.SIGBUS, True),  # mpirun / a shell: 135
        (-signal.SIGTERM, False),  # stopped from outside, not a crash
        (-signal.SIGKILL, False),  # the OOM killer
        (3, False),
    ],
)
def test_crashes_are_told_from_other_exits(code: int, crash: bool) -> None:
    assert crashed(code) is crash


def test_a_crashed_pw_runs_once_more_with_the_same_input(tmp_path: Path, pseudo_dir: Path) -> None:
    """The stand-in crashes with SIGSEGV on its first call and then runs the real pw.x."""
    flag = tmp_path / "crashed-once"
    pw = stand_in_pw(
        tmp_path, f'[ -e {flag} ] || {{ touch {flag}; kill -SEGV $$; }}\nexec pw.x "$@"'
    )
    options = {"pseudo_dir": pseudo_dir, "kspacing": 0.5, "scratch_dir": tmp_path / "s"}
    (result,) = get_relaxer("espresso", pw_command=pw, keep_scratch=True, **options).single_point(
        [("d", diamond())]
    )
    assert result.status == "ok", result.error
    [attempt] = result.extra["attempts"]
    assert "exited with status -11" in attempt["crash"] and attempt["outcome"] == "ok"
    scratch = Path(result.extra["scratch_dir"])
    assert (scratch / "attempt-1" / "espresso.pwi").read_text() == (
        scratch / "attempt-1-rerun" / "espresso.pwi"
    ).read_text()
    # the same energy as a run that never crashed
    (plain,) = get_relaxer("espresso", **options).single_point([("d", diamond())])
    assert result.final_energy_eV == pytest.approx(plain.final_energy_eV, abs=1e-8)


def test_a_second_crash_is_a_failure(tmp_path: Path, pseudo_dir: Path) -> None:
    pw = stand_in_pw(tmp_path, "kill -SEGV $$")
    relaxer = get_relaxer(
        "espresso", pw_command=pw, pseudo_dir=pseudo_dir, scratch_dir=tmp_path / "scratch"
    )
    (result,) = relaxer.single_point([("d", diamond())])
    assert result.status == "failed"
    assert "exited with status -11" in result.error
    [attempt] = result.extra["attempts"]
    assert "exited with status -11" in attempt["crash"]
