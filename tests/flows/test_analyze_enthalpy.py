"""At p ≠ 0 the generate-and-relax analysis, the nightly table and its S.U.N. hull and the main job
compare enthalpies per atom (ΔH, H_hull, as the stability experiment and the dataset floor do)
and say so in their headers, artifacts and report lines; at p = 0 they compare energies exactly
as before (ΔE, E_hull)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pymatgen.core import Lattice, Structure

P_GPA = 10.0
EV_PER_A3 = P_GPA / 160.21766208
"""10 GPa in eV/Å³ (1 eV/Å³ = 160.21766208 GPa, the CODATA 2014 value of ASE's units, which
``analysis.enthalpy`` uses too; ``rel=1e-7`` below leaves room for float summation only)."""

A_SAMPLE = {"s0": 4.0, "s1": 4.2}
"""Cubic cell edges (Å) of the two-atom samples."""
A_FF = {"s0": 3.8, "s1": 3.9}
"""Cell edges after the force-field relaxation."""
E_FF = {"s0": (-5.0, -5.2), "s1": (-4.0, -4.1)}
"""Force-field energies per atom (eV) as given and relaxed."""
A_DFT = 3.9
E_DFT = (-4.9, -5.0)
"""DFT relaxation of s0's force-field structure: cell edge (Å), energies per atom (eV)."""


def _cell(a: float) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _h(e_per_atom: float, a: float) -> float:
    """Hand enthalpy per atom: E/N + p V/N, two atoms in an a³ cell."""
    return e_per_atom + EV_PER_A3 * a**3 / 2


def _samples(path: Path) -> str:
    from dftloop_io.samples import SampleRecord, write_chunk, write_index

    chunk = write_chunk(path, 0, [SampleRecord(sid, _cell(a)) for sid, a in A_SAMPLE.items()])
    write_index(
        path, {"model": "diffcsp", "dataset": "carbon_24", "mode": "generate", "chunks": [chunk]}
    )
    return str(path)


def _result(sid: str, a_out: float, energies: tuple[float, float], **kw: Any) -> Any:
    """A relaxation result of a two-atom cell relaxed to edge ``a_out`` (``kw``: more fields)."""
    from relax.base import RelaxResult

    return RelaxResult(
        structure_id=sid,
        relaxer="chgnet",
        initial_energy_eV=2 * energies[0],
        initial_energy_per_atom_eV=energies[0],
        final_energy_eV=2 * energies[1],
        final_energy_per_atom_eV=energies[1],
        final_structure=_cell(a_out).as_dict(),
        converged=True,
        **kw,
    )


def _analyze(tmp_path: Path, p_gpa: float) -> list[dict[str, Any]]:
    """Store force-field (and, for s0, DFT) relaxations at ``p_gpa``; run ``analyze_task``.

    s0's documents carry the relaxer's enthalpies; s1's and the DFT document carry the pressure
    only (older documents), so ``E + pV`` is computed from the structures' volumes.
    """
    from flows.hashing import structure_hash
    from flows.store import Provenance, ResultStore
    from flows.tasks import analyze_task

    sample_dir = _samples(tmp_path / f"samples-{p_gpa:g}")
    ff_hash, dft_hash = f"ff-{p_gpa:g}", f"dft-{p_gpa:g}"
    s0 = _result("s0", A_FF["s0"], E_FF["s0"], settings_hash=ff_hash)
    s0 = s0.with_enthalpy(p_gpa, _cell(A_SAMPLE["s0"]))
    s1 = _result("s1", A_FF["s1"], E_FF["s1"], settings_hash=ff_hash, pressure_gpa=p_gpa)
    dft = _result("s0", A_DFT, E_DFT, settings_hash=dft_hash, pressure_gpa=p_gpa)
    home = str(tmp_path / "home")
    prov = Provenance(model="diffcsp", dataset="carbon_24", relaxer="chgnet")
    with ResultStore(home=home) as store:
        store.put_relaxations(
            [(structure_hash(_cell(A_SAMPLE[s.structure_id])), s) for s in (s0, s1)], prov
        )
        dft_prov = Provenance(model="diffcsp", dataset="carbon_24", relaxer="espresso")
        store.put_relaxations([(structure_hash(_cell(A_FF["s0"])), dft)], dft_prov)
    rows = analyze_task.fn(sample_dir, ff_hash, home, prov.__dict__, dft_hash)
    return sorted(rows, key=lambda r: r["structure_id"])


