"""Quantum ESPRESSO relaxer with the real pw.x on 2-atom cells (low k-density to stay quick)."""

from __future__ import annotations

import math
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from ase.units import create_units
from pymatgen.core import Lattice, Structure

from relax import get_relaxer
from relax.espresso_params import PseudoLibrary, kpoint_grid
from relax.espresso_profile import processes_in
from relax.espresso_relaxer import EspressoRelaxer

from .pw_x_requirement import needs_pw

pytestmark = needs_pw

A_DIAMOND = 3.57
QE_RY = create_units("2006")["Ry"]
FAST = {"kspacing": 0.5, "n_procs": 1}  # 7x7x7 k for the 2-atom diamond cell


def diamond(a: float = A_DIAMOND) -> Structure:
    h = a / 2
    return Structure(
        Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["C", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )


@pytest.fixture
def relaxer(tmp_path: Path, pseudo_dir: Path):
    def make(**kwargs) -> EspressoRelaxer:
        opts = {**FAST, "pseudo_dir": pseudo_dir, "scratch_dir": tmp_path / "scratch", **kwargs}
        return EspressoRelaxer(**opts)

    return make


def _total_energy_ry(text: str) -> float:
    return float(re.findall(r"!\s+total energy\s+=\s+(-?\d+\.\d+) Ry", text)[-1])


def test_parameters_cutoffs_kpoints_spin(pseudo_dir: Path, tmp_path: Path) -> None:
    library = PseudoLibrary.load(pseudo_dir)
    quartz_like = Structure(
        Lattice.cubic(5.0), ["Si", "O", "O"], [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]]
    )
    assert library.cutoffs(quartz_like) == (50.0, 400.0)  # O: 50 / 400, Si: 30 / 240
    assert library.cutoffs(diamond()) == (45.0, 360.0)
    # N_i = ceil(2*pi/a / kspacing): 2*pi/5 = 1.2566 -> /0.3 = 4.19 -> 5
    assert kpoint_grid(quartz_like, 0.3) == (5, 5, 5)
    assert kpoint_grid(diamond(), 0.3) == (11, 11, 11)
    assert kpoint_grid(Structure(Lattice.tetragonal(3.0, 30.0), ["C"], [[0, 0, 0]]), 0.3) == (
        7,
        7,
        1,
    )
    iron = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    relaxer = EspressoRelaxer(pseudo_dir=pseudo_dir, kspacing=0.3)
    text = relaxer.write_input(iron, tmp_path / "fe", "scf").read_text()
    assert re.search(r"nspin\s*=\s*2", text)
    assert re.search(r"starting_magnetization\(1\)\s*=\s*0\.5", text)
    assert re.search(r"smearing\s*=\s*'mv'", text)
    assert re.search(r"K_POINTS automatic\s*\n\s*8 8 8\s+0 0 0", text)  # ceil(2*pi/2.87/0.3)
    dia_text = relaxer.write_input(diamond(), tmp_path / "c", "vc-relax").read_text()
    assert "nspin" not in dia_text
    for key in ("forc_conv_thr", "press_conv_thr", "etot_conv_thr", "cell_dynamics"):
        assert key in dia_text


