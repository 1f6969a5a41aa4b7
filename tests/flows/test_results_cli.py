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


def test_json_export_and_import_move_documents_with_their_blobs(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    _fill(source)
    s1 = Structure(Lattice.cubic(4.0), ["C"], [[0, 0, 0]])
    forces = [[0.125, -0.5, 0.0]]
    with ResultStore(home=source) as store:
        store.put_relaxations(
            [
                (
                    structure_hash(s1),
                    {
                        "structure_id": "dft",
                        "relaxer": "chgnet+espresso",
                        "settings_hash": "d",
                        "status": "ok",
                        "final_energy_eV": -250.5,
                        "forces": forces,
                    },
                )
            ],
            Provenance(model="cdvae", relaxer="chgnet+espresso"),
        )
    bundle = tmp_path / "docs.json.gz"
    both_kinds = ["--kind", "sample", "--kind", "relaxation"]
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["results", "export", str(bundle), *both_kinds, "--home", str(source)],
    )
    assert res.exit_code == 0, res.output
    assert "6 documents (sample=3, relaxation=3)" in " ".join(res.output.split())
    first = bundle.read_bytes()
    runner.invoke(
        app,
        ["results", "export", str(bundle), *both_kinds, "--home", str(source)],
    )
    assert bundle.read_bytes() == first  # same documents, same bytes (no gzip time stamp)

    # the target already has a finished relaxation of "a" (kept) and an interrupted one of
    # "b" (the source's finished one replaces it)
    with ResultStore(home=source) as store:
        a, b = sorted(store.query("relaxation", {"relaxer": "chgnet"}), key=lambda d: d["doc_id"])
    by_id = {a["structure_id"]: a, b["structure_id"]: b}
    with ResultStore(home=target) as store:
        store.put_relaxations(
            [
                (by_id["a"]["structure_hash"], {**by_id["a"], "final_energy_eV": -1.0}),
                (by_id["b"]["structure_hash"], {**by_id["b"], "status": "interrupted"}),
            ],
            Provenance(model="dataset", relaxer="chgnet"),
        )
    res = runner.invoke(app, ["results", "import", str(bundle), "--home", str(target)])
    assert res.exit_code == 0, res.output
    assert "added 4, replaced 1 unfinished, kept 1" in " ".join(res.output.split())
    with ResultStore(home=target) as store:
        docs = {d["structure_id"]: d for d in store.query("relaxation", load_blobs=True)}
        assert store.count("sample") == 3
    assert docs["a"]["final_energy_eV"] == -1.0  # what the target had is not overwritten
    assert docs["b"]["status"] == "failed"  # the source's finished status
    assert docs["dft"]["forces"] == forces  # the blob came along and is in the data store
    with ResultStore(home=target) as store:
        [raw] = store.query("relaxation", {"structure_id": "dft"})
    assert raw["forces"]["store"] == "data"
    again = runner.invoke(app, ["results", "import", str(bundle), "--home", str(target)])
    assert "added 0, replaced 0 unfinished, kept 6" in " ".join(again.output.split())

    # only the DFT relaxer's documents
    dft_only = tmp_path / "dft.json.gz"
    res = runner.invoke(
        app,
        ["results", "export", str(dft_only), "--relaxer", "chgnet+espresso", "--home", str(source)],
    )
    assert "1 documents (relaxation=1)" in " ".join(res.output.split())

    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not gzip")
    res = runner.invoke(app, ["results", "import", str(bad), "--home", str(target)])
    assert res.exit_code == 2 and "not gzipped JSON" in " ".join(res.output.split())
    res = runner.invoke(
        app,
        [
            "results",
            "export",
            str(tmp_path / "two.csv"),
            "--kind",
            "sample",
            "--kind",
            "relaxation",
            "--home",
            str(source),
        ],
    )
    assert res.exit_code == 2 and "takes one --kind" in " ".join(res.output.split())


def test_samples_travel_with_their_directory_and_without_the_machines_paths(
    tmp_path: Path,
) -> None:
    import gzip

    from dftloop_io.samples import (
        SampleRecord,
        chunk_name,
        load_samples,
        write_chunk,
        write_index,
    )

    source, target = tmp_path / "machine-a", tmp_path / "machine-b"
    sample_dir = source / "samples" / "cdvae-carbon_24-0123456789ab"
    sample_dir.mkdir(parents=True)
    structure = Structure(Lattice.cubic(3.57), ["C", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    records = [SampleRecord(sample_id="0-0", structure=structure)]
    write_chunk(sample_dir, 0, records)
    write_index(
        sample_dir, {"model": "cdvae", "total": 1, "chunk_size": 1, "chunks": [chunk_name(0)]}
    )
    prov = Provenance(model="cdvae", dataset="carbon_24", config={"sample_dir": str(sample_dir)})
    with ResultStore(home=source) as store:
        store.put_samples(records, prov)
    bundle = tmp_path / "samples.json.gz"
    runner = CliRunner()
    res = runner.invoke(
        app, ["results", "export", str(bundle), "--kind", "sample", "--home", str(source)]
    )
    assert res.exit_code == 0, res.output
    assert "1 documents (sample=1) and 1 sample directories" in " ".join(res.output.split())
    text = gzip.decompress(bundle.read_bytes()).decode()
    assert str(source) not in text and "$DFTLOOP_HOME/samples/cdvae-carbon_24" in text

    res = runner.invoke(app, ["results", "import", str(bundle), "--home", str(target)])
    assert res.exit_code == 0, res.output
    assert "1 of 1 sample directories written" in " ".join(res.output.split())
    copied = target / "samples" / sample_dir.name
    [loaded] = load_samples(copied)
    assert loaded.sample_id == "0-0" and loaded.structure == structure
    with ResultStore(home=target) as store:
        [doc] = store.query("sample")
    assert doc["provenance"]["config"]["sample_dir"] == str(copied.resolve())
    # the same samples stored from the new project directory keep their document ids
    with ResultStore(home=target) as store:
        moved = Provenance(**{**prov.__dict__, "config": {"sample_dir": str(copied)}})
        store.put_samples(records, moved)
        assert store.count("sample") == 1
    # relaxations alone carry the directory their structures came from
    with ResultStore(home=source) as store:
        store.put_relaxations(
            [(structure_hash(structure), {"structure_id": "0-0", "settings_hash": "h"})],
            Provenance(**{**prov.__dict__, "relaxer": "chgnet"}),
        )
    relaxations = tmp_path / "relaxations.json.gz"
    res = runner.invoke(app, ["results", "export", str(relaxations), "--home", str(source)])
    assert "1 documents (relaxation=1) and 1 sample directories" in " ".join(res.output.split())
    # a second import leaves the complete directory alone
    (copied / chunk_name(0)).write_text("[]")
    again = runner.invoke(app, ["results", "import", str(bundle), "--home", str(target)])
    assert "0 of 1 sample directories written" in " ".join(again.output.split())
    assert json.loads((copied / chunk_name(0)).read_text()) == []
