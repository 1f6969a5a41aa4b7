"""Package borders: the library packages never import the orchestrator, relaxers and metrics never
import the generators, and the shared I/O package imports none of them (nor torch, nor Prefect).

The check reads the source with ``ast`` (nothing is imported), so an import inside a function
body counts as much as one at the top of a module, and so does
``importlib.import_module("literal")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN: dict[str, frozenset[str]] = {
    "generators": frozenset({"flows"}),
    "relax": frozenset({"flows", "generators"}),
    "analysis": frozenset({"flows", "generators"}),
    "dftloop_io": frozenset({"flows", "generators", "relax", "analysis", "torch", "prefect"}),
}
"""Package -> top-level modules it must not import."""


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module, nested ones included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            if name in ("import_module", "__import__") and literal:
                found.append((node.lineno, first.value))
    return found


def border_violations(root: Path) -> list[str]:
    """Every forbidden import under ``root`` as ``"path:line: package imports module"``.

    Relative imports stay inside their own package and are allowed.
    """
    problems: list[str] = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, module in _imported_modules(tree):
                if module.split(".")[0] in forbidden:
                    where = path.relative_to(root)
                    problems.append(f"{where}:{line}: {package} imports {module}")
    return problems


def test_the_packages_keep_their_borders() -> None:
    assert [p for p in FORBIDDEN if (ROOT / p).is_dir()] == list(FORBIDDEN)
    assert border_violations(ROOT) == []


@pytest.fixture
def crossing_tree(tmp_path: Path) -> Path:
    """A small source tree with one allowed and five forbidden imports."""
    files = {
        "generators/ok.py": "import analysis.matching\nfrom dftloop_io.samples import FORMAT\n",
        "generators/bad.py": "def f():\n    from flows.store import dftloop_home\n",
        "relax/bad.py": "import os\n\n\ndef g():\n    import generators.sample_io\n",
        "analysis/bad.py": (
            "import importlib\n\nM = importlib.import_module('flows.tasks')\n"
            "from . import sibling\n"
        ),
        "analysis/sibling.py": "",
        "dftloop_io/bad.py": "import torch\n",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "analysis" / "nested").mkdir()
    (tmp_path / "analysis" / "nested" / "deep.py").write_text("from generators.data import x\n")
    return tmp_path


def test_a_crossing_import_is_reported(crossing_tree: Path) -> None:
    assert border_violations(crossing_tree) == [
        "generators/bad.py:2: generators imports flows.store",
        "relax/bad.py:5: relax imports generators.sample_io",
        "analysis/bad.py:3: analysis imports flows.tasks",
        "analysis/nested/deep.py:1: analysis imports generators.data",
        "dftloop_io/bad.py:1: dftloop_io imports torch",
    ]
