"""Fixtures shared by every test folder: the ../shared paths, the model-card script and a
single-threaded torch."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DFTLOOP_SHARED_DIR", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder that CI places beside the checkout."""
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}; set DFTLOOP_SHARED_DIR")
    return SHARED


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    """Benchmark data, read in place (never copied into the project)."""
    return shared_dir / "data"


@pytest.fixture(scope="session")
def pseudo_dir(shared_dir: Path) -> Path:
    """SSSP 1.3.0 PBE efficiency pseudopotentials."""
    return shared_dir / "pseudos" / "SSSP_1.3.0_PBE_efficiency"


@pytest.fixture(scope="session")
def vasp_reference_dir(shared_dir: Path) -> Path:
    """Recorded VASP inputs/outputs and custodian error cases."""
    return shared_dir / "vasp_reference"


@pytest.fixture(scope="session")
def zoo_card() -> ModuleType:
    """``benchmarks/zoo_card.py`` (the model-card script) loaded as a module."""
    path = ROOT / "benchmarks" / "zoo_card.py"
    spec = importlib.util.spec_from_file_location("zoo_card", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    """Keep torch to one thread: CI has two cores and runs services beside the tests."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    torch.set_num_threads(int(os.environ.get("DFTLOOP_TEST_THREADS", "1")))
