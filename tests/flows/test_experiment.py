"""The ``stability-experiment`` flow end to end, its rerun, its DFT stage and its CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from prefect.testing.utilities import prefect_test_harness

from flows.store import ResultStore

from .conftest import TINY_CHGNET


@pytest.fixture(scope="module")
def harness() -> None:
    # 240 s and 600 s timed out (setup errors after 295 s and 732 s) under `nice -n 15` while the
    # science runs had the box (load ~6-7, 2026-12-02); the main job waits 900 s too
    with prefect_test_harness(server_startup_timeout=900):
        yield


def _ledger(home: Path) -> list[dict]:
    path = home / "ledger" / "relaxations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_experiment_flow_end_to_end_then_rerun_skips(
    harness: None, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The smoke model and the test-split floor on carbon_24, CHGNet only: rows, hull, S.U.N.,
    structure statistics, report; a rerun skips every relaxation."""
    from flows.experiment import stability_experiment

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    params = dict(
        models=["dataset"],
        dataset="carbon_24",
        n=4,
        relaxer_settings={**TINY_CHGNET, "max_steps": 8},
        dft="none",
        novelty_limit=200,
        cluster_kwargs={"processes": False},
        run_name="first",
        home=str(tmp_path),
    )
    out = stability_experiment(**params)
    summary = out["summary"]
    assert summary["model_errors"] == {}
    rows = out["rows"]
    assert [r["model"] for r in rows] == ["dataset"] * 4 + ["test split"] * 4
    generated, floor = rows[:4], rows[4:]
    for row in generated:  # rattled carbon relaxes downhill and lies above the carbon hull
        assert row["delta_e_mev_per_atom"] > 0 and row["rmsd"] is not None
        assert row["e_above_hull_eV"] is not None and row["e_above_hull_eV"] > 0
        assert row["e_above_hull_generated_eV"] > row["e_above_hull_eV"]
        assert {"stable", "unique", "novel", "sun"} <= set(row)
        assert row["dft_selected"] is False and "dft_delta_e_mev_per_atom" not in row
        # carbon_24's protocol: 10 GPa, so the rows compare enthalpies H = E + pV
        assert row["energy_quantity"] == "H" and row["pressure_gpa"] == 10.0
        assert row["space_group"] is not None
    # the dataset's floor: random test-split structures, the same relaxer and settings hash
    assert summary["settings"]["protocol"] == "carbon_24"
    assert summary["settings"]["relaxer"]["settings"]["protocol"]["pressure_gpa"] == 10.0
    ff_hash = summary["settings"]["relaxer"]["settings_hash"]
    assert {r["settings_hash"] for r in rows} == {ff_hash}
    assert all(r["structure_id"].startswith("test:") for r in floor)
    assert all(r["delta_e_mev_per_atom"] is not None and r["error"] is None for r in floor)
    assert set(generated[0]) == set(floor[0])  # the same columns
    assert summary["dataset_floor"] == {"label": "test split", "n": 4, "split": "test"}
    assert list(summary["per_model"]) == ["dataset", "test split"]
    structure = {r["model"]: r for r in out["tables"]["structure"]}
    assert set(structure) == {"dataset", "test split"}
    assert "sp/sp2/sp3 relaxed" in structure["dataset"]  # carbon: hybridisation reported
    differences = {(r["difference"], r["quantity"]) for r in out["tables"]["comparison"]}
    assert ("dataset − test split", "ΔH force field (meV/atom)") in differences
    ref = summary["reference"]["force_field"]["entries"]
    assert set(ref) == {"ref:C-130526-2423-9", "ref:C-34615-6034-26"}
    assert all(e["energy_per_atom_eV"] < -8.5 for e in ref.values())

    report = Path(out["report_dir"])
    assert report == tmp_path / "reports" / "experiment" / "first"
    saved = json.loads((report / "rows.json").read_text())
    assert len(saved) == 8 and not any(k.startswith("_") for r in saved for k in r)
    assert json.loads((report / "summary.json").read_text())["per_model"]["dataset"]
    text = (report / "report.md").read_text()
    assert "## Per model" in text and "Dataset floor (row `test split`): 4 structures" in text
    limits = text[text.index("## Limitations") : text.index("## Settings")]
    assert "There is no DFT subset: this run ran no DFT (`dft = none`)." in limits
    assert "- `dataset`: no checkpoint (the smoke-test pseudo-model: rattled dataset" in limits
    assert "- `dataset`: 4 structures generated, 4 rows: 4 with a force-field value, none" in limits
    assert "- `test split`: 4 test-split structures drawn (random, seed 0), 4 rows" in limits
    assert "Protocol (the `carbon_24` defaults where not overridden): pressure 10 GPa" in limits
    assert "At p = 10 GPa (p ≠ 0) every energy compared is an enthalpy per atom" in limits
    assert summary["dft_subsets"] == {} and summary["counts"]["test split"]["n_relaxed"] == 4
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["delta_e_ff_histogram.png", "delta_e_vs_rmsd_ff.png", "distributions.png"]
    assert all((report / p).stat().st_size > 1000 for p in pngs)
    sun = {r["model / energies"]: r["n"] for r in out["tables"]["sun"]}
    assert sun == {"dataset (force field)": 4, "test split (force field)": 4}
    assert set(out["artifacts"]) == {
        "summary",
        "structure",
        "comparison",
        "sun",
        "dft-vs-force-field",
        "dft-ratio-estimate",
        "per-structure",
        "plots",
    }

    computed = len(_ledger(tmp_path))
    with ResultStore(home=tmp_path) as store:
        before = {r["doc_id"]: r["created_at"] for r in store.query("relaxation")}
    assert computed == len(before) == 10  # 4 samples + 4 test-split structures + 2 references

    second = stability_experiment(**{**params, "run_name": "second"})
    for stage in second["summary"]["stages"].values():
        assert stage["n_submitted"] == 0 and stage["n_skipped"] == stage["n_input"]
    assert len(_ledger(tmp_path)) == computed  # nothing recomputed
    with ResultStore(home=tmp_path) as store:
        assert {r["doc_id"]: r["created_at"] for r in store.query("relaxation")} == before
    assert [r["delta_e_mev_per_atom"] for r in second["rows"]] == [
        r["delta_e_mev_per_atom"] for r in rows
    ]


