"""The nightly benchmark falls back to a shipped checkpoint when none was trained under home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.nightly import _find_checkpoint
from flows.pipeline import default_checkpoint_dir


def test_trained_checkpoint_first_then_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = {
        "name": "diffcsp-perov5-x",
        "model": "diffcsp",
        "dataset": "perov_5",
        "task": "csp",
        "sha256": "0" * 64,
        "size_bytes": 1,
        "url": "http://127.0.0.1:9/x.pt",
    }
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"models": [card]}))
    monkeypatch.setenv("DFTLOOP_MODEL_REGISTRY", str(registry))
    # only this test's card: the shipped registry is left out
    monkeypatch.setattr("generators.model_zoo.REGISTRY_FILE", tmp_path / "none.json")
    home = str(tmp_path / "home")
    assert _find_checkpoint(home, "diffcsp", "perov_5", "cpu-small") == "diffcsp-perov5-x"
    assert _find_checkpoint(home, "diffcsp", "perov_5", "cpu-small-generate") is None
    assert _find_checkpoint(home, "diffcsp", "carbon_24", "cpu-small") is None
    run = default_checkpoint_dir(home, "diffcsp", "perov_5", "cpu-small")
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"x")
    assert _find_checkpoint(home, "diffcsp", "perov_5", "cpu-small") == str(run / "last.pt")
