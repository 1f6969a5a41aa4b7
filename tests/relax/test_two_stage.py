"""chgnet+espresso: CHGNet pre-relax, DFT single point of the input, DFT relax (real pw.x)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from relax import RelaxResult, get_relaxer

from .pw_x_requirement import needs_pw

A_DIAMOND = 3.57


def diamond(a: float) -> Structure:
    h = a / 2
    return Structure(
        Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["C", "C"], [[0, 0, 0], [0.26, 0.25, 0.24]]
    )


@needs_pw
def test_chgnet_then_espresso(tmp_path: Path, pseudo_dir: Path) -> None:
    espresso = {"kspacing": 0.5, "n_procs": 1, "pseudo_dir": pseudo_dir, "scratch_dir": tmp_path}
    relaxer = get_relaxer("chgnet+espresso", chgnet={"fmax": 0.05}, espresso=espresso)
    assert relaxer.name == "chgnet+espresso"
    start = diamond(3.75)
    overlap = Structure(Lattice.cubic(4.0), ["C", "C"], [[0, 0, 0], [0.01, 0, 0]])
    results = relaxer.relax([("strained", start), ("overlap", overlap)])
    res, bad = results
    assert bad.status == "invalid_input" and bad.stages == []

    assert res.error is None, res.error
    assert res.relaxer == "chgnet+espresso" and res.dft_available is True
    assert [s.relaxer for s in res.stages] == ["chgnet", "espresso"]
    pre, single = res.stages
    assert pre.converged and pre.extra["mode"] == "batched"
    # the initial energy is the DFT energy of the structure as given, not CHGNet's
    (reference,) = get_relaxer("espresso", **espresso).single_point([("ref", start)])
    assert res.initial_energy_eV == pytest.approx(reference.final_energy_eV, abs=1e-5)
    assert single.final_energy_eV == res.initial_energy_eV
    assert res.initial_energy_per_atom_eV < -240  # DFT (pseudopotential) scale, not CHGNet's -9
    # the DFT relax started from the CHGNet structure, so its own start energy is lower
    assert res.extra["dft_relax_start_energy_eV"] < res.initial_energy_eV
    assert res.final_energy_eV <= res.extra["dft_relax_start_energy_eV"] + 1e-4
    a_conv = res.structure().lattice.a * math.sqrt(2)
    assert abs(a_conv - A_DIAMOND) / A_DIAMOND < 0.01
    assert res.converged
    again = RelaxResult.model_validate_json(res.model_dump_json())
    assert again.stages[0].final_energy_eV == pre.final_energy_eV


def test_dft_unavailable_is_explicit(pseudo_dir: Path) -> None:
    relaxer = get_relaxer(
        "chgnet+espresso",
        chgnet={"fmax": 0.1, "max_steps": 50},
        espresso={"pw_command": "/nonexistent/pw.x", "pseudo_dir": pseudo_dir},
    )
    (res,) = relaxer.relax([("d", diamond(3.6))])
    assert res.status == "unavailable" and res.dft_available is False
    assert "not available" in res.error
    assert res.final_energy_eV is None  # no DFT energy is invented
    assert len(res.stages) == 1 and res.stages[0].relaxer == "chgnet"
    assert res.stages[0].error is None and res.stages[0].final_energy_eV is not None