def test_the_floor_alone_is_the_same_rows_as_beside_a_model(
    harness: None, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """models=[] runs the test-split row only; a later run with a model reuses its relaxations
    and reports the same floor rows (what lets the floor's DFT start before the checkpoints)."""
    from flows.experiment import stability_experiment

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    params = dict(
        dataset="carbon_24",
        n=2,
        relaxer_settings={**TINY_CHGNET, "max_steps": 8},
        dft="none",
        sun=False,
        cluster_kwargs={"processes": False},
        home=str(tmp_path),
    )
    alone = stability_experiment(models=[], run_name="floor", **params)
    assert alone["summary"]["model_errors"] == {}
    assert [r["model"] for r in alone["rows"]] == ["test split"] * 2
    text = (Path(alone["report_dir"]) / "report.md").read_text()
    assert "Models: none (the dataset floor alone)" in text
    computed = len(_ledger(tmp_path))
    assert computed == 4  # 2 test-split structures + 2 hull references
    both = stability_experiment(models=["dataset"], run_name="both", **params)
    assert len(_ledger(tmp_path)) == computed + 2  # only the model's 2 structures are new
    floor = [r for r in both["rows"] if r["model"] == "test split"]
    assert [(r["structure_id"], r["delta_e_mev_per_atom"]) for r in floor] == [
        (r["structure_id"], r["delta_e_mev_per_atom"]) for r in alone["rows"]
    ]
    with pytest.raises(ValueError, match="nothing to run"):
        stability_experiment(models=[], dataset_floor=False, **params)


@pytest.mark.slow
def test_experiment_trains_a_tiny_dpcdvae_and_compares_it(
    harness: None, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DP-CDVAE trained in the flow (1 epoch, 8 crystals) against the smoke model."""
    from flows.experiment import stability_experiment

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    out = stability_experiment(
        models=["dataset", "dpcdvae"],
        dataset="carbon_24",
        train_max_minutes=1.0,
        train_overrides={
            "train": {"max_epochs": 1, "max_train_crystals": 8, "max_val_crystals": 4}
        },
        n=4,
        sample_steps=10,
        relaxer_settings={**TINY_CHGNET, "max_steps": 8},
        dft="none",
        dataset_floor=False,
        novelty_limit=200,
        cluster_kwargs={"processes": False},
        run_name="tiny",
        home=str(tmp_path),
    )
    assert out["summary"]["model_errors"] == {}
    assert (tmp_path / "checkpoints" / "dpcdvae" / "carbon_24" / "cpu-small" / "best.pt").is_file()
    rows = out["rows"]
    assert [r["model"] for r in rows] == ["dataset"] * 4 + ["dpcdvae"] * 4
    for row in rows:  # a row without E_hull says why (e.g. elements outside the C hull)
        assert row["e_above_hull_eV"] is not None or row["e_above_hull_reason"] or row["error"]
    comparison = out["tables"]["comparison"]
    assert comparison and comparison[0]["difference"] == "dpcdvae − dataset"
    assert "68.1" in (Path(out["report_dir"]) / "report.md").read_text()


@pytest.mark.slow
def test_experiment_with_real_pw_x_on_the_smallest_structure(
    harness: None, tmp_path: Path, data_dir: Path, pseudo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chgnet+espresso on the smallest smoke structure and on diamond (the hull), real pw.x."""
    if shutil.which("pw.x") is None:
        pytest.fail("pw.x not found (apt-get install quantum-espresso)")
    from flows.experiment import stability_experiment

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    out = stability_experiment(
        models=["dataset"],
        dataset="carbon_24",
        n=3,
        relaxer_settings=TINY_CHGNET,
        dft="espresso",
        dft_settings={"kspacing": 0.8, "pseudo_dir": str(pseudo_dir)},  # nstep 60: see docs
        dft_per_model=1,
        dft_selection="smallest",
        dataset_floor=False,
        reference_structures=["C-130526-2423-9"],  # diamond only: graphite's PBE c axis drifts
        sun=False,
        cluster_kwargs={"processes": False},
        run_name="dft",
        home=str(tmp_path),
    )
    rows = out["rows"]
    [chosen] = [r for r in rows if r["dft_selected"]]
    assert chosen["n_sites"] == min(r["n_sites"] for r in rows)
    assert chosen["dft_status"] in ("ok", "not_converged"), chosen
    assert chosen["dft_path"] == "pre-relaxed"
    dft_hash = out["summary"]["settings"]["dft_relaxer"]["settings_hash"]
    assert chosen["dft_settings_hash"] == dft_hash
    # DP-CDVAE's protocol: pw.x energy of the structure as generated minus after the pw.x relax
    assert chosen["dft_delta_e_mev_per_atom"] > 0
    assert chosen["dft_rmsd"] is not None
    assert chosen["dft_e_above_hull_eV"] is not None
    dft_ref = out["summary"]["reference"]["dft"]["entries"]
    assert all(e["energy_per_atom_eV"] < -200 for e in dft_ref.values())  # pw.x eV, not CHGNet
    assert (Path(out["report_dir"]) / "delta_e_dft_histogram.png").is_file()
    assert any("DFT" in r["quantity"] for r in out["tables"]["summary"])


def test_cli_options_are_checked_before_anything_runs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["experiment", "--help"]).output
    for option in (
        "--checkpoint",
        "--dft-per-model",
        "--dft-selection",
        "--dft-path",
        "--dft-max-sites",
        "--dataset-floor",
        "--floor-only",
        "--n-dataset",
        "--pressure-gpa",
        "--protocol",
        "--reference",
        "--home",
    ):
        assert option in help_text
    bad = [
        (["--relaxer-settings", "{fmax: 1"], "not JSON"),
        (["--dft-settings", "[1, 2]"], "JSON object"),
        (["--checkpoint", "cdvae"], "MODEL=PATH"),
        (["--checkpoint", f"cdvae={tmp_path / 'missing.pt'}"], "neither a file nor a registered"),
        (["--dft", "castep"], "espresso, vasp or none"),
        (["--dft-selection", "largest"], "largest"),
        (["--dft-path", "sideways"], "pre-relaxed or direct"),
        (["--protocol", "pressure=3"], "unknown protocol field"),
        (["--dispersion", "d4"], "--protocol"),
        (["--floor-only", "--model", "cdvae"], "--floor-only runs no model"),
        (["--floor-only", "--no-dataset-floor"], "--floor-only runs no model"),
    ]
    for args, message in bad:
        result = runner.invoke(app, ["experiment", *args, "--home", str(tmp_path)])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not (tmp_path / "reports").exists()  # nothing ran


def test_cli_checkpoint_takes_a_file_or_a_registered_name(tmp_path: Path) -> None:
    """--checkpoint MODEL=NAME resolves a shipped model (sha256 checked); a file passes as is."""
    from flows.commands.experiment import _checkpoints

    shipped = tmp_path / "mine.pt"
    shipped.write_bytes(b"not read at parse time")
    assert _checkpoints(["cdvae=cdvae-carbon24", f"dpcdvae={shipped}"]) == {
        "cdvae": "cdvae-carbon24",
        "dpcdvae": str(shipped),
    }
    with pytest.raises(typer.BadParameter, match="neither a file nor a registered model name"):
        _checkpoints(["cdvae=cdvae-nowhere"])


def test_dataset_floor_row_of_the_nightly_table(
    harness: None, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random test-split structures through the models' relaxer: same settings hash, metrics."""
    import numpy as np
    from prefect import flow

    from flows.experiment_steps import dataset_floor_row
    from flows.tasks import describe_relaxer
    from generators.data import load_split

    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data_dir))
    settings = {**TINY_CHGNET, "max_steps": 8}

    @flow
    def floor_flow() -> dict:
        return dataset_floor_row(
            "perov_5", 3, "chgnet", settings, str(tmp_path), cluster_kwargs={"processes": False}
        )

    row = floor_flow()
    assert row["settings_hash"] == describe_relaxer("chgnet", settings)["settings_hash"]
    assert row["model"] == "test split" and row["status"] == "ok"
    assert row["n_samples"] == 3 and row["n_relaxed"] == 3
    test_ids = [r.material_id for r in load_split("perov_5", "test", progress=False).records]
    drawn = np.random.default_rng(0).permutation(len(test_ids))[:3]
    assert [r["structure_id"] for r in row["rows"]] == [f"test:{test_ids[i]}" for i in drawn]
    values = [r["delta_e_mev_per_atom"] for r in row["rows"]]
    assert row["mean_delta_e_mev_per_atom"] == pytest.approx(float(np.mean(values)))
    assert {r["settings_hash"] for r in row["rows"]} == {row["settings_hash"]}
