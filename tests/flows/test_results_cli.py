from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from ase.io import read
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from flows.cli import app
from flows.hashing import structure_hash
from flows.store import Provenance, ResultStore


def _fill(home: Path) -> None:
    s1 = Structure(
        Lattice.cubic(3.9),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    s2 = s1.copy()
    s2.scale_lattice(s1.volume * 1.1)
    prov = Provenance(model="dataset", dataset="perov_5")
    with ResultStore(home=home) as store:
        store.put_samples(
            [
                {"sample_id": "a", "structure": s1},
                {"sample_id": "b", "structure": s2},
                {"sample_id": "c", "structure": None, "error": "c: bad"},
            ],
            prov,
        )
        store.put_relaxations(
            [
                (
                    structure_hash(s1),
                    {
                        "structure_id": "a",
                        "relaxer": "chgnet",
                        "settings_hash": "h",
                        "status": "ok",
                        "final_structure": s1.as_dict(),
                        "final_energy_eV": -40.5,
                        "final_energy_per_atom_eV": -8.1,
                    },
                ),
                (
                    structure_hash(s2),
                    {
                        "structure_id": "b",
                        "relaxer": "chgnet",
                        "settings_hash": "h",
                        "status": "failed",
                        "error": "b: diverged",
                    },
                ),
            ],
            Provenance(model="dataset", relaxer="chgnet"),
        )


def test_results_list_and_export(tmp_path: Path) -> None:
    _fill(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["results", "list", "--kind", "relaxation", "--home", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "sample=3" in res.output and "relaxation=2" in res.output
    assert "diverged" in res.output

    out = tmp_path / "relax.csv"
    res = runner.invoke(app, ["results", "export", str(out), "--home", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert {r["structure_id"] for r in rows} == {"a", "b"}
    assert {r["provenance.relaxer"] for r in rows} == {"chgnet"}

    xyz = tmp_path / "relaxed.extxyz"
    res = runner.invoke(app, ["results", "export", str(xyz), "--home", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "1 without structure skipped" in " ".join(res.output.split())
    [atoms] = read(str(xyz), index=":")
    assert atoms.get_chemical_formula() == "O3SrTi"
    assert atoms.info["structure_id"] == "a"

    xyz = tmp_path / "samples.extxyz"
    res = runner.invoke(
        app,
        [
            "results",
            "export",
            str(xyz),
            "--kind",
            "sample",
            "--model",
            "dataset",
            "--home",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(read(str(xyz), index=":")) == 2

    res = runner.invoke(
        app, ["results", "export", str(tmp_path / "x.json"), "--home", str(tmp_path)]
    )
    assert res.exit_code != 0 and "unknown export format" in " ".join(res.output.split())


def test_publish_replaces_the_machines_paths_and_lists_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, scratch = tmp_path / "home", tmp_path / "scratch"
    monkeypatch.setenv("DFTLOOP_SCRATCH_DIR", str(scratch))
    report = home / "reports" / "experiment" / "run"
    report.mkdir(parents=True)
    (report / "report.md").write_text("ΔE in meV/atom, (V/N)^(1/3); ![plot](a.png)\n")
    (report / "a.png").write_bytes(b"\x89PNG\r\n")
    summary = {
        "plots": {"ΔE": f"{report}/a.png"},
        "error": f"x: pw.x failed; inputs and outputs kept in {scratch}/x-scf-1",
    }
    (report / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "docs" / "run"
    result = CliRunner().invoke(
        app, ["results", "publish", str(report), str(out), "--home", str(home)]
    )
    assert result.exit_code == 0, result.output
    published = json.loads((out / "summary.json").read_text())
    assert published == {
        "plots": {"ΔE": "$DFTLOOP_HOME/reports/experiment/run/a.png"},
        "error": "x: pw.x failed; inputs and outputs kept in $DFTLOOP_SCRATCH_DIR/x-scf-1",
    }
    assert (out / "report.md").read_text() == (report / "report.md").read_text()
    assert (out / "a.png").read_bytes() == b"\x89PNG\r\n"
    # a path outside the project and the scratch folder is listed, and the exit status says so
    (report / "rows.json").write_text(json.dumps([{"sample_dir": "/data/elsewhere/samples"}]))
    again = CliRunner().invoke(
        app, ["results", "publish", str(report), str(out), "--home", str(home)]
    )
    assert again.exit_code == 1
    assert "rows.json: /data/elsewhere/samples" in again.output
    missing = CliRunner().invoke(app, ["results", "publish", str(out / "nope"), str(out)])
    assert missing.exit_code == 2 and "no report.md" in missing.output
