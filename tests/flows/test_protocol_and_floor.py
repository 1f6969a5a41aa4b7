"""The dataset's relaxation protocol reaches generate-and-relax's relaxers; the dataset floor.

``generate-and-relax`` takes the protocol from the dataset (carbon_24: 10 GPa, DFT-D3(BJ), the
converged k-spacing and cutoffs) unless the ``protocol`` parameter overrides a field; the main
job's floor is the same mechanism as the experiment's (:mod:`flows.floor`) with the CSP targets
passed in.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from .conftest import TINY_CHGNET


def _converged(dataset: str) -> dict[str, Any]:
    """The converged values shipped for a dataset, read from the file itself."""
    root = Path(__file__).resolve().parents[2]
    return json.loads((root / "relax" / "converged" / f"{dataset}.json").read_text())["converged"]


def test_stage_settings_fill_in_the_dataset_protocol_and_keep_overrides() -> None:
    from flows.protocol_settings import stage_settings

    ff, dft = stage_settings("carbon_24", None, {"fmax": 0.1}, None)
    assert ff == {"fmax": 0.1, "protocol": "carbon_24"} and dft == {"protocol": "carbon_24"}
    [ff] = stage_settings("carbon_24", {"pressure_gpa": 0}, None)
    assert ff == {"protocol": {"pressure_gpa": 0, "dataset": "carbon_24"}}
    [own] = stage_settings("carbon_24", None, {"protocol": "perov_5"})
    assert own == {"protocol": "perov_5"}  # a stage's own protocol wins
    with pytest.raises(ValueError, match="pressure"):
        stage_settings("carbon_24", {"pressure": 3}, None)  # a misspelt field never runs


def _record_stages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Replace both relaxation stages of generate-and-relax by a recorder (no relaxation)."""
    import flows.pipeline as pipeline
    from flows.relax_stage import StageSummary
    from flows.tasks import describe_relaxer

    calls: list[tuple[str, dict[str, Any]]] = []

    def record(items: Any, relaxer: str, settings: dict[str, Any], *args: Any, **kw: Any) -> Any:
        calls.append((relaxer, settings))
        info = describe_relaxer(relaxer, settings)
        return StageSummary(relaxer, info["settings_hash"], info["settings"], n_input=len(items))

    monkeypatch.setattr(pipeline, "relax_samples", record)
    monkeypatch.setattr(pipeline, "run_relax_stage", record)
    return calls


