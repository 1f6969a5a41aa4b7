from __future__ import annotations

import numpy as np
import pytest

from analysis.coverage import coverage, coverage_from_fingerprints
from analysis.fingerprints import Fingerprint, comp_scaler


def _fp(struct: list[float], comp_sigma: float) -> Fingerprint:
    """A fingerprint whose standardised composition vector is comp_sigma in every component."""
    means, stds, _ = comp_scaler()
    return Fingerprint(np.asarray(struct, float), means + comp_sigma * stds)


def test_cov_by_hand_code_vs_joint_and_cov_p_denominator():
    # struct fingerprints in 2D; comp fingerprints standardised to c * ones(132), so the comp
    # distance between c1 and c2 is |c1 - c2| * sqrt(132)
    unit = 1 / np.sqrt(132)
    gt = [_fp([0, 0], 0.0), _fp([1, 0], 0.0), _fp([5, 5], 0.0)]
    gen = [
        _fp([0, 0], 10 * unit),  # struct exact for gt0, comp 10 away from everything
        _fp([3, 3], 0.0),  # comp exact, struct far (min 2.83)
        _fp([1.2, 0], 3.9 * unit),  # within both cutoffs of gt1 (0.2 <= 0.2, 3.9 <= 4)
        Fingerprint(None, None, "fingerprint failed"),  # counts only in COV-P's denominator
    ]
    code = coverage_from_fingerprints(gen, gt, 0.2, 4.0, criterion="code")
    joint = coverage_from_fingerprints(gen, gt, 0.2, 4.0, criterion="joint")
    # code: gt0 has min struct 0 (gen0) and min comp 0 (gen1) -> covered though no single
    # generated crystal is close in both; gt1 covered by gen2; gt2 not (struct 2.83)
    assert code["cov_recall"].value == pytest.approx(2 / 3)
    assert joint["cov_recall"].value == pytest.approx(1 / 3)
    # precision: gen2 only (gen0 comp 10 > 4; gen1 struct 2.83 > 0.2); 4 generated in total
    assert code["cov_precision"].value == pytest.approx(1 / 4)
    assert joint["cov_precision"].value == pytest.approx(1 / 4)
    assert code["cov_precision"].counts["n_generated_with_fingerprint"] == 3
    assert code["amsd_recall"].value == pytest.approx((0 + 0.2 + np.hypot(2, 2)) / 3)
    assert code["amcd_precision"].value == pytest.approx((10 + 0 + 3.9) / 3)
    assert code["cov_recall"].errors == [{"id": "3", "reason": "fingerprint failed"}]


def test_cutoff_comparison_is_less_or_equal():
    gt = [_fp([0, 0], 0.0)]
    at = coverage_from_fingerprints([_fp([0.2, 0], 0.0)], gt, 0.2, 4.0)
    beyond = coverage_from_fingerprints([_fp([0.2001, 0], 0.0)], gt, 0.2, 4.0)
    assert at["cov_recall"].value == 1.0 and beyond["cov_recall"].value == 0.0


def test_identical_sets_cover_fully(perov_test_300, tmp_path):
    _, structures = perov_test_300
    subset = structures[:12]
    res = coverage(subset, subset, "perov_5", cache=tmp_path / "fp.sqlite", progress=False)
    assert res["cov_recall"].value == 1.0 and res["cov_precision"].value == 1.0
    assert res["amsd_recall"].value == pytest.approx(0.0, abs=1e-12)
    assert res["amcd_precision"].value == pytest.approx(0.0, abs=1e-12)
    assert res["cov_recall"].definition["struct_cutoff"] == 0.2
    assert res["cov_recall"].definition["comp_cutoff"] == 4.0
    # one failed sample halves nothing in recall but enters the COV-P denominator
    with_fail = coverage(
        [*subset, None], subset, "perov_5", cache=tmp_path / "fp.sqlite", progress=False
    )
    assert with_fail["cov_recall"].value == 1.0
    assert with_fail["cov_precision"].value == pytest.approx(12 / 13)


def test_mp20_cutoffs_and_unknown_dataset():
    from analysis.datasets import cov_cutoffs

    assert cov_cutoffs("mp_20")[:2] == (0.4, 10.0)
    assert cov_cutoffs("carbon_24")[:2] == (0.2, 4.0)
    with pytest.raises(KeyError, match="no COV cutoffs"):
        cov_cutoffs("qm9")


def test_cutoffs_agree_with_the_dataset_registry():
    """analysis keeps its own table (it may not import the data layer); both must say the same."""
    from analysis.datasets import CDVAE_NAMES, COV_CUTOFFS, cov_cutoffs
    from generators.data import DATASETS

    assert sorted(COV_CUTOFFS) == sorted(DATASETS)
    for name, info in DATASETS.items():
        assert COV_CUTOFFS[name] == (info.cov_struct_cutoff, info.cov_comp_cutoff)
        assert (CDVAE_NAMES[name] is not None) == info.cov_cutoffs_published
    assert "MP-20 values used" in cov_cutoffs("mpts_52")[2]
    assert "MP-20 values used" not in cov_cutoffs("perov_5")[2]


def test_diversity_is_the_mean_pairwise_distance():
    from analysis.coverage import fingerprint_diversity

    u = 1 / np.sqrt(132)
    fps = [_fp([0, 0], 0.0), _fp([3, 0], 2 * u), _fp([0, 4], 6 * u), Fingerprint(None, None, "x")]
    div = fingerprint_diversity(fps)
    assert div["struct_div"].value == pytest.approx((3 + 4 + 5) / 3)
    assert div["comp_div"].value == pytest.approx((2 + 6 + 4) / 3)
    assert div["comp_div"].counts == {"n_samples": 4, "n_with_fingerprint": 3}
    assert fingerprint_diversity(fps[:1])["struct_div"].value is None
