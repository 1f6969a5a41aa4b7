from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from relax import Relaxer, RelaxResult, check_structure, get_relaxer, settings_hash
from relax.registry import available_relaxers


def diamond(a: float = 3.57) -> Structure:
    return Structure(Lattice.cubic(a), ["C", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])


class EchoRelaxer(Relaxer):
    """Returns the input unchanged; raises for ids starting with 'boom' to test isolation."""

    name = "echo"

    def settings(self) -> dict:
        return {"kind": "echo", **self.check_settings()}

    def supported_elements(self) -> frozenset[str]:
        return frozenset({"C", "Si"})

    def _relax_valid(self, items):
        out = []
        for sid, s in items:
            if sid.startswith("boom"):
                raise RuntimeError("exploded")
            out.append(
                RelaxResult(
                    structure_id=sid,
                    relaxer=self.name,
                    settings=self.settings(),
                    settings_hash=self.settings_hash,
                    final_structure=s.as_dict(),
                    final_energy_eV=-1.0 * len(s),
                    converged=True,
                )
            )
        return out


def test_check_structure_reasons() -> None:
    assert check_structure(diamond()) is None
    assert "no structure" in check_structure(None)
    nan = diamond()
    nan.lattice = Lattice(np.full((3, 3), np.nan))
    assert "NaN" in check_structure(nan)
    overlap = Structure(Lattice.cubic(4), ["C", "C"], [[0, 0, 0], [0.02, 0, 0]])
    assert "overlap" in check_structure(overlap)
    tiny = Structure(Lattice.cubic(0.4), ["C"], [[0, 0, 0]])
    assert "overlap" in check_structure(tiny)  # an atom against its own periodic image
    flat = Structure(Lattice([[1, 0, 0], [0, 1, 0], [1, 1, 0]]), ["C"], [[0, 0, 0]])
    assert "volume" in check_structure(flat)
    assert "more than the limit" in check_structure(diamond(), max_atoms=1)
    assert "not supported" in check_structure(diamond(), supported_elements=frozenset({"Si"}))


def test_settings_hash_is_canonical() -> None:
    assert settings_hash({"a": 1, "b": [1, 2]}) == settings_hash({"b": [1, 2], "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})
    assert len(settings_hash({})) == 64


def test_relax_reports_bad_items_and_continues() -> None:
    relaxer = EchoRelaxer()
    nan = diamond()
    nan.replace(0, "C", coords=[math.nan, 0, 0])
    items = [
        ("good-1", diamond()),
        ("nan", nan),
        ("silicon-free", Structure(Lattice.cubic(3), ["Fe"], [[0, 0, 0]])),
        ("boom", diamond()),
        ("none", None),
        ("good-2", diamond(3.6)),
    ]
    results = relaxer.relax(items)
    assert [r.structure_id for r in results] == [sid for sid, _ in items]
    by_id = {r.structure_id: r for r in results}
    assert by_id["good-1"].ok and by_id["good-2"].ok
    assert by_id["nan"].status == "invalid_input" and "NaN" in by_id["nan"].error
    assert by_id["nan"].error.startswith("nan:")
    assert "Fe" in by_id["silicon-free"].error
    assert by_id["boom"].status == "failed" and "exploded" in by_id["boom"].error
    assert by_id["none"].status == "invalid_input"
    # JSON round trip
    for r in results:
        again = RelaxResult.model_validate(json.loads(r.model_dump_json()))
        assert again == r
    assert by_id["good-1"].settings_hash == relaxer.settings_hash


def test_sheared_near_zero_volume_cell_is_rejected_before_the_neighbour_search() -> None:
    # volume 9e-3 A^3 for one atom passes the zero-volume test; pymatgen's neighbour search on
    # this cell runs for minutes. The packing bound rejects it at once, naming the reason.
    sheared = Structure(Lattice([[3, 0, 0], [1e3, 1e-3, 0], [0, 0, 3]]), ["C"], [[0, 0, 0]])
    reason = check_structure(sheared)
    assert "overlap" in reason and "per atom" in reason
    long_cell = Structure(Lattice([[1e5, 0, 0], [0, 3, 0], [0, 0, 3]]), ["C"], [[0, 0, 0]])
    assert check_structure(long_cell) is None  # sparse but legal: only the relaxer can judge


def test_collapsed_cell_is_rejected_even_when_no_atoms_overlap() -> None:
    # a ContinuouSP sample (LiSiNO2 in a 1.09 x 1.31 x 2.01 Å cell, 0.6 Å^3 per atom, closest
    # pair 0.51 Å) passed the overlap checks and held CHGNet for over 15 minutes. One atom in a
    # 0.85 Å cube: 0.61 Å^3 per atom, closest distance 0.85 Å (its own image).
    collapsed = Structure(Lattice.cubic(0.85), ["Li"], [[0, 0, 0]])
    reason = check_structure(collapsed)
    assert reason is not None and reason.startswith("cell collapsed") and "0.614" in reason
    # a two-atom cell at 2.2 Å^3 per atom (2.6x denser than diamond at 0 GPa) still passes
    dense = diamond(a=(2 * 2.2) ** (1 / 3))
    assert dense.volume / len(dense) == pytest.approx(2.2)
    assert check_structure(dense) is None


class MemoryHungryCheckRelaxer(EchoRelaxer):
    """The input check of structures with a lattice vector over 1e4 A runs out of memory."""

    def check(self, structure):
        if structure is not None and structure.lattice.abc[0] > 1e4:
            raise MemoryError("cannot allocate the neighbour-search cell list")
        return super().check(structure)


def test_an_input_check_that_raises_fails_only_its_structure() -> None:
    sheared = Structure(Lattice([[3, 0, 0], [1e3, 1e-3, 0], [0, 0, 3]]), ["C"], [[0, 0, 0]])
    huge = Structure(Lattice([[1e5, 0, 0], [0, 3, 0], [0, 0, 3]]), ["C"], [[0, 0, 0]])
    items = [("good", diamond()), ("huge", huge), ("sheared", sheared), ("good-2", diamond(3.6))]
    results = MemoryHungryCheckRelaxer().relax(items)
    assert [r.structure_id for r in results] == [sid for sid, _ in items]
    by_id = {r.structure_id: r for r in results}
    assert by_id["good"].ok and by_id["good-2"].ok
    assert by_id["huge"].status == "invalid_input"
    assert by_id["huge"].error.startswith("huge:") and "MemoryError" in by_id["huge"].error
    assert by_id["sheared"].status == "invalid_input" and "overlap" in by_id["sheared"].error


def test_registry_names_and_errors() -> None:
    assert set(available_relaxers()) >= {
        "chgnet",
        "espresso",
        "vasp",
        "chgnet+espresso",
        "chgnet+vasp",
    }
    with pytest.raises(ValueError, match="unknown relaxer"):
        get_relaxer("gaussian")
