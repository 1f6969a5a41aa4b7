"""The model registry: shipped cards, export, sha256 on load, names wherever paths go, download."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from typer.testing import CliRunner

from generators.model_zoo import (
    ChecksumError,
    export_checkpoint,
    file_sha256,
    list_models,
    resolve_checkpoint,
)
from generators.models.diffcsp import DiffCSP
from generators.trainer import fit, load_checkpoint

from .conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, perov_val_data) -> Path:  # type: ignore[no-untyped-def]
    """A 2-epoch tiny DiffCSP with a moving average of the weights (last.pt)."""
    out = tmp_path_factory.mktemp("run")
    config = tiny_config(max_epochs=2, ema_decay=0.9)
    fit(
        DiffCSP(config["model"]),
        config,
        perov_val_data[:8],
        [],
        out,
        dataset="perov_5",
        progress=False,
    )
    return out / "last.pt"


def _registry(tmp: Path, card: dict) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "registry.json"
    path.write_text(json.dumps({"format": "dftloop-model-registry/1", "models": [card]}))
    return path


def _card(name: str, sha: str, size: int, **where: str) -> dict:
    return {
        "name": name,
        "model": "diffcsp",
        "dataset": "perov_5",
        "task": "csp",
        "sha256": sha,
        "size_bytes": size,
        **where,
    }


def test_export_keeps_the_averaged_weights_only(trained: Path, tmp_path: Path) -> None:
    info = export_checkpoint(trained, tmp_path / "small.pt")
    full = torch.load(trained, weights_only=True)
    small = torch.load(tmp_path / "small.pt", weights_only=True)
    assert info["weights"] == "average" and info["epoch"] == 2
    assert info["sha256"] == hashlib.sha256((tmp_path / "small.pt").read_bytes()).hexdigest()
    assert set(small) >= {"format", "model", "dataset", "config", "state_dict"}
    assert not {"optimizer", "ema", "rng", "scheduler", "ema_state_dict"} & set(small)
    # the averaged weights differ from the optimiser's last ones, and those are what is kept
    key = "denoiser.coord_head.weight"
    assert not torch.equal(full["ema_state_dict"][key], full["state_dict"][key])
    for name, value in full["ema_state_dict"].items():
        assert torch.equal(small["state_dict"][name], value), name
    bf16 = export_checkpoint(trained, tmp_path / "bf16.pt", dtype="bfloat16")
    assert bf16["size_bytes"] < 0.7 * info["size_bytes"]
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_checkpoint(trained, tmp_path / "x.pt", dtype="float16")


@pytest.fixture
def tiny_registered(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``trained`` exported to ``tmp_path/zoo/tiny.pt`` and registered as ``tiny-perov``
    (``DFTLOOP_MODEL_REGISTRY``); returns the export's info."""
    info = export_checkpoint(trained, tmp_path / "zoo" / "tiny.pt")
    registry = _registry(
        tmp_path / "zoo", _card("tiny-perov", info["sha256"], info["size_bytes"], file="tiny.pt")
    )
    monkeypatch.setenv("DFTLOOP_MODEL_REGISTRY", str(registry))
    return info


