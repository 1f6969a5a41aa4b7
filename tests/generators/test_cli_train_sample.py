"""``dftloop train`` and ``dftloop sample`` on a tiny run (typer's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from generators.sampler import load_samples

runner = CliRunner()


def _text(output: str) -> str:
    return " ".join(output.split())  # rich wraps long lines


def test_train_then_sample_then_resume(tmp_path: Path, data_dir: Path) -> None:
    run = tmp_path / "run"
    common = ["--data-dir", str(data_dir), "--no-progress"]
    result = runner.invoke(
        app,
        ["train", "--model", "diffcsp", "--dataset", "perov_5", "--config", "cpu-small",
         "--out", str(run), "--limit", "8", "--max-epochs", "2", "--device", "cpu", *common],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 epochs (max_epochs)" in _text(result.output)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["max_train_crystals"] == 8

    # resume to a later epoch: the epoch count continues
    result = runner.invoke(
        app,
        ["train", "--model", "diffcsp", "--dataset", "perov_5", "--resume", str(run / "last.pt"),
         "--out", str(run), "--max-epochs", "3", *common],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]

    samples = tmp_path / "samples"
    args = ["sample", "--checkpoint", str(run / "best.pt"), "--csp-split", "val", "--k", "2",
            "--limit", "3", "--batch-size", "4", "--steps", "3", "--out", str(samples),
            *common]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6 samples" in _text(result.output) and "2 chunks written" in _text(result.output)
    records = load_samples(samples)
    assert len(records) == 6 and {r.candidate for r in records} == {0, 1}
    # the same command again finds everything done
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "0 chunks written, 2 resumed" in _text(result.output)


def test_cli_errors_are_clear(tmp_path: Path, data_dir: Path) -> None:
    result = runner.invoke(
        app, ["train", "--model", "diffcsp", "--dataset", "perov_5", "--config", "huge"]
    )
    assert result.exit_code == 1 and "no configuration 'huge'" in _text(result.output)
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("hello")
    result = runner.invoke(app, ["sample", "--checkpoint", str(bogus), "--n", "3"])
    assert result.exit_code == 1 and "not a dftloop checkpoint" in _text(result.output)
    result = runner.invoke(app, ["sample", "--checkpoint", str(bogus)])
    assert result.exit_code != 0 and "exactly one of" in _text(result.output)
