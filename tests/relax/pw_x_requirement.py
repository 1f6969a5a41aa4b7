"""The mark of tests that run the real pw.x.

On a developer machine without Quantum ESPRESSO these tests are skipped. Under CI (the ``CI``
environment variable set) they always run, so a CI machine whose set-up failed to install pw.x
fails them instead of turning them green by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

HAS_PW = shutil.which("pw.x") is not None

needs_pw = pytest.mark.skipif(
    not HAS_PW and not os.environ.get("CI"),
    reason="pw.x (Debian quantum-espresso) is not installed; under CI these tests fail instead",
)