def test_a_registered_name_loads_like_a_path_and_a_corrupt_byte_is_caught(
    tiny_registered: dict, tmp_path: Path
) -> None:
    assert "tiny-perov" in [c.name for c in list_models()]
    by_name, meta = load_checkpoint("tiny-perov")
    by_path, _ = load_checkpoint(tmp_path / "zoo" / "tiny.pt")
    assert meta["path"] == str(tmp_path / "zoo" / "tiny.pt")
    for (k, a), b in zip(by_name.state_dict().items(), by_path.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    data = bytearray((tmp_path / "zoo" / "tiny.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "zoo" / "tiny.pt").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"'tiny-perov' .* corrupt or was replaced"):
        load_checkpoint("tiny-perov")


def test_samples_of_a_registered_name_record_the_file_and_the_name(
    tiny_registered: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from generators.sampler import sample

    monkeypatch.chdir(tmp_path)  # a name must not be recorded as a path under the cwd
    for checkpoint, out in (
        ("tiny-perov", "by-name"),
        (str(tmp_path / "zoo" / "tiny.pt"), "by-path"),
    ):
        sample(checkpoint, tmp_path / out, "csp", split="val", limit=2, steps=2, progress=False)
        index = json.loads((tmp_path / out / "index.json").read_text())
        assert index["checkpoint"] == str((tmp_path / "zoo" / "tiny.pt").resolve())
        assert index["checkpoint_sha256"] == tiny_registered["sha256"]
        assert index["checkpoint_name"] == ("tiny-perov" if out == "by-name" else None)


def test_unknown_name_says_what_is_registered(tmp_path: Path) -> None:
    registry = _registry(tmp_path, _card("only-one", "0" * 64, 1, url="http://127.0.0.1:9/x"))
    with pytest.raises(FileNotFoundError, match=r"neither a file nor a registered.*only-one"):
        resolve_checkpoint("nope", registry)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve ``tmp_path/www`` on 127.0.0.1 (a random free port)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()


def test_url_card_downloads_once_and_checks_the_sha256(
    trained: Path, tmp_path: Path, served: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = served
    info = export_checkpoint(trained, root / "m.pt")
    monkeypatch.setenv("DFTLOOP_MODEL_CACHE", str(tmp_path / "cache"))
    good = _registry(
        tmp_path, _card("remote", info["sha256"], info["size_bytes"], url=f"{base}/m.pt")
    )
    path = resolve_checkpoint("remote", good)
    assert path.parent == tmp_path / "cache" and file_sha256(path) == info["sha256"]
    (root / "m.pt").unlink()  # a second resolve uses the cache, not the server
    assert resolve_checkpoint("remote", good) == path
    export_checkpoint(trained, root / "other.pt", dtype="bfloat16")
    bad = _registry(
        tmp_path / "b",
        _card("tampered", info["sha256"], info["size_bytes"], url=f"{base}/other.pt"),
    )
    with pytest.raises(ChecksumError, match="tampered"):
        resolve_checkpoint("tampered", bad)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [path.name]
    missing = _registry(tmp_path / "c", _card("gone", "0" * 64, 1, url=f"{base}/gone.pt"))
    with pytest.raises(OSError, match=r"cannot download model 'gone'.*404"):
        resolve_checkpoint("gone", missing)


def test_every_shipped_card_matches_its_file() -> None:
    from generators.model_zoo import REGISTRY_FILE

    cards = list_models(REGISTRY_FILE)
    for card in cards:
        local = card.local_file()
        assert local is not None and local.is_file(), card.name
        assert file_sha256(local) == card.sha256, card.name
        assert local.stat().st_size == card.size_bytes, card.name
        payload = torch.load(local, weights_only=True)
        assert (payload["model"], payload["dataset"]) == (card.model, card.dataset)
    total = sum(c.size_bytes for c in cards if c.file)
    assert total < 60e6, f"shipped checkpoints take {total / 1e6:.0f} MB"


def test_models_cli_lists_and_shows(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import app

    info = export_checkpoint(trained, tmp_path / "tiny.pt")
    card = _card("tiny-cli", info["sha256"], info["size_bytes"], file="tiny.pt")
    card["metrics"] = [
        {"name": "match_rate", "value": 0.5, "paper": 0.5202, "command": "dftloop sample A"},
        {
            "name": "rmse",
            "value": 0.1,
            "paper": 0.076,
            "command": "dftloop sample A",
            "sampling_cpu_minutes": 78.1,
            "sampling_note": "extrapolated",
        },
        {
            "name": "generation cov_recall",
            "value": 0.9,
            "protocol": "generation",
            "command": "dftloop sample B",
        },
    ]
    card["training"] = {**card.get("training", {}), "command": "dftloop train T"}
    monkeypatch.setenv("DFTLOOP_MODEL_REGISTRY", str(_registry(tmp_path, card)))
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert "tiny-cli" in listed.output and "match_rate 0.5 (paper 0.5202)" in listed.output
    shown = runner.invoke(app, ["models", "show", "tiny-cli"])
    assert json.loads(shown.output)["sha256"] == info["sha256"]
    unknown = runner.invoke(app, ["models", "show", "nope"])
    assert unknown.exit_code == 1
    table = runner.invoke(app, ["models", "table"])
    rows = [line for line in table.output.splitlines() if line.startswith("| tiny-cli")]
    # a generation row of a card whose own task is another says so in the task column
    assert [c.strip() for c in rows[2].split("|")[2:4]] == ["generation", "generation cov_recall"]
    # each row names its command; each command is listed once under the table
    refs = [row.split("|")[-2].strip() for row in rows]
    assert refs[0] == refs[1] != refs[2] and all(r.startswith("c") for r in refs)
    assert f"- `{refs[0]}`: `dftloop sample A`" in table.output
    assert f"- `{refs[2]}`: `dftloop sample B`" in table.output
    assert table.output.count("dftloop sample A") == 1
    assert "- tiny-cli: `dftloop train T`" in table.output
    row = rows[0]
    assert [c.strip() for c in row.split("|")[1:7]] == [
        "tiny-cli",
        "csp",
        "match_rate",
        "",
        "0.5",
        "0.5202",
    ]
    # the sampling cell carries the note on how a resumed sampling's time was measured
    assert rows[1].split("|")[-3].strip() == "78.1 (extrapolated)"


def test_card_training_commands_rebuild_the_recorded_configuration(zoo_card: ModuleType) -> None:
    """The training command of a card, read back by ``dftloop train --set``, gives the run's
    configuration: for a run with overrides and for every shipped card."""
    from flows.commands.train import parse_overrides
    from generators.configs import deep_merge, load_config

    def rebuilt(command: str, model: str, name: str, dataset: str) -> dict:
        words = shlex.split(command)
        assert words[:2] == ["dftloop", "train"] and words[-2:] == ["--out", "RUN_DIR"]
        assert words[words.index("--config") + 1] == name
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        merged = deep_merge(load_config(model, name, dataset), parse_overrides(sets))
        return {"model": merged["model"], "train": merged["train"]}

    run = deep_merge(
        load_config("diffcsp", "cpu-fast", "mp_20"),
        {"train": {"max_epochs": 60, "max_val_crystals": None, "lr": 3e-4, "betas": [0.8, 0.9]}},
    )
    command = zoo_card.train_command("diffcsp", "mp_20", run)
    assert command.count("--set") == 4 and "--set train.max_val_crystals=null" in command
    assert rebuilt(command, "diffcsp", "cpu-fast", "mp_20") == {
        "model": run["model"],
        "train": run["train"],
    }
    for card in list_models():
        training = card.training
        recorded = rebuilt(training["command"], card.model, training["config_name"], card.dataset)
        assert recorded == training["config"], card.name
        assert training["resume_command"] == training["command"] + " --resume RUN_DIR/last.pt"
