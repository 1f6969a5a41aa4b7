"""Relaxer specifications of the stability experiment and what it records of its scope:
DFT path, protocol, DFT defaults, checkpoints and their training budget, DFT subset counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.experiment_steps import dft_relaxer_spec
from flows.protocol_settings import protocol_spec, with_protocol


def test_dft_paths_name_the_relaxer() -> None:
    name, settings = dft_relaxer_spec("chgnet", {"fmax": 0.1}, "espresso", {"kspacing": 0.4})
    assert name == "chgnet+espresso"
    assert settings == {
        "chgnet": {"fmax": 0.1},
        "espresso": {"conv_thr_per_atom": 1e-8, "timeout_s": 2400.0, "kspacing": 0.4},
        "initial_single_point": True,
    }
    name, settings = dft_relaxer_spec("chgnet", {"fmax": 0.1}, "espresso", None, "direct")
    assert name == "espresso"  # no force-field pre-relax: pw.x from the generated structure
    assert settings == {"conv_thr_per_atom": 1e-8, "timeout_s": 2400.0}


def test_the_dataset_protocol_is_the_default_and_can_be_overridden() -> None:
    assert protocol_spec("carbon_24", None) == "carbon_24"
    assert protocol_spec("carbon_24", {"pressure_gpa": 0}) == {
        "pressure_gpa": 0,
        "dataset": "carbon_24",
    }
    assert protocol_spec("carbon_24", "perov_5") == "perov_5"
    assert protocol_spec("my_set", None) is None  # no defaults for an unknown dataset
    assert with_protocol({"fmax": 0.1}, "carbon_24") == {"fmax": 0.1, "protocol": "carbon_24"}
    given = {"protocol": {"pressure_gpa": 5}}
    assert with_protocol(given, "carbon_24") == given  # the relaxer's own protocol wins
    assert with_protocol(None, None) == {}


def test_a_registered_checkpoint_carries_its_card_budget_and_the_paper_scale() -> None:
    """Numbers of the shipped cdvae-carbon24 card and of generators/configs/cdvae.yaml."""
    from flows.experiment_scope import describe_checkpoint
    from generators.model_zoo import ZOO_DIR

    info = describe_checkpoint("cdvae", "cdvae-carbon24", "carbon_24", given=True)
    assert info["source"] == "registered" and info["checkpoint"] == "cdvae-carbon24"
    # GNU time recorded one of the two training segments: the CPU time is a range
    assert info["training"] == {
        "config_name": "cpu",
        "epochs": 40,
        "cpu_minutes_recorded": 38.5,
        "epoch_minutes": 116.3,
        "wall_minutes": 139.4,
        "device": "cpu, 1 thread",
        "latent_dim": 64,
        "hidden_dim": 128,
    }
    from analysis.stability_limitations import checkpoint_lines

    [line] = checkpoint_lines({"cdvae": info})
    assert "40 epochs, 0.6-1.9 CPU h (part of the run was not timed), 139.4 minutes wall" in line
    paper = info["paper_scale"]
    assert (paper["max_epochs"], paper["batch_size"], paper["latent_dim"]) == (4000, 256, 256)
    # the shipped file given by path is the same registered model
    by_path = describe_checkpoint("cdvae", str(ZOO_DIR / "cdvae-carbon24.pt"), "carbon_24", True)
    assert by_path["checkpoint"] == "cdvae-carbon24" and by_path["training"]["epochs"] == 40


def test_user_card_paper_scale_files_and_trained_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis.stability_limitations import checkpoint_lines
    from flows.experiment_scope import describe_checkpoint

    registry = tmp_path / "registry.json"
    card = {
        "name": "my-dpcdvae",
        "model": "dpcdvae",
        "dataset": "carbon_24",
        "task": "generate",
        "sha256": "0" * 64,
        "size_bytes": 1,
        "file": "my.pt",
        "training": {
            "config_name": "paper",
            "epochs": 120,
            "cpu_minutes": 600,
            "paper_scale": {"max_epochs": 3000, "batch_size": 256},
        },
    }
    registry.write_text(json.dumps({"models": [card]}))
    monkeypatch.setenv("DFTLOOP_MODEL_REGISTRY", str(registry))
    info = describe_checkpoint("dpcdvae", "my-dpcdvae", "carbon_24", given=True)
    assert info["paper_scale"] == {
        "source": "the model card",
        "max_epochs": 3000,
        "batch_size": 256,
    }
    [line] = checkpoint_lines({"dpcdvae": info})
    assert "120 epochs, 10 CPU hours (600 CPU minutes)" in line
    assert "Trained with the paper's configuration but for 120 of up to 3000 epochs" in line

    unregistered = tmp_path / "other.pt"
    unregistered.write_bytes(b"x")
    assert describe_checkpoint("cdvae", str(unregistered), "carbon_24", True)["source"] == "file"

    run = tmp_path / "train"
    run.mkdir()
    run.joinpath("metrics.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e, "train_loss": 1.0}) for e in (1, 2, 3)) + "\n"
    )
    trained = describe_checkpoint(
        "cdvae",
        str(run / "best.pt"),
        "carbon_24",
        False,
        {"config": "cpu-small", "max_minutes": 30},
    )
    assert trained["source"] == "trained"
    assert trained["training"]["epochs"] == 3 and trained["training"]["max_minutes"] == 30
    assert (trained["training"]["latent_dim"], trained["training"]["hidden_dim"]) == (64, 128)
    [line] = checkpoint_lines({"cdvae": trained})
    assert (
        "the `cpu-small` configuration and a budget of 30 minutes (`train_max_minutes`), " in line
    )
    assert "3 epochs" in line and "not the paper's cdvae model" in line
    # a reused checkpoint: its run's config.json, not this run's parameters, gives the budget
    from generators.configs import deep_merge, load_config

    resolved = deep_merge(
        load_config("cdvae", "cpu-small", "carbon_24"), {"train": {"max_minutes": 12}}
    )
    run.joinpath("config.json").write_text(json.dumps(resolved))
    reused = describe_checkpoint(
        "cdvae",
        str(run / "best.pt"),
        "carbon_24",
        False,
        {"config": "cpu-small", "max_minutes": 600},
    )
    assert reused["training"]["max_minutes"] == 12
    [line] = checkpoint_lines({"cdvae": reused})
    assert "a budget of 12 minutes" in line and "600" not in line


def test_dft_subset_record_counts_the_cap() -> None:
    from flows.experiment_scope import dft_subset_record

    candidates = [{"structure_id": str(i), "n_sites": n} for i, n in enumerate((6, 8, 12, 13, 24))]
    assert dft_subset_record(candidates, ["0", "2"], 12) == {
        "n_candidates": 5,
        "n_eligible": 3,
        "n_chosen": 2,
    }
    assert dft_subset_record(candidates, ["0"], None)["n_eligible"] == 5


def test_protocol_record_from_the_relaxers_settings() -> None:
    """carbon_24's packaged convergence (k-spacing 0.2, 45/360 Ry) reaches pw.x at 10 GPa."""
    from flows.experiment_scope import protocol_record
    from flows.tasks import describe_relaxer

    ff = with_protocol(None, "carbon_24")
    ff_info = describe_relaxer("chgnet", ff)
    for path in ("pre-relaxed", "direct"):
        spec = dft_relaxer_spec("chgnet", ff, "espresso", with_protocol(None, "carbon_24"), path)
        record = protocol_record("carbon_24", ff_info, describe_relaxer(*spec))
        assert record["name"] == "carbon_24" and record["source"] == "package:carbon_24.json"
        dft = record["dft"]
        assert (dft["pressure_gpa"], dft["dispersion"]) == (10.0, "d3bj")
        assert (dft["kspacing"], dft["relax_kspacing"], dft["ecutwfc"], dft["ecutrho"]) == (
            0.2,
            0.3,
            45.0,
            360.0,
        )
        assert record["dft_code"] == "Quantum ESPRESSO pw.x"
        assert record["force_field"]["pressure_gpa"] == 10.0
    # a user's k-spacing is not the convergence file's: no source claimed
    spec = dft_relaxer_spec("chgnet", ff, "espresso", with_protocol({"kspacing": 0.3}, "carbon_24"))
    record = protocol_record("carbon_24", ff_info, describe_relaxer(*spec))
    assert record["dft"]["kspacing"] == 0.3 and record["source"] is None
    assert protocol_record("carbon_24", ff_info, None)["dft"] is None
    # VASP carries the protocol but takes k-points and ENCUT from its input set: no source
    vasp = describe_relaxer("vasp", with_protocol(None, "carbon_24"))
    record = protocol_record("carbon_24", ff_info, vasp)
    assert record["dft"]["kspacing"] == 0.2 and record["source"] is None