def test_scf_energy_equals_direct_pw_run(relaxer, tmp_path: Path) -> None:
    r = relaxer(keep_scratch=True)
    (res,) = r.single_point([("diamond", diamond())])
    assert res.error is None and res.converged and res.n_ionic_steps == 0
    assert res.initial_energy_eV == res.final_energy_eV
    assert res.final_energy_per_atom_eV == pytest.approx(-250.80, abs=0.01)
    # run pw.x ourselves on the input file written by the same code
    direct = tmp_path / "direct"
    inp = r.write_input(diamond(), direct, "scf")
    proc = subprocess.run(
        ["pw.x", "-in", inp.name],
        cwd=direct,
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    e_direct_ry = _total_energy_ry(proc.stdout)
    # ASE's espresso reader converts with CODATA 2006 units, as QE does
    assert res.final_energy_eV / QE_RY == pytest.approx(e_direct_ry, abs=1e-7)
    kept = Path(res.extra["scratch_dir"])
    assert (kept / "attempt-1" / "espresso.pwo").is_file()


def test_vc_relax_strained_diamond(relaxer) -> None:
    r = relaxer()
    (res,) = r.relax([("strained", diamond(3.75))])
    assert res.error is None, res.error
    assert res.converged and res.status == "ok"
    a_conv = res.structure().lattice.a * math.sqrt(2)
    assert abs(a_conv - A_DIAMOND) / A_DIAMOND < 0.01
    assert res.final_energy_eV < res.initial_energy_eV - 0.1  # 3.75 A is far from the minimum
    assert res.n_ionic_steps >= 1
    assert np.abs(np.asarray(res.stress)).max() < 0.5  # GPa; press_conv_thr 0.5 kbar
    assert "scratch_dir" not in res.extra  # cleaned on success


def test_scf_recovery_ladder(relaxer, tmp_path: Path) -> None:
    fails = relaxer(electron_maxstep=2, recovery=False, scratch_dir=tmp_path / "norecover")
    (bad,) = fails.single_point([("tiny-maxstep", diamond())])
    assert bad.status == "failed" and "SCF did not converge" in bad.error
    kept = Path(bad.extra["scratch_dir"])
    assert "convergence NOT achieved" in (kept / "attempt-1" / "espresso.pwo").read_text()
    assert (kept / "attempt-1" / "espresso.pwi").is_file()

    recovers = relaxer(electron_maxstep=2)
    (good,) = recovers.single_point([("tiny-maxstep", diamond())])
    assert good.error is None and good.converged
    assert [a["outcome"] for a in good.extra["attempts"]] == ["scf not converged", "ok"]
    assert good.extra["attempts"][1]["overrides"]["electron_maxstep"] == 200
    assert any("attempts" in w for w in good.warnings)


def test_timeout_kills_pw_and_keeps_scratch(relaxer) -> None:
    r = relaxer(timeout_s=1.0, kspacing=0.15)  # a 21^3 k-grid: far longer than 1 s
    (res,) = r.single_point([("slow", diamond())])
    assert res.status == "failed" and "time limit" in res.error
    assert Path(res.extra["scratch_dir"], "attempt-1", "espresso.pwi").is_file()
    assert res.wall_time_s < 30
    time.sleep(0.5)  # SIGKILL is delivered asynchronously
    assert not processes_in(Path(res.extra["scratch_dir"])), "pw.x survived its time limit"


def test_bad_inputs_and_missing_pseudo_reported_per_structure(relaxer) -> None:
    gadolinium = Structure(Lattice.cubic(3.6), ["Gd"], [[0, 0, 0]])  # f-block not in the subset
    overlap = Structure(Lattice.cubic(4.0), ["C", "C"], [[0, 0, 0], [0.01, 0, 0]])
    nan = diamond()
    nan.replace(1, "C", coords=[np.nan, 0.25, 0.25])
    items = [("gd", gadolinium), ("overlap", overlap), ("good", diamond()), ("nan", nan)]
    results = relaxer().single_point(items)
    by_id = {r.structure_id: r for r in results}
    assert "no pseudopotential for Gd" in by_id["gd"].error
    assert by_id["gd"].status == "invalid_input"
    assert "overlap" in by_id["overlap"].error
    assert "NaN" in by_id["nan"].error
    assert by_id["good"].error is None and by_id["good"].final_energy_eV is not None


def test_missing_pw_is_explicit(pseudo_dir: Path) -> None:
    r = get_relaxer("espresso", pw_command="/nonexistent/pw.x", pseudo_dir=pseudo_dir)
    (res,) = r.relax([("d", diamond())])
    assert res.status == "unavailable" and res.dft_available is False
    assert "pw.x not available" in res.error


@pytest.mark.slow
def test_mpirun_two_ranks_with_pools_matches_serial(relaxer) -> None:
    serial = relaxer(n_procs=1).single_point([("d", diamond())])[0]
    parallel_relaxer = relaxer(n_procs=2)
    assert parallel_relaxer.machine.command(pools=2).split()[:3] == ["mpirun", "-np", "2"]
    parallel = parallel_relaxer.single_point([("d", diamond())])[0]
    assert parallel.error is None, parallel.error
    assert parallel.final_energy_eV == pytest.approx(serial.final_energy_eV, abs=1e-5)


def test_relaxation_on_a_coarser_grid_takes_energies_from_single_points(relaxer) -> None:
    """relax_kspacing: the relaxation runs on its own grid, the energies are SCFs at kspacing."""
    r = relaxer(kspacing=0.5, relax_kspacing=0.9)
    assert r.final_single_point
    start = diamond(3.75)
    (res,) = r.relax([("strained", start)])
    assert res.error is None, res.error
    assert res.extra["relax_kpts"] == list(kpoint_grid(start, 0.9)) != res.extra["kpts"]
    # independent SCFs at kspacing 0.5 of the relaxed and of the input structure
    dense = relaxer()
    final_scf, input_scf = dense.single_point([("relaxed", res.structure()), ("input", start)])
    assert res.final_energy_eV == pytest.approx(final_scf.final_energy_eV, abs=1e-6)
    assert res.initial_energy_eV == pytest.approx(input_scf.final_energy_eV, abs=1e-6)
    # the coarse grid's own energies differ (the SCFs were really run on another grid)
    assert abs(res.extra["relax_final_energy_eV"] - res.final_energy_eV) > 1e-3
    a_conv = res.structure().lattice.a * math.sqrt(2)
    assert abs(a_conv - A_DIAMOND) / A_DIAMOND < 0.02
    # in the two-stage relaxer pw.x skips the SCF of its (pre-relaxed) input
    two = get_relaxer("chgnet+espresso", espresso={"pseudo_dir": dense.library.directory})
    assert two.final.initial_single_point is False