def test_analyze_task_compares_enthalpies_at_10_gpa(tmp_path: Path) -> None:
    rows = _analyze(tmp_path, P_GPA)
    assert [r["structure_id"] for r in rows] == ["s0", "s1"]
    for row in rows:
        sid = row["structure_id"]
        (e0, e1), a0, a1 = E_FF[sid], A_SAMPLE[sid], A_FF[sid]
        by_hand = 1000 * (_h(e0, a0) - _h(e1, a1))
        assert row["energy_quantity"] == "H" and row["pressure_gpa"] == P_GPA
        assert row["delta_e_mev_per_atom"] == pytest.approx(by_hand, rel=1e-7), sid
        assert abs(row["delta_e_mev_per_atom"] - 1000 * (e0 - e1)) > 100  # not ΔE
    # s0: 1000 (0.2 + p (4.0³ − 3.8³)/2) = 484.86 meV/atom, ΔE would be 200
    assert rows[0]["delta_e_mev_per_atom"] == pytest.approx(484.86, abs=0.01)
    # DFT from s0's force-field structure (3.8 Å) to 3.9 Å: the pV term turns the sign of ΔE
    dft_by_hand = 1000 * (_h(E_DFT[0], A_FF["s0"]) - _h(E_DFT[1], A_DFT))
    assert rows[0]["dft_energy_quantity"] == "H" and rows[0]["dft_pressure_gpa"] == P_GPA
    assert rows[0]["dft_delta_e_mev_per_atom"] == pytest.approx(dft_by_hand, rel=1e-7)
    assert rows[0]["dft_delta_e_mev_per_atom"] == pytest.approx(-38.78, abs=0.01)
    assert "dft_delta_e_mev_per_atom" not in rows[1]


def test_model_rows_and_the_dataset_floor_give_the_same_delta_h(tmp_path: Path) -> None:
    """The same relaxation read as a model's row (``analyze_task``) and as a floor row
    (``dataset_floor_rows``) gives one ΔH: the two rows of a table are comparable."""
    from analysis.stability import dataset_floor_rows

    model = _analyze(tmp_path, P_GPA)[1]
    doc = _result("s1", A_FF["s1"], E_FF["s1"], settings_hash="ff", pressure_gpa=P_GPA)
    [floor] = dataset_floor_rows([("s1", _cell(A_SAMPLE["s1"]))], {"s1": doc.model_dump()})
    assert floor["energy_quantity"] == model["energy_quantity"] == "H"
    assert floor["delta_e_mev_per_atom"] == pytest.approx(model["delta_e_mev_per_atom"], rel=1e-12)


def test_analyze_task_at_zero_pressure_is_the_energy_difference(tmp_path: Path) -> None:
    rows = _analyze(tmp_path, 0.0)
    for row in rows:
        e0, e1 = E_FF[row["structure_id"]]
        assert row["energy_quantity"] == "E" and row["pressure_gpa"] == 0.0
        assert row["delta_e_mev_per_atom"] == 1000.0 * (float(e0) - float(e1))  # exactly
    assert rows[0]["dft_delta_e_mev_per_atom"] == 1000.0 * (E_DFT[0] - E_DFT[1])


