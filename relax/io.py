"""Reading structures to relax (CIF, extxyz, POSCAR, sample directories) and saving results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from relax.base import RelaxResult

RESULTS_FORMAT = "dftloop-relax/1"

_ASE_SUFFIXES = {".xyz", ".extxyz", ".traj"}
_PMG_SUFFIXES = {".cif", ".vasp", ".poscar", ".json"}


def read_structures(
    path: str | Path, *, limit: int | None = None
) -> list[tuple[str, Structure | None, str | None]]:
    """Read the structures of a file or folder, one entry per structure.

    Parameters
    ----------
    path
        A CIF (several data blocks allowed), an extxyz/xyz/ASE trajectory (several frames
        allowed), a POSCAR, a pymatgen structure JSON, a sample directory (with ``index.json``,
        see :mod:`dftloop_io.samples`) or a folder of such files.
    limit
        Keep only the first ``limit`` entries.

    Returns
    -------
    list of (id, structure or None, error or None)
        An unreadable file or sample gives ``(id, None, reason)`` instead of stopping the read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_dir():
        if (path / "index.json").is_file():
            entries = _read_sample_dir(path)
        else:
            entries = []
            for child in sorted(path.iterdir()):
                if child.is_file() and _is_structure_file(child):
                    entries.extend(_read_file(child, prefix=child.stem))
    else:
        entries = _read_file(path, prefix=path.stem)
    return entries[:limit] if limit is not None else entries


def _is_structure_file(path: Path) -> bool:
    name = path.name.upper()
    suffix = path.suffix.lower()
    return suffix in _ASE_SUFFIXES | _PMG_SUFFIXES or name.startswith(("POSCAR", "CONTCAR"))


def _read_file(path: Path, prefix: str) -> list[tuple[str, Structure | None, str | None]]:
    suffix = path.suffix.lower()
    try:
        if suffix in _ASE_SUFFIXES:
            from ase.io import read
            from pymatgen.io.ase import AseAtomsAdaptor

            frames = read(path, index=":")
            structures = [AseAtomsAdaptor.get_structure(a) for a in frames]
        elif suffix == ".cif":
            from pymatgen.io.cif import CifParser

            structures = CifParser(path).parse_structures(primitive=False)
        elif suffix == ".json":
            structures = [Structure.from_dict(json.loads(path.read_text()))]
        else:
            structures = [Structure.from_file(path)]
    except Exception as exc:
        return [(prefix, None, f"could not read {path.name}: {exc}")]
    if not structures:
        return [(prefix, None, f"no structure in {path.name}")]
    if len(structures) == 1:
        return [(prefix, structures[0], None)]
    return [(f"{prefix}-{i}", s, None) for i, s in enumerate(structures)]


def _read_sample_dir(path: Path) -> list[tuple[str, Structure | None, str | None]]:
    from dftloop_io.samples import load_samples

    records = load_samples(path)
    return [
        (
            str(r.sample_id),
            r.structure,
            None if r.structure is not None else f"sample has no structure: {r.error}",
        )
        for r in records
    ]


def unreadable_results(
    entries: Sequence[tuple[str, Structure | None, str | None]], relaxer: Any
) -> dict[str, RelaxResult]:
    """Error results (``invalid_input``) for entries that could not be read."""
    return {
        sid: RelaxResult.failure(sid, relaxer, reason or "no structure", status="invalid_input")
        for sid, structure, reason in entries
        if structure is None
    }


def save_results(
    results: Sequence[RelaxResult], path: str | Path, *, relaxer: str | None = None
) -> Path:
    """Write results as JSON: ``{"format", "relaxer", "n", "results": [RelaxResult...]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": RESULTS_FORMAT,
        "relaxer": relaxer or (results[0].relaxer if results else None),
        "n": len(results),
        "results": [r.model_dump(mode="json") for r in results],
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    return path


def load_results(path: str | Path) -> list[RelaxResult]:
    """Read results written by :func:`save_results` (a bare JSON list is accepted too)."""
    payload = json.loads(Path(path).read_text())
    items = payload["results"] if isinstance(payload, dict) else payload
    return [RelaxResult.model_validate(item) for item in items]
