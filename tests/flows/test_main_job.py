"""The main job's options (environment variables) and the run directories it trains into.

The main job itself (shipped checkpoint, sampling, CHGNet, metrics, the dataset's floor) is run
by ``bash deploy/run-main.sh``; its flow path is covered by the slow
``test_generate_and_relax_with_a_real_tiny_diffcsp``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.main_job import DEFAULTS, format_report, main_job_parameters, training_summary
from flows.pipeline import default_checkpoint_dir


def test_defaults_predict_held_out_crystals_with_the_shipped_checkpoint() -> None:
    params = main_job_parameters({})
    assert params["model"] == "diffcsp"
    assert params["checkpoint"] == "diffcsp-perov5-csp" and "train_config" not in params
    assert params["sample_split"] == "test" and params["n"] == 32
    assert params["sample_steps"] == 1000
    assert params["relaxer"] == "chgnet" and params["dft"] == "none"
    assert params["evaluate_metrics"] is True


def test_training_is_one_variable_away() -> None:
    params = main_job_parameters({"DFTLOOP_MAIN_TRAIN": "1"})
    assert params["checkpoint"] is None and params["train_config"] == "cpu-small"
    assert params["train_limit"] == 16 and params["sample_split"] == "train"
    train = params["train_overrides"]["train"]
    assert train["batch_size"] == 16 and train["max_epochs"] == int(
        DEFAULTS["DFTLOOP_MAIN_TRAIN_EPOCHS"]
    )
    held_out = main_job_parameters({"DFTLOOP_MAIN_TRAIN": "1", "DFTLOOP_MAIN_SPLIT": "test"})
    assert held_out["sample_split"] == "test"


def test_environment_overrides_and_checkpoint_skips_training(tmp_path: Path) -> None:
    env = {
        "DFTLOOP_MAIN_CHECKPOINT": "/x/best.pt",
        "DFTLOOP_MAIN_N": "4",
        "DFTLOOP_MAIN_SPLIT": "test",
        "DFTLOOP_MAIN_FMAX": "0.1",
        "DFTLOOP_HOME": str(tmp_path),
        "DFTLOOP_MAIN_STEPS": "",  # empty means the default
    }
    params = main_job_parameters(env)
    assert params["checkpoint"] == "/x/best.pt" and "train_config" not in params
    assert params["n"] == 4 and params["sample_split"] == "test"
    assert params["relaxer_settings"]["fmax"] == 0.1 and params["sample_steps"] == 1000
    assert params["home"] == str(tmp_path)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DFTLOOP_MAIN_N", "many", "DFTLOOP_MAIN_N='many' is not a int"),
        ("DFTLOOP_MAIN_TRAIN_MINUTES", "-1", "must be positive"),
        ("DFTLOOP_MAIN_DFT", "vasp", "expected 'none' or 'espresso'"),
        ("DFTLOOP_MAIN_TRAIN", "yes", "DFTLOOP_MAIN_TRAIN='yes': expected 0 or 1"),
        ("DFTLOOP_MAIN_FLOOR", "2", "DFTLOOP_MAIN_FLOOR='2': expected 0 or 1"),
        ("DFTLOOP_MAIN_PROTOCOL", "pressure=3", "DFTLOOP_MAIN_PROTOCOL='pressure=3': unknown"),
        ("DFTLOOP_MAIN_PROTOCOL", "dispersion=d4", "DFTLOOP_MAIN_PROTOCOL='dispersion=d4'"),
    ],
)
def test_bad_options_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        main_job_parameters({name: value})


def test_the_protocol_is_the_dataset_s_unless_the_variable_overrides_it() -> None:
    assert main_job_parameters({})["protocol"] is None  # the flow takes the dataset's
    params = main_job_parameters(
        {
            "DFTLOOP_MAIN_DATASET": "carbon_24",
            "DFTLOOP_MAIN_PROTOCOL": "pressure_gpa=0 kspacing=0.3",
        }
    )
    assert params["protocol"] == {"pressure_gpa": 0, "kspacing": 0.3}


def test_overridden_trainings_get_their_own_run_directory(tmp_path: Path) -> None:
    plain = default_checkpoint_dir(str(tmp_path), "diffcsp", "perov_5", "cpu-small")
    assert plain == tmp_path / "checkpoints" / "diffcsp" / "perov_5" / "cpu-small"
    params = main_job_parameters({"DFTLOOP_MAIN_TRAIN": "1"})
    mine = default_checkpoint_dir(
        str(tmp_path),
        "diffcsp",
        "perov_5",
        "cpu-small",
        params["train_limit"],
        params["train_overrides"],
    )
    assert mine.parent == plain.parent and mine.name.startswith("cpu-small-") and mine != plain
    other = default_checkpoint_dir(str(tmp_path), "diffcsp", "perov_5", "cpu-small", 8)
    assert other not in (plain, mine)


def test_report_names_metrics_training_and_file_locations(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps({"epoch": e, "train": {"loss": 1.0 / e}, "seconds": 0.6}) for e in (1, 2)
        )
    )
    (run / "last.pt").write_bytes(b"")
    assert training_summary(str(run / "last.pt")) == ("2 epochs in 0.0 min, last train loss 0.5000")
    result = {
        "checkpoint": str(run / "last.pt"),
        "sample_dir": "/s",
        "stages": [{"relaxer": "chgnet", "n_input": 2, "n_ok": 2}],
        "metrics": [
            {"name": "continuousp.match_rate", "value": 0.5},
            {"name": "mean_delta_e_mev_per_atom", "value": 12.25},
            {"name": "n_hidden_metric", "value": 1.0},
        ],
        "rows": [
            {"structure_id": "0-0", "formula": "SrTiO3", "status": "ok", "rmsd": 0.01},
            {"structure_id": "0-1", "status": "invalid_input", "error": "cell volume is zero"},
        ],
        "artifacts": {"metrics_csv": "/r/metrics.csv", "histogram_png": "/r/h.png"},
        "store": {"docs": {"type": "MontyStore"}, "counts": {"sample": 2}},
    }
    floor = {
        "metrics": [
            {"name": "mean_delta_e_mev_per_atom", "value": 3.5, "counts": {"n_compared": 2}},
            {"name": "match_rate_to_relaxed", "value": 1.0},
        ]
    }
    text = format_report(result, main_job_parameters({}), 90.0, floor)
    assert "continuousp.match_rate" in text and "0.5000" in text and "12.2500" in text
    dataset_line = next(line for line in text.splitlines() if "dataset (true" in line)
    assert dataset_line.split()[3:6] == ["2", "3.500", "None"]
    assert "DFTLOOP_MAIN_FLOOR=0" in format_report(result, main_job_parameters({}), 90.0)
    assert "n_hidden_metric" not in text
    assert "2 epochs" in text and "/r/metrics.csv" in text and "/r/h.png" in text
    assert "cell volume is zero" in text and "MontyStore" in text
