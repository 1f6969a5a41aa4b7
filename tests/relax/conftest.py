"""Relax tests: one BLAS thread (3x3 linear algebra with a threaded BLAS spins on a busy box)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    import scipy.linalg  # noqa: F401  (loads the BLAS that threadpoolctl then limits)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
