"""t-intervals, the resolution of a permutation p-value, and what a sample size can detect.

The percentile bootstrap of :mod:`analysis.stability` is too narrow at small ``n`` (at ``n = 10``
it undercovers noticeably); the Student-t intervals here are printed beside it.

Definitions
-----------
``t_interval``
    ``mean ± t_{(1+c)/2, n-1} · s / sqrt(n)`` (``s`` with ``ddof = 1``).
``welch_interval``
    ``mean(a) - mean(b) ± t_{(1+c)/2, ν} · sqrt(s_a²/n_a + s_b²/n_b)`` with the
    Welch–Satterthwaite ``ν``.
``p_value_text``
    A permutation p-value ``(1 + k) / (1 + N)``: with ``k = 0`` none of the ``N`` permutations
    was as extreme as the data, and the value is the resolution of the test, not a measurement:
    printed ``"< 1/N"``.
``minimum_detectable_difference``
    The smallest true difference of means a two-sided two-sample t-test (pooled standard
    deviation ``s``, level ``alpha``) detects with probability ``power``, found by solving
    ``P(|T| > t_crit | ncp = δ / (s sqrt(1/n_a + 1/n_b))) = power`` for ``δ`` with the noncentral
    t distribution (``scipy.stats.nct``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats


def _clean(values: Sequence[float | None]) -> np.ndarray:
    return np.array(
        [float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=float
    )


def t_interval(
    values: Sequence[float | None], confidence: float = 0.95
) -> tuple[float | None, float | None]:
    """Student-t confidence interval of the mean.

    Parameters
    ----------
    values
        The sample (``None``/NaN left out).
    confidence
        Coverage, in (0, 1).

    Returns
    -------
    tuple
        ``(low, high)``; ``(None, None)`` for fewer than two values.
    """
    data = _clean(values)
    if data.size < 2:
        return None, None
    half = (
        stats.t.ppf((1 + confidence) / 2, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size)
    )
    return float(data.mean() - half), float(data.mean() + half)


def welch_satterthwaite_df(var_a: float, var_b: float, n_a: int, n_b: int) -> float:
    """Welch–Satterthwaite degrees of freedom of a difference of two independent means.

    Parameters
    ----------
    var_a, var_b
        Squared standard errors of the two means (``s²/n``), not both zero.
    n_a, n_b
        Sample sizes (at least two each).

    Returns
    -------
    float
        ``(v_a + v_b)² / (v_a²/(n_a − 1) + v_b²/(n_b − 1))``.
    """
    return (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))


def welch_interval(
    values_a: Sequence[float | None],
    values_b: Sequence[float | None],
    confidence: float = 0.95,
) -> tuple[float | None, float | None]:
    """Welch t-interval of ``mean(a) - mean(b)``.

    Parameters
    ----------
    values_a, values_b
        The two samples (``None``/NaN left out).
    confidence
        Coverage, in (0, 1).

    Returns
    -------
    tuple
        ``(low, high)``; ``(None, None)`` when a group has fewer than two values or both have
        no spread.
    """
    a, b = _clean(values_a), _clean(values_b)
    if a.size < 2 or b.size < 2:
        return None, None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return None, None
    nu = welch_satterthwaite_df(va, vb, a.size, b.size)
    half = stats.t.ppf((1 + confidence) / 2, nu) * se
    diff = float(a.mean() - b.mean())
    return float(diff - half), float(diff + half)


def p_value_text(p_value: float | None, n_permutations: int) -> str:
    """A permutation p-value as text: ``"< 1/N"`` at the resolution of the test.

    Parameters
    ----------
    p_value
        ``(1 + k) / (1 + N)`` from the permutation test, or ``None``.
    n_permutations
        ``N``.

    Returns
    -------
    str
        ``""`` for ``None``; ``"< 1/N"`` when ``k = 0``; else the value to 2 significant digits.
    """
    if p_value is None:
        return ""
    if p_value <= 1.0 / (1 + n_permutations) * (1 + 1e-9):
        return f"< 1/{n_permutations}"
    return f"{p_value:.2g}"


def pooled_std(values_a: Sequence[float | None], values_b: Sequence[float | None]) -> float | None:
    """Pooled standard deviation of two samples (``None`` for fewer than 3 values in all)."""
    a, b = _clean(values_a), _clean(values_b)
    dof = a.size + b.size - 2
    if dof < 1 or a.size < 1 or b.size < 1:
        return None
    ss = (a.size - 1) * (a.var(ddof=1) if a.size > 1 else 0.0)
    ss += (b.size - 1) * (b.var(ddof=1) if b.size > 1 else 0.0)
    return math.sqrt(ss / dof)


def t_test_power(difference: float, n_a: int, n_b: int, std: float, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test (pooled variance) for a true difference.

    Parameters
    ----------
    difference
        True difference of means.
    n_a, n_b
        Group sizes (each ≥ 2).
    std
        Common standard deviation (> 0).
    alpha
        Level of the test.

    Returns
    -------
    float
        Probability of rejecting the null hypothesis.
    """
    dof = n_a + n_b - 2
    ncp = abs(difference) / (std * math.sqrt(1.0 / n_a + 1.0 / n_b))
    crit = stats.t.ppf(1 - alpha / 2, dof)
    upper = float(stats.nct.sf(crit, dof, ncp))
    lower = float(stats.nct.cdf(-crit, dof, ncp))  # NaN far in the tail (scipy 1.17): ~0
    if not math.isfinite(upper):
        upper = 1.0 if ncp > crit else 0.0
    return upper + (lower if math.isfinite(lower) else 0.0)


def minimum_detectable_difference(
    n_a: int, n_b: int, std: float | None, *, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """Smallest true difference of means detected with probability ``power``.

    Parameters
    ----------
    n_a, n_b
        Group sizes.
    std
        Pooled standard deviation of the quantity (:func:`pooled_std`).
    alpha
        Level of the two-sided test.
    power
        Required power.

    Returns
    -------
    float or None
        The difference (same unit as ``std``); ``None`` when a group has fewer than 2 values or
        ``std`` is missing or zero.
    """
    if std is None or not std > 0 or n_a < 2 or n_b < 2:
        return None
    scale = std * math.sqrt(1.0 / n_a + 1.0 / n_b)
    high = 10.0 * scale
    while t_test_power(high, n_a, n_b, std, alpha) < power:
        high *= 2.0
    return float(
        optimize.brentq(
            lambda d: t_test_power(d, n_a, n_b, std, alpha) - power, 0.0, high, xtol=1e-10
        )
    )
