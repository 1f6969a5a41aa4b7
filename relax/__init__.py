"""Structure relaxation behind one interface: CHGNet (batched), Quantum ESPRESSO, VASP.

>>> from relax import get_relaxer
>>> relaxer = get_relaxer("chgnet+espresso")  # doctest: +SKIP
>>> results = relaxer.relax([("id-1", structure)])  # doctest: +SKIP

Importing :mod:`relax` is cheap: CHGNet, torch and ASE calculators load only when a relaxer that
needs them is built.
"""

from __future__ import annotations

from relax.base import Relaxer, RelaxResult, check_structure, settings_hash
from relax.registry import available_relaxers, get_relaxer

__all__ = [
    "RelaxResult",
    "Relaxer",
    "available_relaxers",
    "check_structure",
    "get_relaxer",
    "settings_hash",
]
