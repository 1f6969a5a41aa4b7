"""Batched, resumable sampling of a trained generator into a sample directory.

Three modes:

* ``generate``: ``n`` crystals ab initio;
* ``csp``: for each structure of a split, ``k`` candidates with its composition
  (``target_id`` = material id, ``candidate`` = 0..k−1);
* ``reconstruct``: encode and decode each structure of a split (the VAE models).

Work is cut into chunks of ``chunk_size`` items. Each chunk is sampled with its own
generator seeded from (seed, chunk number), converted to structures at the edge
(:func:`generators.crystal.batch_to_structures`: an unbuildable crystal becomes a record with an
error) and written with :mod:`dftloop_io.samples` (chunk file, then the index rewritten
atomically). A rerun of the same command skips the chunks the index lists, and because the
seeds depend only on the chunk number, a resumed run produces the same samples as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from tqdm.auto import tqdm

from dftloop_io.samples import (
    SampleRecord,
    chunk_name,
    load_samples,
    read_index,
    write_chunk,
    write_index,
)
from generators.crystal import batch_to_structures, data_list_to_batch, structure_to_data
from generators.model_zoo import file_sha256
from generators.models.base import CrystalGenerator, require_task

MODES = ("generate", "csp", "reconstruct")
MAX_VOLUME_PER_ATOM = 1000.0
"""Å³ per atom above which a sample's cell counts as oversized (solids hold 5-100 Å³ per atom)."""

logger = logging.getLogger(__name__)
_RESUME_KEYS = (
    "model",
    "dataset",
    "mode",
    "checkpoint_sha256",
    "chunk_size",
    "total",
    "seed",
    "split",
    "k",
    "steps",
)


@dataclass
class SamplingSummary:
    """What a sampling run did.

    Attributes
    ----------
    out_dir
        The sample directory.
    total
        Number of samples the directory holds when complete.
    chunks_written
        Chunks produced by this call.
    chunks_skipped
        Chunks found finished from an earlier run.
    failed
        Samples of this call that could not be built (records with an error).
    seconds
        Wall time of this call.
    oversized
        Samples of this call whose cell holds more than :data:`MAX_VOLUME_PER_ATOM` per atom:
        lattices the reverse process did not bring back from noise, the mark of a model
        that has not learnt the noise at large diffusion times (often an undertrained
        checkpoint). They are kept as sampled: the papers' validity check (shortest distance,
        smallest volume) does not reject them, but they match no target.
    """

    out_dir: Path
    total: int
    chunks_written: int
    chunks_skipped: int
    failed: int
    seconds: float
    oversized: int = 0


@dataclass
class _Item:
    target_id: str | None
    candidate: int
    template: Data | None
    error: str | None = None


