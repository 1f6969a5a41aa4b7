from __future__ import annotations

import pytest
import smact
import smact.screening
from pymatgen.core import Lattice, Structure

from analysis.validity import (
    assess_validity,
    composition_of,
    composition_validity,
    pauling_test_smact221,
    shortest_distance,
    smact_valid,
    structure_is_valid,
    structure_validity,
    validity_metrics,
)


def _pair(distance: float) -> Structure:
    """Two atoms ``distance`` Å apart along x in a 10 Å cube (images are far away)."""
    return Structure(Lattice.cubic(10.0), ["Na", "Cl"], [[0, 0, 0], [distance / 10.0, 0, 0]])


def test_structural_validity_cutoff_is_inclusive_as_in_the_code():
    assert not structure_is_valid(_pair(0.49))
    assert structure_is_valid(_pair(0.5))  # code rejects only min(d) < 0.5
    assert structure_is_valid(_pair(2.8))


def test_structural_validity_uses_periodic_images():
    # 0.1 and 0.95 in frac of a 5 Å cell: 4.25 Å in-cell but 0.75 Å through the boundary
    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.1, 0, 0], [0.95, 0, 0]])
    assert structure_is_valid(s)
    s2 = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.02, 0, 0], [0.97, 0, 0]])  # 0.25 Å
    assert not structure_is_valid(s2)


def test_shortest_distance_is_between_different_sites_through_images():
    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.1, 0, 0], [0.95, 0, 0]])
    assert shortest_distance(s) == pytest.approx(0.75)  # through the boundary, not 4.25 Å
    assert shortest_distance(_pair(2.8)) == pytest.approx(2.8)
    # one site: no pair (its 5 Å distance to its own image is not counted)
    assert shortest_distance(Structure(Lattice.cubic(5.0), ["Na"], [[0, 0, 0]])) is None


def test_composition_rules_by_hand():
    assert smact_valid(*composition_of([11, 17]))  # NaCl: Na+ Cl-
    assert smact_valid(*composition_of([6] * 8))  # single element
    assert smact_valid(*composition_of([26, 28, 28]))  # FeNi2: all metals (alloy)
    assert not smact_valid(*composition_of([11, 11, 8, 8, 8]))  # Na2O3: Na only +1/-1
    assert not smact_valid(*composition_of([11, 11, 8, 8, 8, 8, 8, 8]))  # Na2O6 -> NaO3
    assert smact_valid(*composition_of([11, 11, 8, 8]))  # Na2O2 -> NaO: Na+ O- (peroxide)
    symbols, counts = composition_of([11, 11, 8, 8, 8, 8, 8, 8])
    assert counts == (6, 2) and symbols == ("O", "Na")  # sorted by Z, as CDVAE


def test_gcd_reduction_matters_for_stoichiometry():
    # Na4O2 reduces to Na2O (Na+ x2, O2-): valid
    assert smact_valid(*composition_of([11] * 4 + [8] * 2))


def test_pauling_failure_and_smact221_typeerror_semantics():
    # HSe (1:1), SMACT-14 states H (-1, +1), Se (-2, +1, +2, +4, +6): the only neutral
    # assignment is H- Se+, but Se (2.55) is more electronegative than H (2.20), so the
    # Pauling test fails: invalid with the test, valid without it.
    symbols, counts = composition_of([1, 34])
    assert smact_valid(symbols, counts, use_pauling_test=False)
    assert not smact_valid(symbols, counts)
    # Pm has SMACT-14 states (+2, +3) but no Pauling electronegativity. Pm2O3 is neutral only
    # as Pm3+/O2-; comparing with None raised TypeError in smact 2.2.1, which CDVAE counts as
    # a pass. smact 4's own pauling_test returns False there instead.
    assert smact.Element("Pm").pauling_eneg is None
    symbols, counts = composition_of([61, 61, 8, 8, 8])
    assert smact_valid(symbols, counts)
    assert not smact.screening.pauling_test((-2, 3), (3.44, None))
    with pytest.raises(TypeError):
        pauling_test_smact221((-2, 3), (3.44, None))
    assert pauling_test_smact221((1, -1), (0.93, 3.16))
    assert not pauling_test_smact221((-1, 1), (0.93, 3.16))


def test_element_without_oxidation_states_is_reported_not_raised(rocksalt):
    s = Structure(Lattice.cubic(6.0), ["He", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    (record,) = assess_validity([s], ids=["he"])
    assert not record.comp_valid and "He" in record.reason and record.id == "he"


def test_perov5_300_test_structures_smact14_vs_icsd24(perov_test_300):
    ids, structures = perov_test_300
    assert len(structures) == 300
    comp14 = composition_validity(structures, ids)
    assert comp14.counts["n_total"] - comp14.counts["n_comp_valid"] == 3  # metrics.md: 3
    assert "SMACT-14" in comp14.definition["smact_oxidation_states"]
    comp24 = composition_validity(structures, ids, oxidation_states_set="icsd24")
    assert comp24.counts["n_total"] - comp24.counts["n_comp_valid"] == 6  # metrics.md: 6
    invalid14 = {e["id"] for e in comp14.errors}
    assert invalid14 < {e["id"] for e in comp24.errors}
    # smact 4's own screen with its default (ICSD-24 filter) agrees on the count
    n_default = sum(not smact.screening.smact_validity(s.composition) for s in structures)
    assert n_default == 6
    struct = structure_validity(structures, ids)
    assert struct.value == 1.0


def test_validity_metrics_count_bad_items_in_the_denominator(rocksalt):
    items = [rocksalt, None, _pair(0.3), rocksalt.as_dict()]
    records = assess_validity(items, ids=["a", "b", "c", "d"])
    metrics = validity_metrics(records)
    assert metrics["construction_validity"].value == 0.75
    assert metrics["struct_validity"].value == 0.5
    assert metrics["comp_validity"].value == 0.75  # the None item has no composition
    assert metrics["validity"].value == 0.5
    assert {e["id"] for e in metrics["validity"].errors} == {"b", "c"}
    assert metrics["validity"].counts == {
        "n_total": 4,
        "n_constructed": 3,
        "n_struct_valid": 2,
        "n_comp_valid": 3,
        "n_valid": 2,
    }
