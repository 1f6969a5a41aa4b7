from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

from analysis.construction import check_structure, check_structures, structure_from_params


def test_valid_inputs_in_every_form(quaternary):
    from pymatgen.io.cif import CifWriter

    for item in (quaternary, quaternary.as_dict(), str(CifWriter(quaternary))):
        checked = check_structure(item, "q")
        assert checked.constructed, checked.error
        assert checked.atomic_numbers is not None
        assert sorted(checked.atomic_numbers) == [11, 17, 19, 35]


def test_bad_inputs_are_reported_with_reason_and_the_batch_goes_on(quaternary):
    nan = quaternary.copy()
    nan.replace(0, "Na", coords=[np.nan, 0, 0])
    flat = Structure(Lattice([[3, 0, 0], [0, 3, 0], [0, 0, 0]]), ["Si"], [[0, 0, 0]])
    unknown = quaternary.as_dict()
    unknown["sites"][0]["species"][0]["element"] = "Xx"
    items = [quaternary, "data_broken\n_cell_length_a 3\nloop_\n", nan, flat, unknown, None, 42]
    out = check_structures(items, ids=[f"s{i}" for i in range(len(items))])
    assert [c.constructed for c in out] == [True, False, False, False, False, False, False]
    reasons = [c.error.split(":")[0] if c.error else None for c in out]
    assert reasons[0] is None
    assert reasons[1] in {"malformed_input", "unknown_element"}
    assert reasons[2] == "nan_value"
    assert reasons[3] == "unrealistically_small_lattice"
    assert reasons[4] == "unknown_element"
    assert reasons[5] == "missing_structure"
    assert reasons[6] == "malformed_input"
    assert [c.id for c in out] == [f"s{i}" for i in range(len(items))]


def test_construction_from_parameters_follows_cdvae_rules():
    zs, frac = [14, 14], [[0, 0, 0], [0.25, 0.25, 0.25]]
    ok = structure_from_params([3.8, 3.8, 3.8], [60, 60, 60], zs, frac, "ok")
    assert ok.constructed and abs(ok.structure.volume - 3.8**3 / np.sqrt(2)) < 1e-6
    neg = structure_from_params([-3.8, 3.8, 3.8], [60, 60, 60], zs, frac, "neg")
    assert neg.error.startswith("non_positive_lattice") and neg.atomic_numbers == (14, 14)
    nan = structure_from_params([3.8, 3.8, 3.8], [60, np.nan, 60], zs, frac, "nan")
    assert nan.error.startswith("nan_value")
    tiny = structure_from_params([0.1, 0.1, 0.1], [90, 90, 90], zs, frac, "tiny")
    assert tiny.error.startswith("unrealistically_small_lattice")  # 0.001 Å^3 < 0.1
    bad_angles = structure_from_params([3, 3, 3], [170, 170, 170], zs, frac, "angles")
    assert not bad_angles.constructed
