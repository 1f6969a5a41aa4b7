"""The DFT-phase wall-time budget of the stability experiment (``dft_max_minutes``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from flows.experiment import ModelRun, add_dft_fields, dft_queue
from flows.hashing import structure_hash
from flows.store import Provenance, ResultStore
from flows.tasks import describe_relaxer


@pytest.fixture(autouse=True)
def _no_flow_run_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """These calls run outside a flow run; the queue logs to a plain logger."""
    import flows.relax_stage

    monkeypatch.setattr(flows.relax_stage, "get_run_logger", lambda: logging.getLogger("test"))


def _model_run(model: str, ids: list[str]) -> ModelRun:
    size = 0.01 * len(model)  # every model's cells differ from the others'
    items = [
        (sid, Structure(Lattice.cubic(3.0 + i + size), ["C"], [[0, 0, 0]]))
        for i, sid in enumerate(ids)
    ]
    mr = ModelRun(model, "unused", items, Provenance(model=model))
    mr.hashes = {sid: structure_hash(s) for sid, s in items}
    mr.rows = [{"model": model, "structure_id": sid} for sid in ids]
    mr.chosen = list(ids)
    return mr


def _queue(
    runs: dict[str, ModelRun],
    home: Path,
    stages: dict,
    timings: dict,
    errors: dict,
    workers: int = 1,
    max_minutes: float | None = None,
) -> None:
    """The experiment's DFT phase with pw.x's two-stage relaxer on a local cluster."""
    dft_queue(
        runs,
        ("chgnet+espresso", {}),
        workers,
        str(home),
        "local",
        None,
        False,
        stages,
        timings,
        errors,
        max_minutes=max_minutes,
    )


def test_spent_budget_starts_no_dft_and_rows_say_why(tmp_path: Path) -> None:
    runs = {"cdvae": _model_run("cdvae", ["0-0", "0-1"]), "dpcdvae": _model_run("dpcdvae", ["0-3"])}
    stages: dict = {}
    timings: dict = {"cdvae": {}, "dpcdvae": {}}
    errors: dict = {}
    # a zero budget is used up before the first relaxation: nothing may be submitted
    _queue(runs, tmp_path, stages, timings, errors, max_minutes=0.0)
    assert errors == {}
    assert {k: v["n_submitted"] for k, v in stages.items()} == {
        "cdvae:chgnet+espresso": 0,
        "dpcdvae:chgnet+espresso": 0,
    }
    assert "dft_s" not in timings["cdvae"]
    assert set(runs["cdvae"].dft_not_started) == {"0-0", "0-1"}
    assert set(runs["dpcdvae"].dft_not_started) == {"0-3"}
    for mr in runs.values():
        add_dft_fields(mr, "settings-hash", str(tmp_path))
        for row in mr.rows:
            assert row["dft_selected"] is True
            assert row["dft_status"] == "not_started"
            assert "budget of 0 min" in row["dft_error"]


def test_rows_without_budget_stop_are_not_relaxed(tmp_path: Path) -> None:
    mr = _model_run("cdvae", ["0-0"])
    add_dft_fields(mr, "settings-hash", str(tmp_path))
    assert mr.rows[0]["dft_status"] == "not_relaxed"


def test_stored_result_is_reported_not_listed_as_not_started(tmp_path: Path) -> None:
    mr = _model_run("cdvae", ["0-0", "0-1"])
    settings_hash = describe_relaxer("chgnet+espresso", {})["settings_hash"]
    generated = mr.structures["0-0"]
    relaxed = generated.copy()
    relaxed.scale_lattice(generated.volume * 0.9)
    doc = {
        "structure_id": "0-0",
        "settings_hash": settings_hash,
        "status": "ok",
        "initial_energy_per_atom_eV": -9.0,
        "final_energy_per_atom_eV": -9.5,
        "final_structure": relaxed.as_dict(),
    }
    with ResultStore(home=str(tmp_path)) as store:
        store.put_relaxations([(mr.hashes["0-0"], doc)], Provenance(model="cdvae"))
    # a rerun whose budget is spent: the stored structure is not among those "not started"
    _queue({"cdvae": mr}, tmp_path, {}, {"cdvae": {}}, {}, max_minutes=0.0)
    assert set(mr.dft_not_started) == {"0-1"}
    add_dft_fields(mr, settings_hash, str(tmp_path))
    done, waiting = mr.rows
    assert done["dft_status"] == "ok"
    assert abs(done["dft_delta_e_mev_per_atom"] - 500.0) < 1e-6
    assert waiting["dft_status"] == "not_started"
    assert set(mr.dft_not_started) == {"0-1"}  # the summary lists only what has no result


def test_the_floor_gets_dft_with_the_models_settings_hash(tmp_path: Path) -> None:
    """The model and the test split read their DFT results under one settings hash."""
    runs = {"cdvae": _model_run("cdvae", ["0-0"]), "test split": _model_run("test split", ["t"])}
    docs = []
    for model, mr in runs.items():
        [(sid, generated)] = mr.items
        relaxed = generated.copy()
        relaxed.scale_lattice(generated.volume * 0.95)
        docs.append(
            (
                mr.hashes[sid],
                {
                    "structure_id": sid,
                    "settings_hash": "dft-hash",
                    "status": "ok",
                    "initial_energy_per_atom_eV": -9.0,
                    "final_energy_per_atom_eV": -9.1 if model == "cdvae" else -9.01,
                    "final_structure": relaxed.as_dict(),
                },
            )
        )
    with ResultStore(home=str(tmp_path)) as store:
        store.put_relaxations(docs, Provenance(model="mixed"))
    for mr in runs.values():
        add_dft_fields(mr, "dft-hash", str(tmp_path), "direct")
    [model_row], [floor_row] = runs["cdvae"].rows, runs["test split"].rows
    assert model_row["dft_settings_hash"] == floor_row["dft_settings_hash"] == "dft-hash"
    assert model_row["dft_path"] == floor_row["dft_path"] == "direct"
    assert abs(model_row["dft_delta_e_mev_per_atom"] - 100.0) < 1e-6
    assert abs(floor_row["dft_delta_e_mev_per_atom"] - 10.0) < 1e-6
    other = _model_run("test split", ["t"])
    add_dft_fields(other, "another-hash", str(tmp_path))  # another protocol: nothing found
    assert other.rows[0]["dft_status"] == "not_relaxed"


def test_without_budget_a_finished_phase_lists_nothing_as_not_started(tmp_path: Path) -> None:
    """No ``max_minutes`` (the default): the phase ends without a budget message."""
    mr = _model_run("cdvae", ["0-0"])
    settings_hash = describe_relaxer("chgnet+espresso", {})["settings_hash"]
    doc = {"structure_id": "0-0", "settings_hash": settings_hash, "status": "ok"}
    with ResultStore(home=str(tmp_path)) as store:
        store.put_relaxations([(mr.hashes["0-0"], doc)], Provenance(model="cdvae"))
    stages: dict = {}
    _queue({"cdvae": mr}, tmp_path, stages, {"cdvae": {}}, {}, workers=2)
    assert mr.dft_not_started == {}
    assert stages["cdvae:chgnet+espresso"]["n_skipped"] == 1
