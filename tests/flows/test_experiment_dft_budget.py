"""The DFT-phase wall-time budget of the stability experiment (``dft_max_minutes``)."""

from __future__ import annotations

from pathlib import Path

from pymatgen.core import Lattice, Structure

from flows.experiment import ModelRun, _add_dft_fields, _dft_rounds
from flows.store import Provenance


def _model_run(model: str, ids: list[str]) -> ModelRun:
    items = [
        (sid, Structure(Lattice.cubic(3.0 + i), ["C"], [[0, 0, 0]])) for i, sid in enumerate(ids)
    ]
    mr = ModelRun(model, "unused", items, Provenance(model=model))
    mr.hashes = {sid: f"{model}-{sid}" for sid in ids}
    mr.rows = [{"model": model, "structure_id": sid} for sid in ids]
    mr.chosen = list(ids)
    return mr


def test_spent_budget_starts_no_dft_and_rows_say_why(tmp_path: Path) -> None:
    runs = {"cdvae": _model_run("cdvae", ["0-0", "0-1"]), "dpcdvae": _model_run("dpcdvae", ["0-3"])}
    stages: dict = {}
    timings: dict = {"cdvae": {}, "dpcdvae": {}}
    errors: dict = {}
    # a zero budget is used up before the first round: nothing may be submitted
    _dft_rounds(
        runs,
        ("chgnet+espresso", {}),
        1,
        str(tmp_path),
        "local",
        None,
        False,
        stages,
        timings,
        errors,
        max_minutes=0.0,
    )
    assert stages == {} and errors == {}
    assert "dft_s" not in timings["cdvae"]
    assert set(runs["cdvae"].dft_not_started) == {"0-0", "0-1"}
    assert set(runs["dpcdvae"].dft_not_started) == {"0-3"}
    for mr in runs.values():
        _add_dft_fields(mr, "settings-hash", str(tmp_path))
        for row in mr.rows:
            assert row["dft_selected"] is True
            assert row["dft_status"] == "not_started"
            assert "budget of 0 min" in row["dft_error"]


def test_rows_without_budget_stop_are_not_relaxed(tmp_path: Path) -> None:
    mr = _model_run("cdvae", ["0-0"])
    _add_dft_fields(mr, "settings-hash", str(tmp_path))
    assert mr.rows[0]["dft_status"] == "not_relaxed"
