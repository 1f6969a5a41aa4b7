"""The ground-truth fingerprints kept beside the dataset cache (analysis.gt_fingerprints).

Stored values are compared with matminer's featurizers called directly, bit for bit; a changed
split (another content key) or a changed structure must never be served an old value.
"""

from __future__ import annotations

import gzip
import shutil
import warnings
from collections import Counter

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure

from analysis import fingerprints as fpmod
from analysis.evaluate import evaluate
from analysis.fingerprints import FingerprintCache, composition_fingerprint, fingerprint_key
from analysis.ground_truth import GroundTruth
from analysis.gt_fingerprints import GroundTruthFingerprints, store_path


def _matminer_fingerprints(structure: Structure) -> tuple[np.ndarray, np.ndarray]:
    """Site-mean CrystalNN 'ops' and magpie features straight from matminer (no dftloop code)."""
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    cnn = CrystalNNFingerprint.from_preset("ops")
    magpie = ElementProperty.from_preset("magpie")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sites = [cnn.featurize(structure, i) for i in range(len(structure))]
        comp = magpie.featurize(Composition(Counter(int(sp.Z) for sp in structure.species)))
    return np.asarray(sites, dtype=float).mean(axis=0), np.asarray(comp, dtype=float)


def _rattled(structures: list[Structure], seed: int = 0) -> list[Structure]:
    rng = np.random.default_rng(seed)
    out = []
    for s in structures:
        moved = s.copy()
        for i, step in enumerate(rng.normal(0.0, 0.05, (len(s), 3))):
            moved.translate_sites([i], step, frac_coords=False, to_unit_cell=True)
        out.append(moved)
    return out


