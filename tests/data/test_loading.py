"""load_split on the real ../shared files: sources, ids, preprocessing invariants, errors, cache."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice

from generators.data import DATASETS, DataNotFoundError, load_split, locations, small_crystals
from generators.data.loading import PreprocessOptions, load_file, process_rows
from generators.data.locations import locate_split
from generators.data.readers import read_csv_rows, read_jarvis_rows

PRESENT = [
    ("perov_5", "train"),
    ("perov_5", "val"),
    ("perov_5", "test"),
    ("carbon_24", "train"),
    ("carbon_24", "val"),
    ("carbon_24", "test"),
    ("mp_20", "train"),
    ("mp_20", "val"),
    ("mp_20", "test"),
    ("mpts_52", "val"),
    ("mpts_52", "test"),
]


def _assert_preprocessed(structure) -> None:
    frac = structure.frac_coords
    assert np.all(frac >= 0.0) and np.all(frac < 1.0)
    lattice = structure.lattice
    canonical = Lattice.from_parameters(*lattice.parameters).matrix
    np.testing.assert_allclose(lattice.matrix, canonical, atol=1e-8)
    # Niggli (Buerger) conditions: a <= b <= c, |2 b.c| <= b^2, |2 a.c| <= a^2, |2 a.b| <= a^2
    a, b, c = lattice.matrix
    tol = 1e-5 * max(lattice.abc) ** 2
    assert a @ a <= b @ b + tol and b @ b <= c @ c + tol
    assert abs(2 * b @ c) <= b @ b + tol
    assert abs(2 * a @ c) <= a @ a + tol
    assert abs(2 * a @ b) <= a @ a + tol
    # and reducing again changes nothing but the labelling
    niggli = lattice.get_niggli_reduced_lattice()
    np.testing.assert_allclose(sorted(lattice.abc), sorted(niggli.abc), rtol=1e-5)
    np.testing.assert_allclose(lattice.volume, niggli.volume, rtol=1e-6)


@pytest.mark.parametrize(("dataset", "split"), PRESENT)
def test_present_splits_load_with_limit(data_dir, dataset, split):
    data = load_split(dataset, split, data_dir=data_dir, limit=6, progress=False)
    assert len(data) == 6 and data.errors == []
    info = DATASETS[dataset]
    for record in data.records:
        assert 0 < len(record.structure) <= info.max_atoms
        _assert_preprocessed(record.structure)
    jarvis = data.source_format == "jarvis_json_zip"
    assert jarvis == (split == "train" and dataset in ("perov_5", "carbon_24"))
    if jarvis:
        assert data.records[0].properties == {}
        assert info.property_name in data.records[0].missing_properties
        assert any("no property columns" in n for n in data.notes)
    elif info.property_name:
        assert np.isfinite(data.records[0].properties[info.property_name])
    if dataset == "mp_20":
        assert any("pilot subset" in n for n in data.notes)


def test_data_dir_resolution(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("DFTLOOP_DATA_DIR", raising=False)
    shared = locations.shared_data_dir()
    assert shared is not None and (shared / "README.md").is_file()
    assert locations.data_dir() == shared
    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(tmp_path))
    assert locations.data_dir() == tmp_path == locations.download_dir()
    assert locations.data_roots() == [tmp_path]
    assert locations.locate_split("perov_5", "val").path is None


def test_mpts_52_train_missing_names_the_fix(tmp_path):
    assert locate_split("mpts_52", "train", tmp_path).path is None
    with pytest.raises(DataNotFoundError, match=r"dftloop data fetch mpts_52 --split train"):
        load_split("mpts_52", "train", data_dir=tmp_path)
    with pytest.raises(KeyError, match="unknown split"):
        load_split("perov_5", "training")
    with pytest.raises(KeyError, match="unknown dataset"):
        load_split("perov_6", "val")


@pytest.mark.parametrize(
    ("dataset", "zipname"),
    [("perov_5", "perov5_heat_ref.json.zip"), ("carbon_24", "carbon24_energy_per_atom.json.zip")],
)
def test_jarvis_ids_equal_csv_ids_in_order(data_dir, dataset, zipname):
    zpath = data_dir / dataset / "jarvis_leaderboard" / zipname
    for split in ("val", "test"):
        csv_ids = [r.material_id for r in read_csv_rows(data_dir / dataset / f"{split}.csv", ())]
        jarvis_ids = [r.material_id for r in read_jarvis_rows(zpath, split)]
        assert len(csv_ids) == DATASETS[dataset].splits[split].expected_rows
        assert jarvis_ids == csv_ids
    assert len(read_jarvis_rows(zpath, "train")) == DATASETS[dataset].splits["train"].expected_rows


def test_jarvis_and_csv_give_the_same_crystals(data_dir):
    zpath = data_dir / "perov_5" / "jarvis_leaderboard" / "perov5_heat_ref.json.zip"
    from_csv = load_split("perov_5", "val", data_dir=data_dir, limit=5, progress=False)
    from_json = load_file(zpath, like="perov_5", split="val", limit=5, progress=False)
    matcher = StructureMatcher()
    for a, b in zip(from_csv.records, from_json.records, strict=True):
        assert a.material_id == b.material_id
        assert matcher.fit(a.structure, b.structure)


BAD_CIF_ROW = """# generated using pymatgen
data_X
_cell_length_a   {a}
_cell_length_b   4.0
_cell_length_c   4.0
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
_symmetry_space_group_name_H-M   'P 1'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  {el}  {el}0  {x}  0.0  0.0  1
  O  O1  0.5  0.5  0.5  1
