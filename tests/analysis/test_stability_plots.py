"""The stability plots draw the given values and write PNG files that matplotlib can read back.

The figures are caught on their way to the PNG writer and their artists (bars, lines, points,
legend) compared with the inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from analysis import stability_plots
from analysis.stability_plots import plot_delta_e_histograms, plot_delta_e_vs_rmsd


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plot functions save, in order."""
    figures: list[Figure] = []
    save = stability_plots._save

    def keep(fig: Figure, path: str | Path) -> Path:
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(stability_plots, "_save", keep)
    return figures


def _legend(ax) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _bars(container) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Left edges (plus the last right edge) and heights of a histogram's bars."""
    lefts = [p.get_x() for p in container]
    right = container[-1].get_x() + container[-1].get_width()
    return np.array([*lefts, right]), np.array([p.get_height() for p in container])


def _check_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(np.std(image[..., :3])) > 0.01  # something was drawn
    return image


def test_histograms_overlaid(tmp_path: Path, drawn: list[Figure]) -> None:
    rng = np.random.default_rng(0)
    cdvae, dp_cdvae = rng.normal(150, 40, 100), rng.normal(80, 30, 90)
    path = plot_delta_e_histograms(
        {"cdvae": [*cdvae, None, float("nan")], "dp_cdvae": dp_cdvae},
        tmp_path / "sub" / "hist.png",
        title="carbon_24",
    )
    assert path == tmp_path / "sub" / "hist.png"
    [ax] = drawn[0].axes
    assert ax.get_title() == "carbon_24"
    # 190 finite values: int(1.5 sqrt(190)) = 20 shared bins from the smallest to the largest
    everything = np.concatenate([cdvae, dp_cdvae])
    expected_edges = np.linspace(everything.min(), everything.max(), 21)
    for container, values in zip(ax.containers, (cdvae, dp_cdvae), strict=True):
        edges, heights = _bars(container)
        assert edges == pytest.approx(expected_edges)
        assert heights.sum() == values.size  # None and NaN left out
        assert heights == pytest.approx(np.histogram(values, expected_edges)[0])
    # dashed lines at the means, which the legend states
    assert [line.get_xdata()[0] for line in ax.lines] == pytest.approx(
        [cdvae.mean(), dp_cdvae.mean()]
    )
    assert _legend(ax) == [
        f"cdvae (n=100, mean={cdvae.mean():.1f})",
        f"dp_cdvae (n=90, mean={dp_cdvae.mean():.1f})",
    ]
    image = _check_png(path)
    # both model colours appear (blue-ish and red-ish bars)
    rgb = image[..., :3]
    assert np.any((rgb[..., 2] > 0.6) & (rgb[..., 0] < 0.75))
    assert np.any((rgb[..., 0] > 0.8) & (rgb[..., 2] < 0.7))


def test_histograms_with_no_values_and_constant_values(tmp_path: Path, drawn: list[Figure]) -> None:
    _check_png(plot_delta_e_histograms({"a": [None]}, tmp_path / "empty.png"))
    [ax] = drawn[0].axes
    assert [t.get_text() for t in ax.texts] == ["no values"] and not ax.containers
    _check_png(plot_delta_e_histograms({"a": [5.0, 5.0]}, tmp_path / "constant.png"))
    # one value: 5 bins over 5 +- 0.5, both values in the middle one
    [ax] = drawn[1].axes
    edges, heights = _bars(ax.containers[0])
    assert edges == pytest.approx([4.5, 4.7, 4.9, 5.1, 5.3, 5.5])
    assert heights.tolist() == [0, 0, 2, 0, 0]
    assert _legend(ax) == ["a (n=2, mean=5.0)"]


def test_scatter(tmp_path: Path, drawn: list[Figure]) -> None:
    rng = np.random.default_rng(1)
    pairs = list(zip(rng.normal(100, 20, 40), rng.uniform(0, 0.3, 40), strict=True))
    path = plot_delta_e_vs_rmsd(
        {"cdvae": [*pairs, (None, 0.1), (3.0, None)], "diffcsp": [(10.0, 0.05)], "none": []},
        tmp_path / "scatter.png",
        title="ΔE vs RMSD",
    )
    _check_png(path)
    [ax] = drawn[0].axes
    # RMSD on x, ΔE on y; the pairs with a None member are left out
    cdvae, diffcsp, none = (c.get_offsets() for c in ax.collections)
    assert np.asarray(cdvae) == pytest.approx(np.array([(r, de) for de, r in pairs]))
    assert np.asarray(diffcsp).tolist() == [[0.05, 10.0]] and len(none) == 0
    assert _legend(ax) == ["cdvae (n=40)", "diffcsp (n=1)", "none (n=0)"]
    _check_png(plot_delta_e_vs_rmsd({}, tmp_path / "empty.png"))
    assert [t.get_text() for t in drawn[1].axes[0].texts] == ["no values"]


def test_distributions_against_the_test_split(tmp_path: Path, drawn: list[Figure]) -> None:
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
    sizes, density = drawn[0].axes
    # cell sizes 6-24 in unit bins; the test split as bars of density: 6 twice of 4, 10, 24
    edges, heights = _bars(sizes.containers[0])
    assert edges == pytest.approx(np.arange(5.5, 25.0, 1.0))
    expected = np.zeros(19)
    expected[[0, 4, 18]] = [0.5, 0.25, 0.25]
    assert heights == pytest.approx(expected)
    # the model as an outline: its highest step is 8 atoms, twice of 4 (0.5)
    [outline] = [p for p in sizes.patches if p not in sizes.containers[0]]
    assert outline.get_xy()[:, 1].max() == pytest.approx(0.5)
    assert _legend(sizes) == ["cdvae (n=4)", "test split (n=4)"]
    assert _legend(density) == ["cdvae (n=3)", "test split (n=3)"]
    assert sizes.get_xlabel() == "atoms per cell" and density.get_xlabel() == "density (g/cm³)"
    _check_png(plot_distributions({}, tmp_path / "none.png"))