def test_dft_stage_takes_the_lowest_enthalpy_first_at_10_gpa(tmp_path: Path) -> None:
    """The DFT stage's structures: lowest final H/N first at p ≠ 0, lowest E/N at p = 0.

    s0 ends at E/N = −5.2 eV in a 3.8 Å cell (H/N = −3.488 eV at 10 GPa), s1 at −5.3 eV in a
    3.9 Å cell (H/N = −3.449 eV): the order by energy and by enthalpy differ."""
    from flows.hashing import structure_hash
    from flows.store import Provenance, ResultStore
    from flows.tasks import relaxed_inputs

    final = {"s0": -5.2, "s1": -5.3}
    assert _h(final["s0"], A_FF["s0"]) < _h(final["s1"], A_FF["s1"])
    items = [(sid, _cell(a)) for sid, a in A_SAMPLE.items()]
    home = str(tmp_path / "home")
    prov = Provenance(model="diffcsp", dataset="carbon_24", relaxer="chgnet")
    for p_gpa, first in ((P_GPA, "s0"), (0.0, "s1")):
        docs = [
            (
                structure_hash(s),
                _result(
                    sid, A_FF[sid], (-5.0, final[sid]), settings_hash=f"ff-{p_gpa:g}"
                ).with_enthalpy(p_gpa, s),
            )
            for sid, s in items
        ]
        with ResultStore(home=home) as store:
            store.put_relaxations(docs, prov)
        picked = relaxed_inputs(items, f"ff-{p_gpa:g}", home, max_structures=1)
        assert [sid for sid, _, _ in picked] == [first], p_gpa


def _header(markdown: str) -> list[str]:
    line = next(ln for ln in markdown.splitlines() if ln.startswith("| model"))
    return [c.strip() for c in line.strip("|").split(" | ")]


@pytest.mark.parametrize(("p_gpa", "symbol"), [(P_GPA, "H"), (0.0, "E")])
def test_nightly_and_main_job_headers_name_the_quantity(
    tmp_path: Path, p_gpa: float, symbol: str
) -> None:
    from analysis.benchmark_table import render_markdown, with_paper
    from analysis.stability import summarize_stability
    from flows.main_job import floor_table, format_report
    from flows.nightly import add_relax_outcome

    rows = _analyze(tmp_path, p_gpa)
    metrics = [m.to_dict() for m in summarize_stability(rows)]
    row: dict[str, Any] = {"model": "dpcdvae", "status": "ok", "notes": {}, "relaxer": "chgnet"}
    add_relax_outcome(row, {"metrics": metrics, "rows": rows})
    assert row["energy_quantity"] == symbol
    other = "E" if symbol == "H" else "H"
    cdvae = {**row, "model": "cdvae", "mean_delta_e_mev_per_atom": 0.0}
    markdown = render_markdown([row, cdvae], "carbon_24", "t")
    header = _header(markdown)
    assert f"Δ{symbol} meV/atom" in header
    assert f"Δ{other} meV/atom" not in header
    assert f"Δ{symbol}(DP-CDVAE) − Δ{symbol}(CDVAE), mean: ours" in markdown
    assert with_paper([row], "carbon_24")[0]["energy_quantity"] == symbol

    head = floor_table("dpcdvae", metrics, None, rows)[0]
    assert f"mean Δ{symbol}" in head and f"median Δ{symbol}" in head
    assert f"Δ{other}" not in head
    # the dataset row alone (a floor at 10 GPa) names the columns too
    floor = {"metrics": [], "rows": [{"energy_quantity": symbol}]}
    assert f"mean Δ{symbol}" in floor_table("dpcdvae", [], floor)[0]

    params = {
        "model": "dpcdvae",
        "dataset": "carbon_24",
        "n": 2,
        "sample_split": "test",
        "sample_steps": 1,
        "relaxer_settings": {},
    }
    result = {"sample_dir": "samples", "stages": [], "metrics": metrics, "rows": rows}
    report = format_report(result, params, 1.0)
    assert f"per structure (Δ{symbol} = {symbol}(sample) − {symbol}(relaxed)" in report
    s0 = next(ln for ln in report.splitlines() if ln.strip().startswith("s0 "))
    assert f"Δ{symbol} {rows[0]['delta_e_mev_per_atom']:9.1f}" in s0
    result["artifacts"] = {"histogram_png": "h.png"}
    report = format_report(result, params, 1.0)
    assert f"\n  Δ{symbol} histogram (PNG)     h.png\n" in report
    assert f"Δ{other} histogram" not in report