def chunk_seed(seed: int, chunk: int) -> int:
    """The generator seed of chunk ``chunk`` (independent of how many chunks ran before)."""
    state = np.random.SeedSequence([int(seed), int(chunk)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def plan_items(
    mode: str,
    *,
    n: int | None = None,
    records: Sequence[Any] | None = None,
    k: int = 1,
) -> list[_Item]:
    """The ordered work list of a run.

    Parameters
    ----------
    mode
        ``generate``, ``csp`` or ``reconstruct``.
    n
        Number of crystals (``generate``).
    records
        ``CrystalRecord``-like items with ``material_id`` and ``structure`` (``csp``,
        ``reconstruct``); one that cannot be converted becomes an item with an error.
    k
        Candidates per structure (``csp``), target-major order.
    """
    if mode not in MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {MODES}")
    if mode == "generate":
        if n is None or n < 1:
            raise ValueError(f"generate needs a positive number of crystals, got n={n!r}")
        return [_Item(None, 0, None) for _ in range(n)]
    if not records:
        raise ValueError(f"{mode} needs target structures, and the split is empty")
    if k < 1:
        raise ValueError(f"k (candidates per structure) must be >= 1, got {k}")
    if mode == "reconstruct" and k != 1:
        raise ValueError("reconstruct makes one sample per structure (k must be 1)")
    items: list[_Item] = []
    for record in records:
        material_id = str(record.material_id)
        try:
            template: Data | None = structure_to_data(record.structure, material_id=material_id)
            error = None
        except Exception as exc:
            template, error = None, f"cannot convert target {material_id}: {exc}"
        items.extend(_Item(material_id, c, template, error) for c in range(k))
    return items


def run_sampling(
    model: CrystalGenerator,
    out_dir: str | os.PathLike[str],
    mode: str,
    items: Sequence[_Item],
    *,
    dataset: str,
    checkpoint_sha256: str,
    chunk_size: int = 100,
    seed: int = 0,
    steps: int | None = None,
    k: int = 1,
    split: str | None = None,
    extra_index: dict[str, Any] | None = None,
    progress: bool = True,
    on_chunk: Callable[[int, list[SampleRecord]], None] | None = None,
    compile_model: bool = False,
) -> SamplingSummary:
    """Sample ``items`` with ``model`` into ``out_dir``, resuming a previous run there.

    Parameters
    ----------
    model
        A generator in eval mode.
    out_dir
        The sample directory (created).
    mode
        ``generate``, ``csp`` or ``reconstruct``.
    items
        From :func:`plan_items`.
    dataset, checkpoint_sha256
        Recorded in the index (and checked on resume).
    chunk_size
        Samples per chunk file, also the batch size of a model call.
    seed
        Base seed; chunk c uses :func:`chunk_seed` (seed, c).
    steps
        Number of sampling steps passed to the model (``None``: its default).
    k, split
        Recorded in the index.
    extra_index
        More index fields (config name, checkpoint path, ...).
    progress
        Show a progress bar.
    on_chunk
        Called with (chunk number, records) after each chunk is written.
    compile_model
        Run the network through ``torch.compile`` (DiffCSP; other models ignore it). Off by
        default: compiling takes tens of seconds per batch shape and pays off only for long
        runs; the samples are the same to float rounding.

    Raises
    ------
    ValueError
        If the model cannot do ``mode``, or ``out_dir`` holds a different run.
    """
    require_task(model, mode)
    if chunk_size < 1:
        raise ValueError(f"chunk size (batch size) must be >= 1, got {chunk_size}")
    tic = time.monotonic()
    out = Path(out_dir)
    total = len(items)
    n_chunks = (total + chunk_size - 1) // chunk_size
    index: dict[str, Any] = {
        "model": model.name,
        "dataset": dataset,
        "mode": mode,
        "checkpoint_sha256": checkpoint_sha256,
        "chunk_size": chunk_size,
        "total": total,
        "seed": seed,
        "split": split,
        "k": k,
        "steps": steps,
        **(extra_index or {}),
        "chunks": [],
    }
    if (out / "index.json").is_file():
        previous = read_index(out)
        different = {
            key: (previous.get(key), index[key])
            for key in _RESUME_KEYS
            if previous.get(key) != index[key]
        }
        if different:
            raise ValueError(
                f"{out} holds samples of a different run (field: (there, asked)): {different}; "
                "use another output directory"
            )
        index["chunks"] = list(previous.get("chunks", []))
    done = set(index["chunks"])
    write_index(out, index)
    model.configure_sampling(
        steps=steps, candidates=k, compile=compile_model or None, progress=progress
    )
    device = model.device
    skipped = sum(1 for c in range(n_chunks) if chunk_name(c) in done)
    written = failed = oversized = 0
    bar = tqdm(
        total=total,
        initial=min(total, skipped * chunk_size),
        desc=f"sample {model.name} {mode}",
        unit="crystal",
        disable=not progress,
    )
    try:
        for chunk in range(n_chunks):
            if chunk_name(chunk) in done:
                continue
            chunk_items = items[chunk * chunk_size : (chunk + 1) * chunk_size]
            generator = torch.Generator(device=device).manual_seed(chunk_seed(seed, chunk))
            records = _sample_chunk(model, mode, chunk, chunk_items, generator, device)
            failed += sum(r.error is not None for r in records)
            big = count_oversized(records)
            if big:
                logger.warning(
                    "%s chunk %d: %d of %d samples have more than %g Å³ per atom "
                    "(a lattice not brought back from noise: is the checkpoint trained enough?)",
                    model.name,
                    chunk,
                    big,
                    len(records),
                    MAX_VOLUME_PER_ATOM,
                )
            oversized += big
            index["chunks"].append(write_chunk(out, chunk, records))
            write_index(out, index)
            written += 1
            bar.update(len(chunk_items))
            if on_chunk is not None:
                on_chunk(chunk, records)
    finally:
        bar.close()
    return SamplingSummary(out, total, written, skipped, failed, time.monotonic() - tic, oversized)


def count_oversized(records: Sequence[SampleRecord], limit: float = MAX_VOLUME_PER_ATOM) -> int:
    """Number of records whose structure has more than ``limit`` Å³ per atom.

    Parameters
    ----------
    records
        Sample records; those without a structure are not counted.
    limit
        Volume per atom, Å³.
    """
    return sum(
        r.structure is not None and r.structure.volume / len(r.structure) > limit for r in records
    )


def _sample_chunk(
    model: CrystalGenerator,
    mode: str,
    chunk: int,
    items: Sequence[_Item],
    generator: torch.Generator,
    device: torch.device,
) -> list[SampleRecord]:
    """Sample one chunk; items that were already bad are recorded without a model call."""
    good = [i for i, item in enumerate(items) if item.error is None]
    structures: dict[int, Any] = {}
    errors: dict[int, str | None] = {i: item.error for i, item in enumerate(items)}
    if good:
        with torch.no_grad():
            if mode == "generate":
                batch = model.sample_generate(len(good), generator)
            else:
                template = data_list_to_batch([items[i].template for i in good]).to(device)
                if mode == "csp":
                    batch = model.sample_csp(template, generator)
                else:
                    batch = model.reconstruct(template, generator)
        built, reasons = batch_to_structures(batch)
        if len(built) != len(good):
            raise RuntimeError(
                f"{model.name} returned {len(built)} crystals for {len(good)} requested "
                f"(chunk {chunk})"
            )
        for i, structure, reason in zip(good, built, reasons, strict=True):
            structures[i] = structure
            errors[i] = reason
    return [
        SampleRecord(
            sample_id=f"{chunk}-{row}",
            structure=structures.get(row),
            target_id=item.target_id,
            candidate=item.candidate,
            error=errors[row],
        )
        for row, item in enumerate(items)
    ]


def sample(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    mode: str,
    *,
    n: int | None = None,
    split: str = "test",
    k: int = 1,
    limit: int | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    on_chunk: Callable[[int, list[SampleRecord]], None] | None = None,
    compile_model: bool = False,
) -> SamplingSummary:
    """Sample from a checkpoint into ``out_dir`` (resuming what is there).

    Parameters
    ----------
    checkpoint
        A trainer checkpoint (``best.pt`` / ``last.pt``).
    out_dir
        Sample directory.
    mode
        ``generate`` (needs ``n``), ``csp`` (``split``, ``k``) or ``reconstruct`` (``split``).
    n, split, k, limit
        What to sample; ``limit`` caps the number of target structures of ``split``.
    batch_size
        Crystals per model call and per chunk file (default: the config's ``sample.batch_size``
        or 100).
    steps
        Sampling steps (default: the model's; DiffCSP 1000).
    seed
        Base seed of the per-chunk generators.
    device
        Device override (default CUDA when available).
    data_dir
        Dataset directory for the target structures.
    progress
        Show progress bars.
    on_chunk
        Called after each chunk (used by tests to interrupt a run).
    compile_model
        ``torch.compile`` the network (see :func:`run_sampling`).
    """
    from generators.trainer import load_checkpoint

    model, meta = load_checkpoint(checkpoint, device=device)
    dataset = meta["dataset"]
    if mode == "generate":
        items = plan_items(mode, n=n)
        split_name = None
    else:
        from generators.data import load_split

        loaded = load_split(dataset, split, data_dir=data_dir, limit=limit, progress=progress)
        items = plan_items(mode, records=loaded.records, k=k)
        items += [
            _Item(e.material_id, c, None, f"unreadable target: {e.reason}")
            for e in loaded.errors
            for c in range(k)
        ]
        split_name = split
    size = batch_size or int(meta["config"].get("sample", {}).get("batch_size", 100))
    return run_sampling(
        model,
        out_dir,
        mode,
        items,
        dataset=dataset,
        checkpoint_sha256=file_sha256(meta["path"]),
        chunk_size=size,
        seed=seed,
        steps=steps,
        k=k,
        split=split_name,
        extra_index={
            "checkpoint": str(Path(meta["path"]).resolve()),
            "checkpoint_name": meta.get("registry_name"),
            "config": meta["config"].get("name"),
            "limit": limit,
        },
        progress=progress,
        on_chunk=on_chunk,
        compile_model=compile_model,
    )


def batch_from_items(items: Sequence[_Item]) -> Batch:
    """The template batch of items (for callers that sample outside :func:`run_sampling`)."""
    return data_list_to_batch([i.template for i in items if i.template is not None])


__all__ = [
    "MODES",
    "SamplingSummary",
    "chunk_seed",
    "load_samples",
    "plan_items",
    "run_sampling",
    "sample",
]
