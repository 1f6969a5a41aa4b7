"""The ``dataset`` pseudo-model: a SMOKE-TEST stand-in for a generator, not a generator.

It "samples" by taking the first ``n`` structures of a dataset split and rattling their atoms
(Gaussian displacements of ``rattle`` Å, seeded), then writes a normal sample directory
(:mod:`dftloop_io.samples`). Its only purpose is to exercise the orchestration (store, relaxers,
Prefect deployments) end to end on CPU in seconds, before or without a trained generator. Its
numbers say nothing about any generative model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

SMOKE_MODEL = "dataset"
"""Model name of the pseudo-model in flows, CLI and the store's provenance."""


def load_structures(
    dataset: str, split: str, limit: int, data_dir: str | os.PathLike[str] | None = None
) -> list[tuple[str, Structure]]:
    """Return the first ``limit`` ``(material_id, structure)`` pairs of a split.

    Uses ``generators.data.load_split`` when the data layer provides it; otherwise reads the
    CDVAE-format CSV (``<data dir>/<dataset>/<split>.csv``) directly.

    Parameters
    ----------
    dataset, split
        E.g. ``"perov_5"``, ``"val"``.
    limit
        Number of structures.
    data_dir
        Data directory override.

    Returns
    -------
    list of (str, Structure)
        Unparseable rows are skipped with their reason in the raised error only if none is left.
    """
    try:
        from generators.data import load_split  # type: ignore[attr-defined]
    except ImportError:
        load_split = None
    if load_split is not None:
        ds = load_split(dataset, split, data_dir=data_dir, limit=limit)
        return [(r.material_id, r.structure) for r in ds.records][:limit]
    return _read_csv(dataset, split, limit, data_dir)


def _read_csv(
    dataset: str, split: str, limit: int, data_dir: str | os.PathLike[str] | None
) -> list[tuple[str, Structure]]:
    import pandas as pd

    from generators.data.locations import data_roots

    roots = [Path(data_dir)] if data_dir else data_roots()
    for root in roots:
        path = root / dataset / f"{split}.csv"
        if path.is_file():
            break
    else:
        raise FileNotFoundError(f"no {dataset}/{split}.csv under {[str(r) for r in roots]}")
    frame = pd.read_csv(path, nrows=limit * 2 + 10)
    out, errors = [], []
    for _, row in frame.iterrows():
        try:
            out.append((str(row["material_id"]), Structure.from_str(row["cif"], fmt="cif")))
        except Exception as exc:  # one bad row is reported, the rest goes on
            errors.append(f"{row['material_id']}: {exc}")
        if len(out) == limit:
            break
    if not out:
        raise ValueError(f"no readable structure in {path}: {errors[:3]}")
    return out


def sample_from_dataset(
    dataset: str,
    n: int,
    out_dir: str | os.PathLike[str],
    *,
    split: str = "val",
    rattle: float = 0.05,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    chunk_size: int = 100,
) -> Path:
    """Write a sample directory of ``n`` rattled dataset structures.

    Parameters
    ----------
    dataset, split
        Source split.
    n
        Number of samples.
    out_dir
        Sample directory to write.
    rattle
        Standard deviation of the Gaussian displacement of every atom, Å.
    seed
        Random seed of the displacements.
    data_dir
        Data directory override.
    chunk_size
        Samples per chunk file.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from dftloop_io.samples import SampleRecord, write_chunk, write_index

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i, (material_id, structure) in enumerate(load_structures(dataset, split, n, data_dir)):
        cart = structure.cart_coords + rng.normal(0.0, rattle, size=(len(structure), 3))
        rattled = Structure(structure.lattice, structure.species, cart, coords_are_cartesian=True)
        records.append(SampleRecord(f"{SMOKE_MODEL}-{i:05d}", rattled, target_id=material_id))
    chunks = []
    for number, start in enumerate(range(0, len(records), chunk_size)):
        chunks.append(write_chunk(out, number, records[start : start + chunk_size]))
    index: dict[str, Any] = {
        "model": SMOKE_MODEL,
        "dataset": dataset,
        "mode": "generate",
        "checkpoint_sha256": None,
        "chunk_size": chunk_size,
        "total": len(records),
        "chunks": chunks,
        "smoke_test": {"split": split, "rattle_angstrom": rattle, "seed": seed},
    }
    write_index(out, index)
    return out
