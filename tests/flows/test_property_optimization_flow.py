"""The ``optimize-property`` flow end to end on a one-epoch CDVAE or DP-CDVAE with a property
head."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from prefect.testing.utilities import prefect_test_harness
from pymatgen.core import Structure

from .conftest import TINY_CHGNET


@pytest.fixture(scope="module")
def harness() -> None:
    with prefect_test_harness(server_startup_timeout=900):
        yield


@pytest.fixture(scope="module")
def tiny_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path
) -> Callable[[str], Path]:
    """A cpu-small model (``cdvae`` or ``dpcdvae``) with a heat_ref head, one epoch on six
    perov_5 val crystals; fitted once per model and module."""
    from generators.configs import load_config
    from generators.data import load_split
    from generators.property_optimization import records_to_property_data
    from generators.registry import build_model
    from generators.trainer import fit

    records = load_split("perov_5", "val", data_dir=data_dir, limit=6, progress=False).records
    data, _ = records_to_property_data(records, "heat_ref")
    fitted: dict[str, Path] = {}

    def checkpoint(model_name: str) -> Path:
        if model_name not in fitted:
            config = load_config(
                model_name,
                "cpu-small",
                "perov_5",
                {"model": {"progress": False, "predict_property": True, "property": "heat_ref"}},
            )
            config["train"].update(batch_size=6, max_epochs=1, checkpoint_every=1, max_minutes=None)
            torch.manual_seed(0)
            model = build_model(model_name, config["model"])
            out = tmp_path_factory.mktemp(f"tiny-{model_name}")
            result = fit(model, config, data, [], out, dataset="perov_5", progress=False)
            fitted[model_name] = Path(result.last_checkpoint)
        return fitted[model_name]

    return checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_checkpoints: Callable[[str], Path]) -> Path:
    """The tiny CDVAE of :func:`tiny_checkpoints`."""
    return tiny_checkpoints("cdvae")


@pytest.fixture(scope="module")
def tiny_predictor(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The independent predictor fitted on 40 perov_5 val crystals (never the test split)."""
    from analysis.property_predictor import fit_predictor
    from generators.data import load_split

    records = load_split("perov_5", "val", data_dir=data_dir, limit=40, progress=False).records
    predictor = fit_predictor(
        [r.structure for r in records],
        [r.properties["heat_ref"] for r in records],
        "heat_ref",
        trained_on="perov_5/val[:40]",
    )
    return predictor.save(tmp_path_factory.mktemp("predictor") / "heat_ref.pkl")


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["cdvae", "dpcdvae"])
def test_optimize_property_flow_stores_success_rates(
    model_name: str,
    harness: None,
    tiny_checkpoints: Callable[[str], Path],
    tiny_predictor: Path,
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decode → validity → CHGNet → score: the stored rows give back the stored SR values, the
    decoded scores are the predictor's on the stored samples, every relaxed score has a stored
    relaxation."""
    from analysis.property_predictor import load_predictor
    from flows.property_optimization import optimize_property_flow
    from flows.store import ResultStore

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    # SR5 can never pass, SR10 and SR15 pass for any start with a scored crystal
    thresholds = [-1e9, 1e9, 1e9]
    out = optimize_property_flow(
        checkpoint=str(tiny_checkpoints(model_name)),
        dataset="perov_5",
        split="test",
        n=4,
        steps=4,
        lr=0.05,
        saves=2,
        chain_steps=50,
        percentiles=thresholds,
        predictor=str(tiny_predictor),
        relaxer_settings={**TINY_CHGNET, "max_steps": 10},
        cluster_kwargs={"processes": False},
        home=str(tmp_path),
    )
    assert out["thresholds"] == thresholds and out["settings"]["n"] == 4
    with ResultStore(home=str(tmp_path)) as store:
        [doc] = store.query("property_optimization", load_blobs=True)
        samples = {d["sample_id"]: d for d in store.query("sample")}
        n_relaxations = store.count("relaxation")
    rows = doc["rows"]
    assert doc["doc_id"] == out["doc_id"]
    assert len(rows) == 4 * 2 and {r["step"] for r in rows} == {0, 3}
    assert set(samples) == {r["id"] for r in rows}
    valid = [r for r in rows if r["valid"]]
    assert valid, "no decoded crystal passed validity: the relaxation stage was not exercised"
    assert n_relaxations == len({r["structure_hash"] for r in valid})

    predictor = load_predictor(tiny_predictor)
    structures = [Structure.from_dict(samples[r["id"]]["structure"]) for r in valid]
    assert [r["decoded_score"] for r in valid] == pytest.approx(predictor(structures))
    assert all(
        r["decoded_score"] is None or np.isnan(r["decoded_score"]) for r in rows if not r["valid"]
    )

    for label in ("decoded", "relaxed"):
        key = f"{label}_score"
        scored_starts = {r["start"] for r in rows if r[key] is not None and np.isfinite(r[key])}
        by_hand = len(scored_starts) / 4
        assert doc[label]["SR5"] == out[label]["SR5"] == 0.0
        assert doc[label]["SR10"] == doc[label]["SR15"] == pytest.approx(by_hand)
        assert doc[label]["n_scored"] == sum(
            1 for r in rows if r[key] is not None and np.isfinite(r[key])
        )
    assert doc["provenance"]["model"] == model_name
    assert doc["predictor"]["trained_on"] == "perov_5/val[:40]"


def _stub_all_but_the_relaxer_settings(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace decoding, the predictor, scoring and the relaxation stage of the flow by stubs
    (one valid decoded diamond); return the list that records each relaxation stage's
    ``(relaxer, settings)``. Protocol resolution and the relaxer's settings are the real ones."""
    import flows.property_optimization as po
    from flows.relax_stage import StageSummary
    from flows.tasks import describe_relaxer
    from relax.prototypes import diamond

    calls: list[Any] = []
    crystal = diamond().as_dict()

    def decode(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(("decode", None))
        return {
            "property": "heat_ref",
            "steps": [0],
            "start_ids": ["s0"],
            "structures": [[crystal]],
            "model": "cdvae",
            "checkpoint_sha256": "0" * 64,
            "head": [[0.0]],
            "start_structures": [crystal],
            "start_values": [0.0],
            "wall_s": 0.0,
            "cpu_s": 0.0,
        }

    def relax_stage(items: Any, relaxer: str, settings: dict[str, Any], *a: Any, **k: Any) -> Any:
        calls.append((relaxer, settings))
        info = describe_relaxer(relaxer, settings)
        return StageSummary(relaxer, info["settings_hash"], info["settings"], n_input=len(items))

    predictor = SimpleNamespace(
        predict=lambda structures: np.zeros(len(structures)),
        trained_on="stub",
        n_train=0,
        metrics={},
    )
    monkeypatch.setattr(po, "optimize_decode_task", decode)
    monkeypatch.setattr(po, "predictor_task", lambda *a, **k: "stub.pkl")
    monkeypatch.setattr(po, "score_task", lambda path, structures, label: [0.0] * len(structures))
    monkeypatch.setattr(po, "run_relax_stage", relax_stage)
    monkeypatch.setattr("analysis.property_predictor.load_predictor", lambda path: predictor)
    return calls


def test_optimize_property_relaxes_under_the_dataset_protocol(
    harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """carbon_24's relaxations run at 10 GPa with D3(BJ) (the settings hash of a CHGNet relaxer
    given the carbon_24 protocol), perov_5's at 0 GPa; the ``protocol`` parameter overrides one
    field and keeps the others; a misspelt field is refused before anything is decoded."""
    from flows.property_optimization import optimize_property_flow
    from flows.tasks import describe_relaxer

    monkeypatch.setenv("DFTLOOP_CONVERGED_DIR", str(tmp_path / "no-user-results"))
    calls = _stub_all_but_the_relaxer_settings(monkeypatch)
    common = dict(checkpoint="stub", percentiles=[0.0, 1.0, 2.0], relaxer_settings=TINY_CHGNET)

    def relaxed_under(**kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        calls.clear()
        out = optimize_property_flow(home=str(tmp_path / "home"), **{**common, **kwargs})
        [decoded, (relaxer, settings)] = calls
        assert decoded == ("decode", None)  # decoded once, then relaxed once
        return out, describe_relaxer(relaxer, settings)["settings"]["protocol"]

    carbon, protocol = relaxed_under(dataset="carbon_24")
    assert protocol["pressure_gpa"] == 10.0 and protocol["dispersion"] == "d3bj"
    assert protocol["fmax"] == TINY_CHGNET["fmax"]  # the relaxer's own keyword wins
    assert carbon["protocol"] == "carbon_24"
    expected = describe_relaxer("chgnet", {**TINY_CHGNET, "protocol": "carbon_24"})
    assert carbon["relax_stage"]["settings_hash"] == expected["settings_hash"]

    perov, protocol = relaxed_under(dataset="perov_5")
    assert protocol["pressure_gpa"] == 0.0 and protocol["dispersion"] == "none"
    assert perov["relax_stage"]["settings_hash"] != expected["settings_hash"]

    override, protocol = relaxed_under(dataset="carbon_24", protocol={"pressure_gpa": 0})
    assert protocol["pressure_gpa"] == 0.0 and protocol["dispersion"] == "d3bj"
    assert override["protocol"] == {"pressure_gpa": 0, "dataset": "carbon_24"}
    # each protocol keeps its own summary record instead of overwriting the other's
    assert override["doc_id"] != carbon["doc_id"]
    # the published rates sit beside ours only where the thresholds are the paper's
    assert carbon["paper"] is None and perov["paper"] is None
    carbon_paper, _ = relaxed_under(dataset="carbon_24", percentiles="paper")
    perov_paper, _ = relaxed_under(dataset="perov_5", percentiles="paper")
    assert carbon_paper["paper"] == {"SR5": 0.0, "SR10": 0.06, "SR15": 0.06}
    assert perov_paper["paper"] == {"SR5": 0.52, "SR10": 0.65, "SR15": 0.79}
    # other thresholds, another record
    assert perov_paper["doc_id"] != perov["doc_id"]

    calls.clear()
    with pytest.raises(ValueError, match="pressure"):
        optimize_property_flow(
            dataset="carbon_24", protocol={"pressure": 3}, home=str(tmp_path / "home"), **common
        )
    assert calls == []  # refused before the optimisation


def test_predictor_may_not_train_on_the_starts(tmp_path: Path) -> None:
    from flows.property_optimization import _thresholds, predictor_task

    with pytest.raises(ValueError, match="must not be trained on the crystals it scores"):
        predictor_task.fn(None, "perov_5", "heat_ref", "test", "test", str(tmp_path), None)
    with pytest.raises(ValueError, match="three numbers"):
        _thresholds([1.0, 2.0], "perov_5", "min", "unused")
    with pytest.raises(ValueError, match="no paper percentiles for mpts_52"):
        _thresholds("paper", "mpts_52", "min", "unused")
    assert _thresholds("paper", "perov_5", "min", "unused")[0] == [0.43925, 0.61202, 0.73646]


def test_cli_optimize_scores_with_the_predictor_file(
    tiny_checkpoint: Path, tiny_predictor: Path, tmp_path: Path, data_dir: Path
) -> None:
    """``dftloop optimize --predictor FILE.pkl``: each start's best is the predictor's minimum
    over its valid decoded crystals; a predictor of another property is refused."""
    import json

    from typer.testing import CliRunner

    from analysis.property_predictor import load_predictor
    from flows.cli import app

    summary_path = tmp_path / "opt.json"
    args = ["optimize", "--checkpoint", str(tiny_checkpoint), "--split", "test", "--n", "3"]
    args += ["--steps", "3", "--saves", "2", "--chain-steps", "50", "--data-dir", str(data_dir)]
    run = CliRunner().invoke(
        app, [*args, "--predictor", str(tiny_predictor), "--out", str(summary_path)]
    )
    assert run.exit_code == 0, run.output
    summary = json.loads(summary_path.read_text())
    assert summary["independent_predictor"] and summary["starts"] == 3
    thresholds = [0.43925, 0.61202, 0.73646]
    best = np.array([np.inf if b is None else b for b in summary["best"]])
    for key, threshold in zip(("SR5", "SR10", "SR15"), thresholds, strict=True):
        assert summary[key] == pytest.approx(np.mean(best <= threshold))

    other = load_predictor(tiny_predictor)
    other.property_name = "dir_gap"
    wrong = other.save(tmp_path / "gap.pkl")
    bad = CliRunner().invoke(app, [*args, "--predictor", str(wrong)])
    assert bad.exit_code == 1 and "predicts dir_gap, not heat_ref" in bad.output


def test_cli_optimize_a_registered_model_writes_under_dftloop_home(
    tiny_checkpoint: Path, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--checkpoint <registered name>``: the model is found through the registry and the
    summary goes to ``$DFTLOOP_HOME/optimize/<name>/optimization.json``, not to the working
    directory (the parent of a name that is no file); a checkpoint file keeps it beside the
    file."""
    import json

    from typer.testing import CliRunner

    from flows.cli import app
    from flows.commands.optimize import default_summary_path
    from generators.data.cache import file_sha256

    name = "cdvae-perov5-heat-tiny"
    card = {
        "name": name,
        "model": "cdvae",
        "dataset": "perov_5",
        "task": "generate",
        "sha256": file_sha256(tiny_checkpoint),
        "size_bytes": tiny_checkpoint.stat().st_size,
        "file": str(tiny_checkpoint),
    }
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"models": [card]}))
    monkeypatch.setenv("DFTLOOP_MODEL_REGISTRY", str(registry))
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("DFTLOOP_HOME", str(home))
    monkeypatch.chdir(cwd)
    args = ["optimize", "--checkpoint", name, "--predictor", "self", "--n", "2", "--steps", "2"]
    args += ["--chain-steps", "50", "--data-dir", str(data_dir)]
    refused = CliRunner().invoke(app, [*args, "--saves", "1"])
    assert refused.exit_code == 1 and "saves >= 2" in refused.output, refused.output
    run = CliRunner().invoke(app, [*args, "--saves", "2"])
    assert run.exit_code == 0, run.output
    summary = json.loads((home / "optimize" / name / "optimization.json").read_text())
    assert summary["checkpoint"] == name and summary["starts"] == 2
    assert list(cwd.iterdir()) == []
    assert default_summary_path(str(tiny_checkpoint)) == tiny_checkpoint.parent / (
        "optimization.json"
    )


def test_relax_selection_by_hand() -> None:
    from flows.property_optimization import relax_selection

    nan = float("nan")
    # 3 snapshots x 2 starts, row-major: start 0 scores 0.5, nan, 0.1; start 1 scores 2, 1, 3
    scores = [0.5, 2.0, nan, 1.0, 0.1, 3.0]
    assert relax_selection(scores, (3, 2), "min", None) == [0, 1, 3, 4, 5]
    assert relax_selection(scores, (3, 2), "min", 1) == [3, 4]  # 0.1 (start 0), 1.0 (start 1)
    assert relax_selection(scores, (3, 2), "max", 1) == [0, 5]  # 0.5, 3.0
    assert relax_selection(scores, (3, 2), "min", 2) == [0, 1, 3, 4]
    with pytest.raises(ValueError, match="relax_per_start must be >= 1"):
        relax_selection(scores, (3, 2), "min", 0)
