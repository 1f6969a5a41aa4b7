"""The convergence search of ``dftloop dft converge`` with a model energy function (no pw.x).

The model gives each structure an energy per atom whose error decays with the k-spacing and
the cutoff in a known way, so the setting the search must choose is computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from relax.convergence import converge_dft
from relax.prototypes import diamond, graphite, lonsdaleite


def _model(calls: list) -> object:
    """E_i = base_i + err_i(k) + 10 meV · (45 / ecutwfc)^6 · scale_i, per atom, eV.

    k errors (meV/atom) of graphite: 0.5 -> 40, 0.4 -> 16, 0.3 -> 4, 0.25 -> 1.5, 0.2 -> 0.4,
    0.15 -> 0.1; diamond and lonsdaleite: a tenth of that. The k part of graphite − diamond is
    36, 14.4, 3.6, 1.35, 0.36, 0.09 meV/atom: 0.25 is within 1 meV of 0.2 (0.99) but not of 0.15
    (1.26), so 0.2 is the coarsest spacing within 1 meV of every finer one (0.27).
    """
    k_err = {0.5: 40.0, 0.4: 16.0, 0.3: 4.0, 0.25: 1.5, 0.2: 0.4, 0.15: 0.1}
    base = {"diamond": -9.0, "graphite": -9.05, "lonsdaleite": -8.97}
    scale = {"diamond": 1.0, "graphite": 1.3, "lonsdaleite": 1.05}

    def energies(items, overrides):
        calls.append(dict(overrides))
        out = {}
        for sid, _ in items:
            k = k_err[round(overrides["kspacing"], 3)] * (1.0 if sid == "graphite" else 0.1)
            cut = 10.0 * (45.0 / overrides["ecutwfc"]) ** 6 * scale[sid]
            out[sid] = base[sid] + (k + cut) / 1000.0
        return out

    return energies


ITEMS = [("diamond", diamond()), ("graphite", graphite()), ("lonsdaleite", lonsdaleite())]


def test_converge_picks_the_hand_computed_setting(tmp_path: Path) -> None:
    calls: list = []
    result = converge_dft(
        ITEMS,
        dataset="carbon_24",
        protocol="carbon_24",
        energies=_model(calls),
        ecutwfc=45.0,
        ecutrho=360.0,
        log=lambda line: None,
    )
    assert result.converged["kspacing"] == 0.2 and result.converged["kspacing_converged"]
    # cutoff: graphite − diamond changes by 0.3·10·(1 - (45/54)^6) = 2.0 meV from 45 to 54 Ry,
    # 0.3·10·((45/54)^6 - (45/63)^6) = 0.61 meV from 54 to 63 Ry: 54 Ry is kept, dual kept
    assert result.converged["ecutwfc"] == pytest.approx(54.0)
    assert result.converged["ecutrho"] == pytest.approx(432.0)
    assert result.converged["cutoff_converged"]
    # every spacing runs; the cutoff scan at 0.2 reuses the 45 Ry point
    assert [c["kspacing"] for c in calls] == [0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.2, 0.2]
    assert len(calls) == 6 + 2
    point = result.kpoint_scan[3]
    assert point.differences_meV["graphite"] == pytest.approx(-50.0 + 1.5 - 0.15 + 3.0, abs=1e-6)
    path = result.write(tmp_path / "carbon_24.json")
    assert json.loads(path.read_text())["converged"]["kspacing"] == 0.2
    assert "graphite − diamond" in result.markdown()


def test_dft_show_cli_applies_overrides() -> None:
    out = CliRunner().invoke(
        app, ["dft", "show", "--dataset", "carbon_24", "--protocol", "pressure_gpa=0"]
    )
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["pressure_gpa"] == 0 and shown["dispersion"] == "d3bj"
    bad = CliRunner().invoke(app, ["dft", "show", "--dataset", "nope"])
    assert bad.exit_code == 1 and "no relaxation protocol for dataset 'nope'" in bad.output


def test_an_interrupted_study_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "carbon_24.partial.json"
    calls: list = []
    model = _model(calls)

    def dies_after_three(items, overrides):
        if len(calls) == 3:
            raise KeyboardInterrupt
        return model(items, overrides)

    kwargs = {"dataset": "carbon_24", "protocol": "carbon_24", "ecutwfc": 45.0, "ecutrho": 360.0}
    with pytest.raises(KeyboardInterrupt):
        converge_dft(ITEMS, energies=dies_after_three, checkpoint=checkpoint, log=print, **kwargs)
    saved = json.loads(checkpoint.read_text())
    assert [p["kspacing"] for p in saved["kpoint_scan"]] == [0.5, 0.4, 0.3]
    again: list = []
    result = converge_dft(ITEMS, energies=_model(again), checkpoint=checkpoint, log=print, **kwargs)
    # the three finished points are not recomputed; the outcome equals an uninterrupted run
    assert [c["kspacing"] for c in again][:3] == [0.25, 0.2, 0.15] and len(again) == 8 - 3
    assert result.converged["kspacing"] == 0.2 and result.converged["ecutwfc"] == 54.0
    fresh: list = []
    other = converge_dft(
        ITEMS[:2], energies=_model(fresh), checkpoint=checkpoint, log=print, **kwargs
    )  # another set of structures: nothing of the checkpoint is reused
    assert fresh[0]["kspacing"] == 0.5 and len(fresh) == 8
    assert other.converged["kspacing"] == 0.2
