"""The dataset registry carries the published facts (metrics.md §7, models.md)."""

from __future__ import annotations

import pytest

from generators.data import DATASETS, SPLITS


@pytest.mark.parametrize(
    ("name", "prop", "max_atoms", "cov", "published", "rows"),
    [
        ("perov_5", "heat_ref", 20, (0.2, 4.0), True, (11_356, 3_787, 3_785)),
        ("carbon_24", "energy_per_atom", 24, (0.2, 4.0), True, (6_091, 2_032, 2_030)),
        ("mp_20", "formation_energy_per_atom", 20, (0.4, 10.0), True, (27_136, 9_047, 9_046)),
        ("mpts_52", None, 52, (0.4, 10.0), False, (27_380, 5_000, 8_096)),
    ],
)
def test_dataset_facts(name, prop, max_atoms, cov, published, rows):
    info = DATASETS[name]
    assert info.property_name == prop
    assert info.max_atoms == max_atoms
    assert info.cov_cutoffs == cov
    assert info.cov_cutoffs_published is published
    assert tuple(info.splits[s].expected_rows for s in SPLITS) == rows
    for split in info.splits.values():
        for source in split.sources:
            assert source.url.startswith("https://raw.githubusercontent.com/")
            assert source.url.endswith(source.relpath.rsplit("/", 1)[-1])


def test_unverified_and_flagged_facts_say_so():
    assert not DATASETS["mp_20"].splits["val"].rows_verified
    assert any("FLAGGED" in n for n in DATASETS["mpts_52"].notes)
    train_sources = DATASETS["perov_5"].splits["train"].sources
    assert [s.format for s in train_sources] == ["csv", "jarvis_json_zip"]
    assert not train_sources[1].has_properties
    assert all(s.subset_note for s in DATASETS["mp_20"].splits["val"].sources[1:])