@pytest.mark.parametrize(("p_gpa", "symbol"), [(P_GPA, "H"), (0.0, "E")])
def test_relaxation_artifacts_name_the_quantity(
    harness: None, tmp_path: Path, p_gpa: float, symbol: str
) -> None:
    """The per-structure table, the histogram artifact and the PNG's labels say ΔH at 10 GPa."""
    from prefect import flow

    from analysis.stability import summarize_stability
    from flows.artifacts import energy_labels, publish_run_artifacts

    from .conftest import run_artifacts

    rows = _analyze(tmp_path, p_gpa)
    metrics = [m.to_dict() for m in summarize_stability(rows)]

    @flow
    def publish() -> dict[str, str]:
        return publish_run_artifacts("t", metrics, rows, {}, tmp_path / "report")

    state = publish(return_state=True)
    keys = state.result()
    artifacts = run_artifacts(str(state.state_details.flow_run_id))
    table = artifacts[keys["per_structure"]].description
    histogram = artifacts[keys["histogram"]]
    assert table.startswith(f"Per-structure Δ{symbol} (meV/atom, initial − relaxed)")
    assert str(histogram.data).startswith(f"### Δ{symbol} histogram (2 structures)")
    labels = energy_labels(rows)
    assert labels["title"] == f"Δ{symbol}"
    assert labels["xlabel"] == f"Δ{symbol} = {symbol}(initial) − {symbol}(relaxed), meV/atom"
    if symbol == "H":
        assert table.endswith("; ΔH is the enthalpy drop (H = E + pV per atom at 10 GPa)")
        assert histogram.description == (
            "Histogram of the enthalpy drop (H = E + pV per atom at 10 GPa) on relaxation"
        )
    else:
        assert table == "Per-structure ΔE (meV/atom, initial − relaxed), RMSD and ΔV"
        assert histogram.description == "Histogram of the energy drop on relaxation"


SUN_REFS = {0: (6.0, -9.0), 1: (8.0, -9.05)}
"""Hull references (the first two carbon_24 training structures) after relaxation: volume per
atom (Å³) and energy per atom (eV). By energy the hull is reference 1, by enthalpy at 10 GPa
reference 0 (H/N = −8.62551 against −8.55068 eV)."""
SUN_SAMPLES = {"a": (4.5, -8.93), "b": (10.0, -9.10), "c": (5.0, -8.97)}
"""Relaxed samples: volume per atom (Å³), energy per atom (eV). ``a`` is 0.12 eV/atom above the
hull by energy (not stable) but 0.024 below it by enthalpy at 10 GPa; ``b`` is 0.05 below it by
energy and 0.150 above it by enthalpy (not stable); ``c`` is stable both ways (0.08 above by
energy, 0.032 below by enthalpy)."""


def _carbon(v_per_atom: float, shift: float = 0.0) -> Structure:
    """Two carbon atoms in a cubic cell of ``2 v_per_atom`` Å³ (``shift``: a distinct input)."""
    a = (2 * v_per_atom) ** (1 / 3)
    return Structure(Lattice.cubic(a), ["C", "C"], [[0, 0, 0], [0.5, 0.5, 0.5 + shift]])


def _carbon_result(sid: str, v_per_atom: float, e_per_atom: float, settings_hash: str) -> Any:
    """A relaxation ending in :func:`_carbon` ``(v_per_atom)`` at ``e_per_atom`` eV/atom."""
    from relax.base import RelaxResult

    return RelaxResult(
        structure_id=sid,
        relaxer="chgnet",
        settings_hash=settings_hash,
        final_structure=_carbon(v_per_atom).as_dict(),
        final_energy_eV=2 * e_per_atom,
        final_energy_per_atom_eV=e_per_atom,
        converged=True,
    )


