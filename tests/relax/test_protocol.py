"""The relaxation protocol: per-dataset defaults, overrides, the settings hash, enthalpy, inputs.

Fast tests only (no CHGNet forward pass, no pw.x run): written input files and the batched FIRE
with an analytic energy model whose minimum under pressure is known in closed form.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from relax.base import RelaxResult
from relax.batched_fire import Evaluation, batched_fire
from relax.protocol import (
    EV_PER_GPA_A3,
    RelaxProtocol,
    dataset_protocol,
    parse_assignments,
    resolve_protocol,
)
from relax.prototypes import diamond, graphite


def test_dataset_defaults_and_overrides() -> None:
    carbon = resolve_protocol("carbon_24")
    assert carbon.pressure_gpa == 10.0 and carbon.dispersion == "d3bj"
    for name in ("perov_5", "mp_20", "mpts_52", None):
        p = resolve_protocol(name)
        assert p.pressure_gpa == 0.0 and p.dispersion == "none"
    over = resolve_protocol({"dataset": "carbon_24", "pressure_gpa": 0, "dispersion": "none"})
    assert over.pressure_gpa == 0.0 and over.dispersion == "none"
    assert over.kspacing == carbon.kspacing  # the rest stays the dataset's
    assert resolve_protocol({"dispersion": "D3(BJ)"}).dispersion == "d3bj"
    with pytest.raises(ValueError, match="no relaxation protocol for dataset 'qm9'"):
        resolve_protocol("qm9")
    with pytest.raises(ValueError, match="unknown protocol field"):
        resolve_protocol({"presure_gpa": 3})
    with pytest.raises(ValueError, match="invalid protocol override"):
        resolve_protocol({"kspacing": -0.2})
    assert parse_assignments(["pressure-gpa=10", "dispersion=d3bj", "relax_cell=false"]) == {
        "pressure_gpa": 10,
        "dispersion": "d3bj",
        "relax_cell": False,
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_assignments(["pressure_gpa"])


def test_pressure_units() -> None:
    p = RelaxProtocol(pressure_gpa=10.0)
    assert p.pressure_kbar == 100.0  # pw.x press, VASP PSTRESS
    assert p.pressure_ev_per_a3 == pytest.approx(0.0624151, rel=1e-5)  # 10 / 160.2177


def test_enthalpy_of_a_result_with_known_pv() -> None:
    """H = E + pV by hand: diamond a = 3.567 Å, V = a³/4 = 11.3462 Å³ (2 atoms), p = 10 GPa.

    pV = 10 GPa * 11.3462 Å³ = 113.462e-21 J = 0.708171 eV (1 eV = 1.602177e-19 J).
    """
    cell = diamond(3.567)
    small = diamond(3.5)  # input volume a³/4 = 10.71875 Å³ -> pV = 0.669012 eV
    res = RelaxResult(
        structure_id="d",
        relaxer="test",
        initial_energy_eV=-17.0,
        final_energy_eV=-18.0,
        final_structure=cell.as_dict(),
    ).with_enthalpy(10.0, small)
    assert res.pressure_gpa == 10.0
    assert res.final_enthalpy_eV == pytest.approx(-18.0 + 0.708171, abs=2e-6)
    assert res.final_enthalpy_per_atom_eV == pytest.approx((-18.0 + 0.708171) / 2, abs=1e-6)
    assert res.initial_enthalpy_eV == pytest.approx(-17.0 + 0.669012, abs=2e-6)
    assert res.final_volume_per_atom_A3 == pytest.approx(5.67308, abs=1e-5)
    zero = res.with_enthalpy(0.0, small)
    assert zero.final_enthalpy_eV == -18.0 and zero.initial_enthalpy_eV == -17.0


def test_two_protocols_give_two_settings_hashes(pseudo_dir: Path) -> None:
    from relax.chgnet_relaxer import CHGNetRelaxer
    from relax.espresso_relaxer import EspressoRelaxer
    from relax.vasp import VaspRelaxer

    for make in (
        lambda p: CHGNetRelaxer(protocol=p),
        lambda p: EspressoRelaxer(protocol=p, pseudo_dir=pseudo_dir),
        lambda p: VaspRelaxer(protocol=p, progress=False),
    ):
        at0, at10 = make({"pressure_gpa": 0}), make({"pressure_gpa": 10})
        d3 = make({"dispersion": "d3bj"})
        hashes = {at0.settings_hash, at10.settings_hash, d3.settings_hash}
        assert len(hashes) == 3
        assert at10.settings()["protocol"]["pressure_gpa"] == 10.0
        # the protocol's name is a label: the same physics under two names is one hash
        renamed = make(RelaxProtocol(name="mine", pressure_gpa=10))
        assert renamed.settings_hash == at10.settings_hash


def test_two_stage_passes_the_protocol_to_both_stages(pseudo_dir: Path) -> None:
    from relax import get_relaxer

    relaxer = get_relaxer(
        "chgnet+espresso", protocol="carbon_24", espresso={"pseudo_dir": str(pseudo_dir)}
    )
    assert relaxer.pre.protocol.pressure_gpa == 10.0 == relaxer.final.protocol.pressure_gpa
    assert relaxer.protocol.dispersion == "d3bj"
    settings = relaxer.settings()
    assert settings["pre"]["protocol"] == settings["final"]["protocol"]
    assert settings["final"]["protocol"]["pressure_gpa"] == 10.0


def test_pressure_and_d3_reach_the_pw_input(pseudo_dir: Path, tmp_path: Path) -> None:
    from relax.espresso_relaxer import EspressoRelaxer

    relaxer = EspressoRelaxer(protocol="carbon_24", pseudo_dir=pseudo_dir, kspacing=0.5)
    text = relaxer.write_input(graphite(), tmp_path / "g", "vc-relax").read_text()
    assert re.search(r"calculation\s*=\s*'vc-relax'", text)
    assert re.search(r"\bpress\s*=\s*100(\.0*)?\b", text)  # 10 GPa = 100 kbar
    assert re.search(r"cell_dofree\s*=\s*'all'", text)
    assert re.search(r"vdw_corr\s*=\s*'dft-d3'", text)
    assert re.search(r"dftd3_version\s*=\s*4", text)
    assert re.search(r"dftd3_threebody\s*=\s*\.false\.", text)
    plain = EspressoRelaxer(protocol="perov_5", pseudo_dir=pseudo_dir)
    text0 = plain.write_input(graphite(), tmp_path / "g0", "vc-relax").read_text()
    assert re.search(r"\bpress\s*=\s*0(\.0*)?\b", text0) and "vdw_corr" not in text0
    fixed = EspressoRelaxer(protocol={"relax_cell": False}, pseudo_dir=pseudo_dir)
    assert fixed.relax_calculation == "relax"
    # an explicit keyword wins over the protocol and is recorded as the protocol's value
    explicit = EspressoRelaxer(protocol="carbon_24", kspacing=0.44, pseudo_dir=pseudo_dir)
    assert explicit.settings()["protocol"]["kspacing"] == 0.44


def _incar(protocol: object, structure: Structure, directory: Path) -> dict:
    from pymatgen.io.vasp import Incar

    from relax.vasp import VaspRelaxer

    maker = VaspRelaxer(protocol=protocol, progress=False).maker()
    generator = maker.vasp_maker.relax_maker1.input_set_generator
    generator.get_input_set(structure, potcar_spec=True).write_input(directory)
    return dict(Incar.from_file(directory / "INCAR"))


def test_vasp_incar_has_pstress_and_ivdw(tmp_path: Path) -> None:
    base = _incar(None, graphite(), tmp_path / "base")
    carbon = _incar("carbon_24", graphite(), tmp_path / "carbon")
    assert "PSTRESS" not in base and "IVDW" not in base
    assert carbon["PSTRESS"] == 100.0 and carbon["IVDW"] == 12
    # nothing else of the MP input set changes
    assert {k: v for k, v in carbon.items() if k not in ("PSTRESS", "IVDW")} == base
    fixed = _incar({"relax_cell": False, "spin": "off"}, graphite(), tmp_path / "fixed")
    assert fixed["ISIF"] == 2 and fixed["ISPIN"] == 1 and base["ISIF"] == 3


def _vasp_inputs(directory: Path, **settings: object) -> tuple[dict, str | None]:
    """INCAR (dict) and KPOINTS text (``None`` without one) of VASP relax 1 for graphite."""
    from pymatgen.io.vasp import Incar

    from relax.vasp import VaspRelaxer

    maker = VaspRelaxer(progress=False, **settings).maker()
    generator = maker.vasp_maker.relax_maker1.input_set_generator
    generator.get_input_set(graphite(), potcar_spec=True).write_input(directory)
    kpoints = directory / "KPOINTS"
    return dict(Incar.from_file(directory / "INCAR")), (
        kpoints.read_text() if kpoints.exists() else None
    )


def test_vasp_ignores_the_protocol_grid_and_takes_user_kspacing(tmp_path: Path) -> None:
    """docs/vasp.md: the protocol's k-spacing, cutoffs, smearing and DFT force threshold are
    pw.x's and leave the VASP inputs as they are; ``KSPACING`` (and ``EDIFFG``) in
    ``user_incar_settings`` reach the INCAR and the KPOINTS file is gone."""
    carbon = _vasp_inputs(tmp_path / "carbon", protocol="carbon_24")
    pw_fields = {"kspacing": 0.5, "relax_kspacing": 0.6, "ecutwfc": 80.0, "ecutrho": 640.0}
    pw_fields |= {"smearing": "gaussian", "degauss": 0.05, "dft_fmax": 0.01}
    coarse = _vasp_inputs(tmp_path / "pw", protocol={"dataset": "carbon_24", **pw_fields})
    assert coarse == carbon and carbon[1] is not None  # the input set's own KPOINTS
    incar, kpoints = _vasp_inputs(
        tmp_path / "user",
        protocol="carbon_24",
        user_incar_settings={"KSPACING": 0.2, "EDIFFG": -0.0257},
    )
    assert kpoints is None
    assert incar["KSPACING"] == 0.2 and incar["EDIFFG"] == -0.0257
    assert incar["PSTRESS"] == 100.0 and incar["IVDW"] == 12  # the protocol's still there


def test_in_flow_prerelax_refuses_d3() -> None:
    from relax.vasp import VaspRelaxer

    with pytest.raises(ValueError, match="chgnet\\+vasp"):
        VaspRelaxer(protocol="carbon_24", prerelax="chgnet", progress=False)


def test_batched_fire_under_pressure_reaches_the_analytic_volume() -> None:
    """Energy E = K (V - V0)² / (2 V0): stress σ = K (V - V0)/V0 · I (ASE sign), so the
    enthalpy minimum under p is V = V0 (1 - p/K). K = 1 eV/Å³ (160 GPa), p = 10 GPa."""
    k_mod, v0 = 1.0, 40.0
    p = 10.0 * EV_PER_GPA_A3

    def evaluate(idx, carts, cells):
        out = []
        for pos, cell in zip(carts, cells, strict=True):
            v = abs(np.linalg.det(cell))
            out.append(
                Evaluation(
                    energy=k_mod * (v - v0) ** 2 / (2 * v0),
                    forces=np.zeros((len(pos), 3)),
                    stress=k_mod * (v - v0) / v0 * np.eye(3),
                )
            )
        return out

    cell = np.diag([3.42, 3.42, 3.42])  # V = 40.0 Å³
    pos = [np.zeros((1, 3))]
    (at_p,) = batched_fire(pos, [cell], evaluate, fmax=1e-4, max_steps=2000, pressure=p)
    (at_0,) = batched_fire(pos, [cell], evaluate, fmax=1e-4, max_steps=2000)
    assert at_p.converged and at_0.converged
    v_p = abs(np.linalg.det(at_p.cell))
    assert v_p == pytest.approx(v0 * (1 - p / k_mod), rel=1e-4)  # 37.503 Å³
    assert abs(np.linalg.det(at_0.cell)) == pytest.approx(v0, rel=1e-4)
    assert np.allclose(at_p.final.stress, -p * np.eye(3), atol=1e-4)


def test_converged_settings_from_user_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DFTLOOP_CONVERGED_DIR", str(tmp_path))
    (tmp_path / "perov_5.json").write_text(
        json.dumps({"converged": {"kspacing": 0.21, "ecutwfc": 60.0, "ecutrho": 480.0}})
    )
    p = dataset_protocol("perov_5")
    assert (p.kspacing, p.ecutwfc, p.ecutrho) == (0.21, 60.0, 480.0)
    assert p.source == "user:perov_5.json"
    (tmp_path / "mp_20.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        dataset_protocol("mp_20")


def test_packaged_carbon_24_default_is_used(tmp_path: Path, monkeypatch) -> None:
    from relax.protocol import PACKAGED_CONVERGED_DIR

    monkeypatch.setenv("DFTLOOP_CONVERGED_DIR", str(tmp_path))  # no user file
    shipped = json.loads((PACKAGED_CONVERGED_DIR / "carbon_24.json").read_text())["converged"]
    p = dataset_protocol("carbon_24")
    assert p.kspacing == shipped["kspacing"] and p.source == "package:carbon_24.json"
    assert p.kspacing < 0.5  # tighter than the old experiment default
    assert p.pressure_gpa == 10.0 and p.dispersion == "d3bj"  # the dataset's own fields stay


def test_cell_lattice_helper() -> None:
    from relax.prototypes import interlayer_distance

    assert interlayer_distance(graphite(2.464, 6.70)) == pytest.approx(3.35)
    sheared = Structure(Lattice.from_parameters(2.46, 2.46, 7.0, 90, 80, 120), ["C"], [[0, 0, 0]])
    # the layer spacing is the height of the cell over two, not c / 2:
    # h = c sqrt(1 - cos²α - cos²β - cos²γ + 2 cosα cosβ cosγ) / sin γ, α = 90°
    height = 7.0 * np.sqrt(0.75 - np.cos(np.radians(80)) ** 2) / np.sin(np.radians(120))
    assert interlayer_distance(sheared) == pytest.approx(height / 2, rel=1e-6)


def test_relax_kspacing_is_recorded_only_when_set(pseudo_dir: Path, tmp_path: Path) -> None:
    """carbon_24 relaxes on a coarser grid than its energies; other protocols keep their hash."""
    from relax.espresso_relaxer import EspressoRelaxer

    plain = RelaxProtocol()
    assert "relax_kspacing" not in plain.settings()
    assert RelaxProtocol(relax_kspacing=None).settings() == plain.settings()
    carbon = dataset_protocol("carbon_24")
    assert carbon.relax_kspacing == 0.3 and carbon.kspacing < carbon.relax_kspacing
    assert carbon.settings()["relax_kspacing"] == 0.3
    with pytest.raises(ValueError, match="invalid protocol override"):
        resolve_protocol({"relax_kspacing": 0})
    # the grids pw.x gets: relaxation at relax_kspacing, single points at kspacing
    relaxer = EspressoRelaxer(pseudo_dir=pseudo_dir, protocol="carbon_24")
    cell = graphite(2.464, 6.70)
    relax_in = relaxer.write_input(cell, tmp_path / "relax", "vc-relax").read_text()
    scf_in = relaxer.write_input(cell, tmp_path / "scf", "scf").read_text()
    # N_i = ceil(2*pi*|b_i| / spacing): a = 2.464 A hexagonal -> |b_1| = 2/(sqrt(3) a) = 0.4686
    # 2*pi*0.4686 = 2.944 -> /0.3 = 9.8 -> 10, /0.2 = 14.7 -> 15; c: 2*pi/6.70 = 0.9378
    assert re.search(r"K_POINTS automatic\s*\n\s*10 10 4\s+0 0 0", relax_in)
    assert re.search(r"K_POINTS automatic\s*\n\s*15 15 5\s+0 0 0", scf_in)
    assert relaxer.settings()["energies"].startswith("SCF at kspacing")
    same = EspressoRelaxer(pseudo_dir=pseudo_dir, protocol={"dataset": "carbon_24"}, kspacing=0.3)
    assert "energies" not in same.settings()  # one grid: energies from the relaxation itself
