"""``dftloop relax`` on a sample directory and on files, with per-item errors."""

from __future__ import annotations

import json
from pathlib import Path

from ase.io import write
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from typer.testing import CliRunner

from dftloop_io.samples import SampleRecord, write_chunk, write_index
from flows.cli import app
from relax.io import load_results, read_structures


def diamond(a: float = 3.65) -> Structure:
    h = a / 2
    return Structure(
        Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["C", "C"], [[0, 0, 0], [0.26, 0.25, 0.25]]
    )


def test_read_structures_files_and_sample_dir(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    diamond().to(filename=str(folder / "dia.cif"))
    atoms = AseAtomsAdaptor.get_atoms(diamond(3.6))
    write(folder / "frames.extxyz", [atoms, atoms])
    (folder / "broken.cif").write_text("not a cif")
    (folder / "notes.txt").write_text("ignored")
    entries = read_structures(folder)
    assert [e[0] for e in entries] == ["broken", "dia", "frames-0", "frames-1"]
    assert entries[0][1] is None and "broken.cif" in entries[0][2]
    assert all(e[1] is not None for e in entries[1:])

    samples = tmp_path / "samples"
    records = [
        SampleRecord(sample_id="0-0", structure=diamond()),
        SampleRecord(sample_id="0-1", structure=None, error="NaN lattice"),
    ]
    write_index(samples, {"chunks": [write_chunk(samples, 0, records)]})
    entries = read_structures(samples)
    assert [(e[0], e[1] is None) for e in entries] == [("0-0", False), ("0-1", True)]
    assert "NaN lattice" in entries[1][2]


def test_cli_relax_sample_dir_with_chgnet(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    records = [
        SampleRecord(sample_id="0-0", structure=diamond(3.65)),
        SampleRecord(sample_id="0-1", structure=None, error="could not build"),
        SampleRecord(sample_id="0-2", structure=diamond(3.50)),
    ]
    write_index(samples, {"chunks": [write_chunk(samples, 0, records)]})
    out = tmp_path / "relaxed.json"
    result = CliRunner().invoke(
        app,
        [
            "relax",
            str(samples),
            "--relaxer",
            "chgnet",
            "--out",
            str(out),
            "--fmax",
            "0.1",
            "--set",
            "max_atoms=50",
            "--no-progress",
        ],
    )
    assert result.exit_code == 2, result.output  # one item failed, the others relaxed
    payload = json.loads(out.read_text())
    assert payload["format"] == "dftloop-relax/1" and payload["n"] == 3
    results = load_results(out)
    assert [r.structure_id for r in results] == ["0-0", "0-1", "0-2"]
    assert results[1].status == "invalid_input" and "could not build" in results[1].error
    for r in (results[0], results[2]):
        assert r.error is None and r.converged
        assert r.settings["fmax"] == 0.1 and r.settings["max_atoms"] == 50
    assert results[0].final_energy_per_atom_eV < results[0].initial_energy_per_atom_eV


def test_cli_relax_unknown_relaxer(tmp_path: Path) -> None:
    diamond().to(filename=str(tmp_path / "d.cif"))
    result = CliRunner().invoke(app, ["relax", str(tmp_path / "d.cif"), "--relaxer", "xtb"])
    assert result.exit_code == 1
    assert "unknown relaxer" in result.output