def _sun_row(tmp_path: Path, p_gpa: float) -> dict[str, Any]:
    """Store hand-made relaxations of the hull references and three samples at ``p_gpa``
    (references with the relaxer's enthalpies, samples with the pressure only), then run the
    nightly S.U.N. step on them (nothing is relaxed: every document is in the store)."""
    from prefect import flow

    from analysis.sun import NoveltyReference
    from dftloop_io.samples import SampleRecord, write_chunk, write_index
    from flows.hashing import structure_hash
    from flows.nightly import _sun_stage
    from flows.protocol_settings import stage_settings
    from flows.store import Provenance, ResultStore
    from flows.tasks import describe_relaxer
    from generators.data import load_split

    from .conftest import TINY_CHGNET

    [settings] = stage_settings("carbon_24", {"pressure_gpa": p_gpa}, TINY_CHGNET)
    settings_hash = describe_relaxer("chgnet", settings)["settings_hash"]
    refs = load_split("carbon_24", "train", limit=len(SUN_REFS), progress=False).records
    inputs = {sid: _carbon(7.0, 0.01 * (i + 1)) for i, sid in enumerate(SUN_SAMPLES)}
    sample_dir = tmp_path / f"sun-samples-{p_gpa:g}"
    chunk = write_chunk(sample_dir, 0, [SampleRecord(sid, s) for sid, s in inputs.items()])
    index = {"model": "cdvae", "dataset": "carbon_24", "mode": "generate", "chunks": [chunk]}
    write_index(sample_dir, index)
    docs = [
        (
            structure_hash(refs[i].structure),
            _carbon_result(refs[i].material_id, v, e, settings_hash).with_enthalpy(p_gpa, None),
        )
        for i, (v, e) in SUN_REFS.items()
    ]
    for sid, (v, e) in SUN_SAMPLES.items():
        doc = _carbon_result(sid, v, e, settings_hash).model_copy(update={"pressure_gpa": p_gpa})
        docs.append((structure_hash(inputs[sid]), doc))
    home = str(tmp_path / "home")
    prov = Provenance(model="cdvae", dataset="carbon_24", relaxer="chgnet")
    with ResultStore(home=home) as store:
        store.put_relaxations(docs, prov)
    train = NoveltyReference([r.structure for r in refs], ids=[r.material_id for r in refs])

    @flow
    def sun() -> dict[str, Any]:
        row: dict[str, Any] = {"model": "cdvae", "dataset": "carbon_24", "notes": {}}
        spec = ("chgnet", settings, None)
        _sun_stage(row, str(sample_dir), spec, home, len(SUN_REFS), {"carbon_24": train})
        return row

    return sun()


def test_nightly_sun_compares_enthalpies_at_10_gpa(harness: None, tmp_path: Path) -> None:
    """At 10 GPa the S.U.N. hull and the samples' distances to it are enthalpies per atom: the
    reference on the hull changes, and a sample above the hull by energy is stable by enthalpy
    and the other way round."""
    row = _sun_row(tmp_path, P_GPA)
    hull = min(_h(e, (2 * v) ** (1 / 3)) for v, e in SUN_REFS.values())
    assert hull == pytest.approx(_h(SUN_REFS[0][1], 12 ** (1 / 3)))  # not the energy's minimum
    by_hand = {sid: _h(e, (2 * v) ** (1 / 3)) - hull for sid, (v, e) in SUN_SAMPLES.items()}
    assert by_hand == pytest.approx({"a": -0.02362, "b": 0.14966, "c": -0.03242}, abs=1e-5)
    assert row["sun_energy_quantity"] == "H"
    assert row["sun_above_hull_eV"] == pytest.approx(by_hand, rel=1e-6)
    # stable (< 0.1 eV/atom) and strictly stable (<= 0): a and c, not b
    assert row["sun"]["n"] == 3 and row["sun"]["n_stable"] == 2
    assert row["sun"]["n_stable_strict"] == 2
    assert (
        "stable H_hull < 0.1 eV/atom (enthalpy H = E + pV per atom at 10 GPa) against 2 "
        in (row["notes"]["sun_rate"])
    )
    assert "(0 outside its chemical system, 0 without a relaxed energy" in row["notes"]["sun_rate"]


def test_nightly_sun_at_zero_pressure_compares_energies(harness: None, tmp_path: Path) -> None:
    row = _sun_row(tmp_path, 0.0)
    hull = min(e for _, e in SUN_REFS.values())
    by_hand = {sid: e - hull for sid, (_, e) in SUN_SAMPLES.items()}
    assert by_hand == pytest.approx({"a": 0.12, "b": -0.05, "c": 0.08})
    assert row["sun_energy_quantity"] == "E"
    assert row["sun_above_hull_eV"] == pytest.approx(by_hand, abs=1e-9)
    # stable: b and c; strictly stable: b only
    assert row["sun"]["n_stable"] == 2 and row["sun"]["n_stable_strict"] == 1
    assert (
        "stable E_hull < 0.1 eV/atom against 2 carbon_24 training structures"
        in (row["notes"]["sun_rate"])
    )