def test_generate_and_relax_takes_the_protocol_from_the_dataset(
    harness: None, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """carbon_24: CHGNet and pw.x get 10 GPa and D3(BJ), pw.x the converged k-spacing and
    cutoffs; perov_5 gets 0 GPa and another settings hash; the parameter overrides a field."""
    from flows.pipeline import generate_and_relax
    from flows.tasks import describe_relaxer

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    monkeypatch.setenv("DFTLOOP_CONVERGED_DIR", str(tmp_path / "no-user-results"))
    calls = _record_stages(monkeypatch)
    common = dict(model="dataset", n=2, relaxer_settings=TINY_CHGNET, dft="espresso")
    out = generate_and_relax(dataset="carbon_24", home=str(tmp_path / "c"), **common)
    (ff_name, ff), (dft_name, dft) = calls
    assert (ff_name, dft_name) == ("chgnet", "espresso")
    ff_protocol = describe_relaxer(ff_name, ff)["settings"]["protocol"]
    dft_protocol = describe_relaxer(dft_name, dft)["settings"]["protocol"]
    for protocol in (ff_protocol, dft_protocol):
        assert protocol["pressure_gpa"] == 10.0 and protocol["dispersion"] == "d3bj"
    assert ff_protocol["fmax"] == TINY_CHGNET["fmax"]  # the stage's own keyword wins
    converged = _converged("carbon_24")
    assert dft_protocol["kspacing"] == converged["kspacing"] == 0.2
    assert (dft_protocol["ecutwfc"], dft_protocol["ecutrho"]) == (45.0, 360.0)
    carbon_hash = out["stages"][0]["settings_hash"]
    assert (
        carbon_hash
        == describe_relaxer("chgnet", {**TINY_CHGNET, "protocol": "carbon_24"})["settings_hash"]
    )

    calls.clear()
    perov = generate_and_relax(dataset="perov_5", home=str(tmp_path / "p"), **common)
    assert describe_relaxer(*calls[0])["settings"]["protocol"]["pressure_gpa"] == 0.0
    assert describe_relaxer(*calls[1])["settings"]["protocol"]["dispersion"] == "none"
    assert perov["stages"][0]["settings_hash"] != carbon_hash
    assert perov["stages"][1]["settings_hash"] != out["stages"][1]["settings_hash"]

    calls.clear()
    generate_and_relax(
        dataset="carbon_24",
        home=str(tmp_path / "c"),
        protocol={"pressure_gpa": 0, "kspacing": 0.5},
        **common,
    )
    dft_protocol = describe_relaxer(*calls[1])["settings"]["protocol"]
    assert dft_protocol["pressure_gpa"] == 0.0 and dft_protocol["kspacing"] == 0.5
    assert dft_protocol["dispersion"] == "d3bj"  # the fields not overridden stay the dataset's


def test_floor_structures_first_random_and_ids(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.floor import floor_structures
    from generators.data import load_split

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    ids = [r.material_id for r in load_split("perov_5", "test", progress=False).records]
    first = floor_structures("perov_5", 3, selection="first")
    assert [sid for sid, _ in first] == [f"test:{mid}" for mid in ids[:3]]
    drawn = [sid for sid, _ in floor_structures("perov_5", 5, seed=1)]
    assert drawn == [sid for sid, _ in floor_structures("perov_5", 5, seed=1)]  # seeded
    assert len(set(drawn)) == 5 and drawn != [f"test:{mid}" for mid in ids[:5]]
    picked = floor_structures("perov_5", 0, ids=[ids[7], ids[2]])
    assert [sid for sid, _ in picked] == [f"test:{ids[7]}", f"test:{ids[2]}"]
    with pytest.raises(ValueError, match="no structure not-an-id"):
        floor_structures("perov_5", 1, ids=["not-an-id"])


def test_main_job_floor_is_the_targets_through_the_models_relaxer(
    harness: None, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The main job's dataset row: the CSP targets' true structures, real CHGNet, the models'
    settings hash and columns, metrics recomputed from the rows."""
    from analysis.stability_rows import structure_row
    from flows.floor import dataset_floor
    from flows.main_job import floor_table
    from flows.tasks import describe_relaxer
    from generators.data import load_split

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    records = load_split("perov_5", "test", progress=False).records
    targets = [records[4].material_id, records[1].material_id]
    floor = dataset_floor(
        "perov_5", "test", 2, "chgnet", TINY_CHGNET, home=str(tmp_path), ids=targets
    )
    models_hash = describe_relaxer("chgnet", {**TINY_CHGNET, "protocol": "perov_5"})
    assert floor["settings_hash"] == models_hash["settings_hash"]
    rows = floor["rows"]
    assert [r["structure_id"] for r in rows] == [f"test:{t}" for t in targets]
    assert {r["settings_hash"] for r in rows} == {floor["settings_hash"]}
    assert all(r["model"] == "test split" and r["structure_hash"] for r in rows)
    model_columns = set(structure_row("x", records[0].structure, None, model="m"))
    assert model_columns - {"_structure"} <= set(rows[0])  # the models' columns
    deltas = [r["delta_e_mev_per_atom"] for r in rows]
    assert all(d is not None for d in deltas) and floor["n_relaxed"] == 2
    metrics = {m["name"]: m for m in floor["metrics"]}
    mean = metrics["mean_delta_e_mev_per_atom"]
    assert mean["value"] == pytest.approx(statistics.fmean(deltas))
    assert mean["counts"]["n_compared"] == 2
    line = floor_table("diffcsp", [], floor)[-1]
    assert line.split()[3:5] == ["2", f"{statistics.fmean(deltas):.3f}"]
