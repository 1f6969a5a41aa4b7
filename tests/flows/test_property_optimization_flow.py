"""The ``optimize-property`` flow end to end on a one-epoch CDVAE or DP-CDVAE with a property
head."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
