"""The stability plots write PNG files that matplotlib can read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread

from analysis.stability_plots import plot_delta_e_histograms, plot_delta_e_vs_rmsd


def _check_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(np.std(image[..., :3])) > 0.01  # something was drawn
    return image


def test_histograms_overlaid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = plot_delta_e_histograms(
        {
            "cdvae": [*rng.normal(150, 40, 100), None, float("nan")],
            "dp_cdvae": rng.normal(80, 30, 90),
        },
        tmp_path / "sub" / "hist.png",
        title="carbon_24",
    )
    assert path == tmp_path / "sub" / "hist.png"
    image = _check_png(path)
    # both model colours appear (blue-ish and red-ish bars)
    rgb = image[..., :3]
    assert np.any((rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.75))
    assert np.any((rgb[..., 0] > 0.8) & (rgb[..., 2] < 0.7))


def test_histograms_with_no_values_and_constant_values(tmp_path: Path) -> None:
    _check_png(plot_delta_e_histograms({"a": [None]}, tmp_path / "empty.png"))
    _check_png(plot_delta_e_histograms({"a": [5.0, 5.0]}, tmp_path / "constant.png"))


def test_scatter(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pairs = list(zip(rng.normal(100, 20, 40), rng.uniform(0, 0.3, 40), strict=True))
    path = plot_delta_e_vs_rmsd(
        {"cdvae": [*pairs, (None, 0.1), (3.0, None)], "diffcsp": [(10.0, 0.05)], "none": []},
        tmp_path / "scatter.png",
        title="ΔE vs RMSD",
    )
    _check_png(path)
    _check_png(plot_delta_e_vs_rmsd({}, tmp_path / "empty.png"))


def test_distributions_against_the_test_split(tmp_path: Path) -> None:
    from analysis.stability_plots import plot_distributions

    path = plot_distributions(
        {
            "cdvae": {"n_sites": [6, 8, 8, 12, None], "density": [3.1, 3.3, 2.2]},
            "test split": {"n_sites": [6, 6, 10, 24], "density": [3.5, 2.3, 2.25]},
            "empty": {"n_sites": [], "density": []},
        },
        tmp_path / "distributions.png",
        reference="test split",
    )
    rgb = _check_png(path)[..., :3]
    # the test split is a filled grey histogram (#babdb6), the model a blue outline (#3465a4)
    grey = (np.abs(rgb[..., 0] - 0xBA / 255) < 0.02) & (np.abs(rgb[..., 2] - 0xB6 / 255) < 0.02)
    blue = (np.abs(rgb[..., 0] - 0x34 / 255) < 0.05) & (np.abs(rgb[..., 2] - 0xA4 / 255) < 0.05)
    assert grey.sum() > 500 and blue.sum() > 50
    _check_png(plot_distributions({}, tmp_path / "none.png"))
