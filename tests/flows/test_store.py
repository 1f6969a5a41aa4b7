from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from flows.hashing import dict_hash, structure_hash
from flows.store import (
    Provenance,
    ResultStore,
    default_job_store,
    load_job_store,
    relaxation_doc_id,
)


def _nacl(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def test_structure_hash_is_canonical() -> None:
    s = _nacl()
    shuffled = Structure(s.lattice, list(reversed(s.species)), list(reversed(s.frac_coords)))
    assert structure_hash(s) == structure_hash(shuffled)
    # wrapping and tiny noise below the rounding do not change the hash
    wrapped = Structure(s.lattice, s.species, s.frac_coords + 1.0 + 1e-7)
    assert structure_hash(s) == structure_hash(wrapped)
    moved = s.copy()
    moved.translate_sites([0], [0.01, 0, 0])
    assert structure_hash(moved) != structure_hash(s)
    assert structure_hash(_nacl(5.7)) != structure_hash(s)
    bad = Structure(s.lattice, s.species, np.full((len(s), 3), np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        structure_hash(bad)


def test_round_trip_on_montystore(tmp_path: Path) -> None:
    prov = Provenance(model="dataset", dataset="perov_5", config={"n": 2}, checkpoint_sha256=None)
    s1, s2 = _nacl(), _nacl(5.9)
    with ResultStore(home=tmp_path) as store:
        ids = store.put_samples(
            [
                {"sample_id": "a", "structure": s1},
                {"sample_id": "b", "structure": s2.as_dict(), "target_id": "mp-1"},
                {"sample_id": "c", "structure": None, "error": "c: NaN lattice"},
            ],
            prov,
        )
        assert len(ids) == 3 and len(set(ids)) == 3
        forces = [[0.1, 0.0, 0.0]] * len(s1)
        rel = {
            "structure_id": "a",
            "relaxer": "fake",
            "settings": {"fmax": 0.1},
            "final_structure": s1.as_dict(),
            "final_energy_per_atom_eV": -3.5,
            "forces": forces,
            "status": "ok",
            "error": None,
        }
        store.put_relaxations([(structure_hash(s1), rel)], Provenance(relaxer="fake"))
        store.put_analyses(
            [
                {
                    "structure_hash": structure_hash(s1),
                    "settings_hash": dict_hash({"fmax": 0.1}),
                    "delta_e_mev_per_atom": 12.5,
                }
            ],
            prov,
        )
    # a fresh connection (new process-like) sees everything, blobs included
    with ResultStore(home=tmp_path) as store:
        assert (tmp_path / "store").is_dir()
        samples = {d["sample_id"]: d for d in store.query("sample")}
        assert set(samples) == {"a", "b", "c"}
        assert Structure.from_dict(samples["b"]["structure"]) == s2
        assert samples["b"]["target_id"] == "mp-1"
        assert samples["c"]["structure"] is None and "NaN" in samples["c"]["error"]
        assert samples["a"]["provenance"]["dataset"] == "perov_5"
        assert samples["a"]["provenance"]["code_version"]
        [relax] = store.query("relaxation")
        assert relax["doc_id"] == relaxation_doc_id(structure_hash(s1), dict_hash({"fmax": 0.1}))
        assert relax["forces"]["blob_uuid"]  # moved to the data store
        [loaded] = store.query("relaxation", load_blobs=True)
        assert loaded["forces"] == forces
        assert store.count("analysis") == 1
        info = store.describe()
        assert info["docs"]["type"] == "MontyStore" and info["counts"]["sample"] == 3


def test_pending_relaxations_skips_done(tmp_path: Path) -> None:
    structures = [(f"s{i}", _nacl(5.0 + 0.1 * i)) for i in range(5)]
    items = [*structures, ("dup", structures[0][1].copy())]
    sh = dict_hash({"relaxer": "fake"})
    with ResultStore(home=tmp_path) as store:
        assert [sid for sid, _ in store.pending_relaxations(items, sh)] == [
            f"s{i}" for i in range(5)
        ]
        done = [
            (
                structure_hash(structures[0][1]),
                {"structure_id": "s0", "settings_hash": sh, "status": "ok"},
            ),
            (
                structure_hash(structures[1][1]),
                {
                    "structure_id": "s1",
                    "settings_hash": sh,
                    "status": "failed",
                    "error": "s1: boom",
                },
            ),
            (
                structure_hash(structures[2][1]),
                {"structure_id": "s2", "settings_hash": sh, "status": "unavailable"},
            ),
        ]
        store.put_relaxations(done, Provenance(relaxer="fake"))
        pending = [sid for sid, _ in store.pending_relaxations(items, sh)]
        assert pending == ["s2", "s3", "s4"]
        assert [sid for sid, _ in store.pending_relaxations(items, sh, retry_failed=True)] == [
            "s1",
            "s2",
            "s3",
            "s4",
        ]
        # other settings: nothing done
        assert len(store.pending_relaxations(items, dict_hash({"relaxer": "other"}))) == 5
        # rewriting an existing document replaces it (no duplicate)
        store.put_relaxations(done[:1], Provenance(relaxer="fake"))
        assert store.count("relaxation") == 3


def test_writes_are_batched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1000 new documents: two ``insert_many`` of 500 and no per-document write; rewriting
    three of them: one ``delete_many`` and one ``insert_many`` of three, no per-document write
    (montydb's per-document upsert is what made 1000 writes take ~30 s; the timing itself is
    benchmarks/store_writes.py)."""
    from montydb.collection import MontyCollection

    calls: dict[str, list[int]] = {
        "insert_many": [],
        "replace_one": [],
        "update": [],
        "delete_many": [],
    }
    insert_many, replace_one = MontyCollection.insert_many, MontyCollection.replace_one
    delete_many = MontyCollection.delete_many

    def spy_insert_many(self, documents, *args, **kwargs):  # type: ignore[no-untyped-def]
        documents = list(documents)
        calls["insert_many"].append(len(documents))
        return insert_many(self, documents, *args, **kwargs)

    def spy_replace_one(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["replace_one"].append(1)
        return replace_one(self, *args, **kwargs)

    def spy_delete_many(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["delete_many"].append(1)
        return delete_many(self, *args, **kwargs)

    monkeypatch.setattr(MontyCollection, "insert_many", spy_insert_many)
    monkeypatch.setattr(MontyCollection, "delete_many", spy_delete_many)
    monkeypatch.setattr(MontyCollection, "replace_one", spy_replace_one)
    monkeypatch.setattr(
        "maggma.stores.MontyStore.update",
        lambda *a, **k: calls["update"].append(1),
    )
    docs = [
        (f"{i:064x}", {"structure_id": f"x{i}", "settings_hash": "h", "status": "ok"})
        for i in range(1000)
    ]
    with ResultStore(home=tmp_path) as store:
        store.put_relaxations(docs, Provenance(relaxer="fake"))
        assert calls == {
            "insert_many": [500, 500],
            "replace_one": [],
            "update": [],
            "delete_many": [],
        }
        assert store.count("relaxation") == 1000
        for key in calls:
            calls[key].clear()
        rewritten = [(h, {**d, "status": "failed"}) for h, d in docs[:3]]
        store.put_relaxations(rewritten, Provenance(relaxer="fake"))
        assert calls == {"insert_many": [3], "replace_one": [], "update": [], "delete_many": [1]}
        assert store.count("relaxation") == 1000
        statuses = {d["structure_hash"]: d["status"] for d in store.query("relaxation")}
        assert [statuses[h] for h, _ in docs[:4]] == ["failed", "failed", "failed", "ok"]
        assert list(statuses.values()).count("failed") == 3


def test_jobflow_config_file_selects_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "jobflow.yaml"
    db = tmp_path / "elsewhere"
    cfg.write_text(
        "JOB_STORE:\n"
        "  docs_store:\n    type: MontyStore\n    collection_name: cfgdocs\n"
        f"    database_path: {db}\n    database_name: cfg\n    storage: sqlite\n"
        "  additional_stores:\n    data:\n      type: MontyStore\n      collection_name: cfgblobs\n"
        f"      database_path: {db}\n      database_name: cfg\n      storage: sqlite\n"
        "      key: blob_uuid\n"
    )
    monkeypatch.setenv("JOBFLOW_CONFIG_FILE", str(cfg))
    js = load_job_store(home=tmp_path / "home")
    assert js.docs_store.collection_name == "cfgdocs"
    with ResultStore(js) as store:
        store.put_samples([{"sample_id": "z", "structure": _nacl()}], Provenance(model="m"))
        assert store.count("sample") == 1
    assert db.is_dir()
    bad = tmp_path / "bad.yaml"
    bad.write_text("JOB_STORE:\n  docs_store:\n    type: MemoryStore\n    collection_name: x\n")
    with pytest.raises(ValueError, match="'data' additional store"):
        load_job_store(config_file=bad)
    monkeypatch.delenv("JOBFLOW_CONFIG_FILE")
    assert default_job_store(tmp_path).docs_store.collection_name == "dftloop_docs"