class _Counting:
    """Wraps ``_fingerprint_one`` and records which structures were computed."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._inner = fpmod._fingerprint_one

    def __call__(self, item):
        self.keys.append(fingerprint_key(item.structure))
        return self._inner(item)


def _values(evaluation) -> dict[str, float | None]:
    return {key: result.value for key, result in evaluation.metrics.items()}


def test_stored_fingerprints_equal_fresh_ones_and_are_reused(tmp_path, perov_test_300, monkeypatch):
    ids, structures = perov_test_300
    gt, gen = structures[:6], _rattled(structures[6:9])
    truth = GroundTruth(ids[:6], gt, "perov_5 test rows", "test", [], "a" * 64, tmp_path)
    options = {"n_jobs": 1, "progress": False}
    first = evaluate(gen, "perov_5", gt=truth, fingerprint_cache=FingerprintCache(None), **options)
    path = store_path(tmp_path, "perov_5", "test", "a" * 64)
    assert path.is_file()
    stored = GroundTruthFingerprints(path).load()
    assert len(stored) == 6  # the ground truth only, not the samples
    for structure in gt:
        struct, comp = _matminer_fingerprints(structure)
        fp = stored[fingerprint_key(structure)]
        assert fp.struct.tobytes() == struct.tobytes()
        assert fp.comp.tobytes() == comp.tobytes()

    counting = _Counting()
    monkeypatch.setattr(fpmod, "_fingerprint_one", counting)
    second = evaluate(gen, "perov_5", gt=truth, fingerprint_cache=FingerprintCache(None), **options)
    assert sorted(counting.keys) == sorted(fingerprint_key(s) for s in gen)  # GT read, not computed
    assert _values(second) == _values(first)
    assert second.metrics["cov_recall"].counts["n_gt_with_fingerprint"] == 6


def test_a_changed_split_is_not_served_the_old_fingerprints(tmp_path, perov_test_300, monkeypatch):
    ids, structures = perov_test_300
    gt = structures[:4]
    gen = _rattled(structures[4:6])
    options = {"n_jobs": 1, "progress": False}
    old = GroundTruth(ids[:4], gt, "split", "test", [], "b" * 64, tmp_path)
    evaluate(gen, "perov_5", gt=old, fingerprint_cache=FingerprintCache(None), **options)
    old_path = store_path(tmp_path, "perov_5", "test", "b" * 64)
    old_bytes = old_path.read_bytes()

    changed = [s.copy() for s in gt]
    changed[0].scale_lattice(changed[0].volume * 1.2)
    counting = _Counting()
    monkeypatch.setattr(fpmod, "_fingerprint_one", counting)
    new = GroundTruth(ids[:4], changed, "split", "test", [], "c" * 64, tmp_path)
    evaluate(gen, "perov_5", gt=new, fingerprint_cache=FingerprintCache(None), **options)
    new_path = store_path(tmp_path, "perov_5", "test", "c" * 64)
    assert new_path != old_path and old_path.read_bytes() == old_bytes
    assert len(counting.keys) == 6  # a new file: all four ground truths and both samples
    fp = GroundTruthFingerprints(new_path).load()[fingerprint_key(changed[0])]
    struct, comp = _matminer_fingerprints(changed[0])
    assert fp.struct.tobytes() == struct.tobytes() and fp.comp.tobytes() == comp.tobytes()

    # even under the old key, a changed structure is computed: entries are keyed by structure
    counting.keys.clear()
    mislabelled = GroundTruth(ids[:4], changed, "split", "test", [], "b" * 64, tmp_path)
    evaluate(gen, "perov_5", gt=mislabelled, fingerprint_cache=FingerprintCache(None), **options)
    assert fingerprint_key(changed[0]) in counting.keys
    assert not {fingerprint_key(s) for s in changed[1:]} & set(counting.keys)


def test_unreadable_or_foreign_file_is_ignored_and_rewritten(tmp_path, perov_test_300):
    ids, structures = perov_test_300
    truth = GroundTruth(ids[:3], structures[:3], "split", "test", [], "d" * 64, tmp_path)
    path = store_path(tmp_path, "perov_5", "test", "d" * 64)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not gzip")
    store = GroundTruthFingerprints.for_ground_truth(truth, "perov_5")
    assert store is not None and store.path == path and store.load() == {}
    with gzip.open(path, "wt") as handle:
        handle.write('{"format": "something-else/9", "entries": {}}')
    assert store.load() == {}
    evaluate(structures[3:5], "perov_5", gt=truth, n_jobs=1, progress=False)
    assert len(store.load()) == 3
    no_key = GroundTruth(ids[:3], structures[:3], "split", "test", [], None, tmp_path)
    assert GroundTruthFingerprints.for_ground_truth(no_key, "perov_5") is None


def test_remembered_composition_features_keep_the_element_order():
    from matminer.featurizers.composition.composite import ElementProperty

    magpie = ElementProperty.from_preset("magpie")
    for numbers in ([38, 22, 8, 8, 8], [8, 8, 8, 22, 38], [38, 22, 8, 8, 8]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            direct = np.asarray(magpie.featurize(Composition(Counter(numbers))), dtype=float)
        assert composition_fingerprint(numbers).tobytes() == direct.tobytes()


def test_split_ground_truth_names_its_content(tmp_path, data_dir, monkeypatch):
    """A dataset split read by flows.evaluation keys its file by the split's content."""
    from flows.evaluation import load_split_ground_truth

    data = tmp_path / "data"
    (data / "perov_5").mkdir(parents=True)
    shutil.copy(data_dir / "perov_5" / "test.csv", data / "perov_5" / "test.csv")
    monkeypatch.setenv("DFTLOOP_DATA_DIR", str(data))
    monkeypatch.setenv("DFTLOOP_CACHE_DIR", str(tmp_path / "cache"))
    first = load_split_ground_truth("perov_5", "test", limit=3, progress=False)
    assert first.cache_dir == tmp_path / "cache" and first.content_key
    assert load_split_ground_truth("perov_5", "test", limit=5, progress=False).content_key == (
        first.content_key
    )
    table = pd.read_csv(data / "perov_5" / "test.csv", index_col=0, nrows=8)
    table.to_csv(data / "perov_5" / "test.csv")  # another file: another key
    second = load_split_ground_truth("perov_5", "test", limit=3, progress=False)
    assert second.content_key != first.content_key
    paths = {
        GroundTruthFingerprints.for_ground_truth(t, "perov_5").path  # type: ignore[union-attr]
        for t in (first, second)
    }
    assert len(paths) == 2


def test_pool_fingerprints_equal_serial_ones_bit_for_bit(perov_test_300):
    _, structures = perov_test_300
    subset = _rattled(structures[:8], seed=3)
    serial = fpmod.compute_fingerprints(subset, n_jobs=1, progress=False)
    pooled = fpmod.compute_fingerprints(subset, n_jobs=2, progress=False)
    for a, b in zip(serial, pooled, strict=True):
        assert a.struct.tobytes() == b.struct.tobytes() and a.comp.tobytes() == b.comp.tobytes()
