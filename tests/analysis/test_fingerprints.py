from __future__ import annotations

import numpy as np
import pytest

from analysis import fingerprints as fpmod
from analysis.fingerprints import (
    FingerprintCache,
    comp_scaler,
    compute_fingerprints,
    fingerprint_key,
    standardise_composition,
)


def test_cdvae_scaler_constants_are_complete():
    means, stds, source = comp_scaler()
    assert means.shape == stds.shape == (132,)
    assert np.all(stds > 0) and "txie-93/cdvae" in source
    assert means[0] == pytest.approx(21.194441759304013)
    assert stds[-1] == pytest.approx(85.980205895116)


def test_standardisation_and_nan_to_zero():
    means, stds, _ = comp_scaler()
    raw = np.vstack([means + 2.0 * stds, means])
    raw[1, 5] = np.nan
    out = standardise_composition(raw)
    assert np.allclose(out[0], 2.0) and out[1, 5] == 0.0 and np.allclose(np.delete(out[1], 5), 0)


def test_key_ignores_site_order_but_not_geometry(quaternary):
    reordered = quaternary.copy()
    reordered.sort(key=lambda site: -site.specie.Z)
    moved = quaternary.copy()
    moved.translate_sites([0], [0.01, 0, 0])
    assert fingerprint_key(reordered) == fingerprint_key(quaternary)
    assert fingerprint_key(moved) != fingerprint_key(quaternary)


def test_fingerprints_cached_in_sqlite_and_reused(tmp_path, quaternary, rocksalt, monkeypatch):
    path = tmp_path / "fp.sqlite"
    items = [quaternary, rocksalt, None, quaternary.copy()]
    first = compute_fingerprints(items, ["q", "r", "x", "q2"], cache=path, n_jobs=1, progress=False)
    assert [fp.ok for fp in first] == [True, True, False, True]
    assert first[0].struct.shape == (61,) and first[0].comp.shape == (132,)
    assert np.array_equal(first[0].struct, first[3].struct)
    assert "not constructed" in first[2].error
    # rocksalt: every site is octahedral, so the site mean equals one site's fingerprint
    from matminer.featurizers.site import CrystalNNFingerprint

    crystal_nn = CrystalNNFingerprint.from_preset("ops")
    one_site = np.asarray(crystal_nn.featurize(rocksalt, 0))
    assert first[1].struct == pytest.approx(one_site, abs=1e-12)
    # a perfect octahedron: all weight on CN 6 and the octahedral order parameter is 1
    by_label = dict(zip(crystal_nn.feature_labels(), first[1].struct, strict=True))
    assert by_label["wt CN_6"] == pytest.approx(1.0, abs=1e-12)
    assert by_label["octahedral CN_6"] == pytest.approx(1.0, abs=1e-12)
    assert len(FingerprintCache(path)) == 2  # two distinct structures

    def boom(_item):
        raise AssertionError("cache miss: fingerprint recomputed")

    monkeypatch.setattr(fpmod, "_fingerprint_one", boom)
    again = compute_fingerprints(items[:2], cache=FingerprintCache(path), n_jobs=1, progress=False)
    assert np.array_equal(again[1].struct, first[1].struct)
    assert np.array_equal(again[0].comp, first[0].comp)


def test_process_pool_gives_the_same_fingerprints(perov_test_300):
    _, structures = perov_test_300
    subset = structures[:8]
    serial = compute_fingerprints(subset, n_jobs=1, progress=False)
    pooled = compute_fingerprints(subset, n_jobs=2, progress=False)
    for a, b in zip(serial, pooled, strict=True):
        assert np.allclose(a.struct, b.struct) and np.allclose(a.comp, b.comp, equal_nan=True)