"""


def _bad_csv(tmp_path, data_dir):
    good = pd.read_csv(data_dir / "perov_5" / "val.csv", index_col=0, nrows=3)
    rows = [
        (good.iloc[0]["material_id"], good.iloc[0]["cif"], 1.0),
        ("bad-malformed", "this is not a cif", 1.0),
        ("bad-nan-property", good.iloc[1]["cif"], float("nan")),
        ("bad-zero-volume", BAD_CIF_ROW.format(a="0.0", el="Ti", x="0.0"), 1.0),
        ("bad-unknown-element", BAD_CIF_ROW.format(a="4.0", el="Xx", x="0.0"), 1.0),
        ("bad-nan-coordinate", BAD_CIF_ROW.format(a="4.0", el="Ti", x="nan"), 1.0),
        (good.iloc[2]["material_id"], good.iloc[2]["cif"], 2.0),
    ]
    frame = pd.DataFrame(
        {
            "material_id": [r[0] for r in rows],
            "cif": [r[1] for r in rows],
            "heat_ref": [r[2] for r in rows],
        }
    )
    path = tmp_path / "bad.csv"
    frame.to_csv(path)
    return path, [str(r[0]) for r in rows]


def test_bad_rows_are_reported_with_id_and_reason(tmp_path, data_dir):
    path, ids = _bad_csv(tmp_path, data_dir)
    data = load_file(path, like="perov_5", progress=False)
    assert data.material_ids == [ids[0], ids[-1]]
    reasons = {e.material_id: e.reason for e in data.errors}
    assert list(reasons) == ids[1:-1]  # every bad row, in order, none dropped silently
    assert "malformed cif" in reasons["bad-malformed"]
    assert "heat_ref" in reasons["bad-nan-property"]
    assert "Singular matrix" in reasons["bad-zero-volume"]  # pymatgen's reason, kept
    assert "unknown element Xx" in reasons["bad-unknown-element"]
    assert "NaN" in reasons["bad-nan-coordinate"]
    assert data.records[1].properties["heat_ref"] == 2.0


def test_limit_reads_only_the_first_rows(tmp_path, data_dir):
    path, ids = _bad_csv(tmp_path, data_dir)
    data = load_file(path, like="perov_5", limit=1, progress=False)
    assert data.material_ids == [ids[0]] and data.errors == []
    # a full cache then answers a limited load
    load_file(path, like="perov_5", progress=False)
    again = load_file(path, like="perov_5", limit=3, progress=False)
    assert again.from_cache and len(again) == 1 and len(again.errors) == 2


def test_small_crystals_are_the_first_small_rows(data_dir):
    chosen = small_crystals("carbon_24", 5, max_atoms=8, data_dir=data_dir)
    rows = load_split("carbon_24", "train", data_dir=data_dir, limit=400, progress=False).records
    expected = [r.material_id for r in rows if len(r.structure) <= 8][:5]
    assert [r.material_id for r in chosen] == expected
    assert all(len(r.structure) <= 8 for r in chosen)
    with pytest.raises(ValueError, match=r"carbon_24/train: only .* at most 1 atoms"):
        small_crystals("carbon_24", 3, max_atoms=1, data_dir=data_dir, scan=20)


def test_cache_hit_and_invalidation(tmp_path, data_dir):
    src = pd.read_csv(data_dir / "carbon_24" / "val.csv", index_col=0, nrows=40)
    path = tmp_path / "carbon_small.csv"
    src.to_csv(path)
    first = load_file(path, like="carbon_24", progress=False)
    second = load_file(path, like="carbon_24", progress=False)
    assert not first.from_cache and second.from_cache
    assert second.material_ids == first.material_ids
    for a, b in zip(first.records, second.records, strict=True):
        np.testing.assert_array_equal(a.structure.lattice.matrix, b.structure.lattice.matrix)
        np.testing.assert_array_equal(a.structure.frac_coords, b.structure.frac_coords)
        assert a.properties == b.properties
    # other preprocessing options are another cache entry
    raw = load_file(path, like="carbon_24", progress=False, options=PreprocessOptions(niggli=False))
    assert not raw.from_cache
    # changed bytes are a miss
    src.iloc[:20].to_csv(path)
    third = load_file(path, like="carbon_24", progress=False)
    assert not third.from_cache and len(third) == 20


def test_process_pool_gives_the_same_result(data_dir, monkeypatch):
    import generators.data.loading as loading

    rows = read_csv_rows(data_dir / "mpts_52" / "val.csv", ("formation_energy_per_atom",), limit=24)
    serial = process_rows(rows, None, PreprocessOptions(), workers=1, progress=False)
    monkeypatch.setattr(loading, "PARALLEL_THRESHOLD", 10)
    monkeypatch.setattr(loading, "CHUNK_ROWS", 5)
    pooled = process_rows(rows, None, PreprocessOptions(), workers=2, progress=False)
    assert [r.row for r in pooled] == list(range(24))
    assert [r.structure for r in pooled] == [r.structure for r in serial]


def test_bad_poscar_rows_in_a_jarvis_zip(tmp_path):
    good = "S\\n1.0\\n4 0 0\\n0 4 0\\n0 0 4\\nTi O\\n1 1\\ndirect\\n0 0 0\\n0.5 0.5 0.5\\n"
    flat = good.replace("0 0 4", "0 0 0")
    nan = good.replace("direct\\n0 0 0", "direct\\nnan 0 0")
    document = {"train": {}, "val": {"ok": good, "flat": flat, "nan": nan, "empty": ""}, "test": {}}
    path = tmp_path / "x.json.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.json", json.dumps(document))
    data = load_file(path, like="carbon_24", split="val", progress=False)
    assert data.material_ids == ["ok"]
    reasons = {e.material_id: e.reason for e in data.errors}
    assert "volume" in reasons["flat"]
    assert "NaN" in reasons["nan"]
    assert "empty" in reasons["empty"]
    _assert_preprocessed(data.records[0].structure)
    np.testing.assert_allclose(data.records[0].structure.frac_coords[1], [0.5, 0.5, 0.5])


def test_broken_pool_falls_back_to_in_process(data_dir, monkeypatch, caplog):
    from concurrent.futures.process import BrokenProcessPool

    import generators.data.loading as loading

    def broken(*args, **kwargs):
        raise BrokenProcessPool("worker died")

    rows = read_csv_rows(data_dir / "perov_5" / "test.csv", ("heat_ref",), limit=12)
    monkeypatch.setattr(loading, "PARALLEL_THRESHOLD", 10)
    monkeypatch.setattr(loading, "_process_in_pool", broken)
    out = process_rows(rows, "heat_ref", PreprocessOptions(), workers=2, progress=False)
    assert [r.material_id for r in out] == [r.material_id for r in rows]
    assert all(r.error is None for r in out)
    assert "process pool failed" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "split"), PRESENT)
def test_whole_split_row_counts(data_dir, dataset, split):
    """Whole splits: published row counts, no row errors, a cache hit the second time."""
    data = load_split(dataset, split, data_dir=data_dir, workers=2, progress=False)
    expected = 1000 if dataset == "mp_20" else DATASETS[dataset].splits[split].expected_rows
    assert len(data) == expected and data.errors == []
    assert max(len(s) for s in data.structures) <= DATASETS[dataset].max_atoms
    again = load_split(dataset, split, data_dir=data_dir, progress=False)
    assert again.from_cache and again.material_ids == data.material_ids
