"""``load_split``: find the file that serves a split, parse and preprocess it, cache the result."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm.auto import tqdm

from generators.data.cache import (
    CachedRow,
    cache_key,
    cache_path,
    file_sha256,
    read_cache,
    write_cache,
)
from generators.data.locations import cache_dir, data_roots, locate_split
from generators.data.preprocessing import PreprocessOptions, RowParseError, preprocess_text
from generators.data.readers import RawRow, read_csv_rows, read_jarvis_rows
from generators.data.records import CrystalDataset, CrystalRecord, RowError
from generators.data.registry import get_dataset_info, get_split_info

log = logging.getLogger(__name__)

PARALLEL_THRESHOLD = 1500  # rows; below this a process pool costs more than it saves
CHUNK_ROWS = 250


class DataNotFoundError(FileNotFoundError):
    """No file that serves the requested split is present (run ``dftloop data fetch``)."""


def process_row(
    index: int, row: RawRow, property_name: str | None, options: PreprocessOptions
) -> CachedRow:
    """Parse and preprocess one raw row; failures become an error row, never an exception.

    Parameters
    ----------
    index
        Source row index.
    row
        The raw row.
    property_name
        The dataset's main property; NaN there is an error.
    options
        Preprocessing switches.

    Returns
    -------
    CachedRow
        A record row or an error row.
    """
    if (
        property_name is not None
        and property_name in row.properties
        and not math.isfinite(row.properties[property_name])
    ):
        return CachedRow(index, row.material_id, error=f"NaN or missing {property_name}")
    try:
        compact = preprocess_text(row.text, row.fmt, options)
    except RowParseError as exc:
        return CachedRow(index, row.material_id, error=str(exc))
    except Exception as exc:  # a bug or an exotic input must not stop the split
        return CachedRow(index, row.material_id, error=f"{type(exc).__name__}: {exc}")
    return CachedRow(index, row.material_id, structure=compact, properties=dict(row.properties))


def _process_chunk(
    start: int, rows: list[RawRow], property_name: str | None, options: PreprocessOptions
) -> list[CachedRow]:
    return [process_row(start + i, row, property_name, options) for i, row in enumerate(rows)]


def _default_workers() -> int:
    value = os.environ.get("DFTLOOP_DATA_WORKERS", "").strip()
    return max(1, int(value)) if value else 2


def process_rows(
    rows: list[RawRow],
    property_name: str | None,
    options: PreprocessOptions,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "parsing",
) -> list[CachedRow]:
    """Process rows, in a process pool when there are many, with a progress bar.

    Parameters
    ----------
    rows
        Raw rows in source order.
    property_name
        Main property (NaN is an error).
    options
        Preprocessing switches.
    workers
        Process count (default ``DFTLOOP_DATA_WORKERS`` or 2); 1 parses in this process.
    progress
        Show a tqdm bar.
    desc
        Bar label.

    Returns
    -------
    list[CachedRow]
        One entry per row, in source order.
    """
    workers = _default_workers() if workers is None else max(1, workers)
    bar = tqdm(total=len(rows), desc=desc, unit="row", disable=not progress, leave=False)
    out: list[CachedRow] = []
    try:
        if workers == 1 or len(rows) < PARALLEL_THRESHOLD:
            for i, row in enumerate(rows):
                out.append(process_row(i, row, property_name, options))
                bar.update(1)
            return out
        try:
            out = _process_in_pool(rows, property_name, options, workers, bar)
        except (BrokenProcessPool, OSError, RuntimeError) as exc:
            log.warning("process pool failed (%s); parsing %d rows in this process", exc, len(rows))
            bar.reset()
            out = [process_row(i, row, property_name, options) for i, row in enumerate(rows)]
            bar.update(len(rows))
        out.sort(key=lambda r: r.row)
        return out
    finally:
        bar.close()


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork: workers start at once and a user script without a __main__ guard still works;
    # the workers only run pymatgen/numpy (no torch/OpenMP), so forking is safe here.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _process_in_pool(
    rows: list[RawRow],
    property_name: str | None,
    options: PreprocessOptions,
    workers: int,
    bar: tqdm,
) -> list[CachedRow]:
    out: list[CachedRow] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
        futures = [
            pool.submit(_process_chunk, s, rows[s : s + CHUNK_ROWS], property_name, options)
            for s in range(0, len(rows), CHUNK_ROWS)
        ]
        for future in as_completed(futures):
            chunk = future.result()
            out.extend(chunk)
            bar.update(len(chunk))
    return out


def _read_rows(path: Path, fmt: str, split: str, columns: tuple[str, ...], limit: int | None):
    if fmt == "csv":
        return read_csv_rows(path, columns, limit=limit)
    return read_jarvis_rows(path, split, limit=limit)


def load_split(
    dataset: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    *,
    use_cache: bool = True,
    workers: int | None = None,
    progress: bool = True,
    options: PreprocessOptions | None = None,
) -> CrystalDataset:
    """Load one split of a benchmark dataset as preprocessed structures.

    Parameters
    ----------
    dataset
        ``perov_5``, ``carbon_24``, ``mp_20`` or ``mpts_52``.
    split
        ``train``, ``val`` or ``test``.
    data_dir
        Search only this directory (default: ``DFTLOOP_DATA_DIR``, ``../shared/data``, the
        download directory).
    limit
        Load only the first ``limit`` rows (the rest of the file is not parsed).
    use_cache
        Read/write the preprocessed cache (``DFTLOOP_CACHE_DIR``). A limited load is
        answered from a full-split cache when there is one but never writes one.
    workers
        Parsing processes (default 2); pools are used only for large splits.
    progress
        Show a progress bar while parsing.
    options
        Preprocessing switches (default: the papers' preprocessing).

    Returns
    -------
    CrystalDataset
        Records in source order and one ``RowError`` per row that failed.

    Raises
    ------
    KeyError
        Unknown dataset or split.
    DataNotFoundError
        No file that serves the split is present.
    """
    info = get_dataset_info(dataset)
    split_info = get_split_info(dataset, split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    options = options or PreprocessOptions()
    located = locate_split(dataset, split, data_dir)
    if located.path is None:
        urls = ", ".join(s.url for s in split_info.sources)
        raise DataNotFoundError(
            f"{dataset}/{split}: no data file found (looked for "
            f"{', '.join(s.relpath for s in split_info.sources)} under "
            f"{', '.join(str(r) for r in data_roots(data_dir))}); run "
            f"`dftloop data fetch {dataset} --split {split}` (downloads from {urls})"
        )
    source, path = located.source, located.path
    columns = info.property_columns if source.has_properties else ()
    missing_props: tuple[str, ...] = () if source.has_properties else info.property_columns

    notes: list[str] = []
    if source.subset_note:
        notes.append(source.subset_note)
    if not source.has_properties:
        notes.append(
            f"source {source.relpath} has no property columns: "
            f"{', '.join(info.property_columns)} unavailable"
        )
    if limit is not None:
        notes.append(f"limited to the first {limit} rows")

    return _load(
        path,
        source.format,
        dataset,
        split,
        columns,
        info.property_name if source.has_properties else None,
        missing_props,
        notes,
        limit=limit,
        use_cache=use_cache,
        workers=workers,
        progress=progress,
        options=options,
    )


def small_crystals(
    dataset: str,
    n: int,
    max_atoms: int = 8,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    scan: int = 400,
) -> list[CrystalRecord]:
    """The first ``n`` crystals of a split with at most ``max_atoms`` atoms, in source order.

    The memorisation checks (the slow CDVAE/DP-CDVAE tests and
    ``benchmarks/cdvae_memorised_sampling.py``) train and measure on these crystals.

    Parameters
    ----------
    dataset, split
        Which benchmark split (``train`` by default).
    n
        How many crystals.
    max_atoms
        Largest number of atoms per crystal.
    data_dir
        As for :func:`load_split`.
    scan
        Rows of the split that are read to find them.

    Raises
    ------
    ValueError
        Fewer than ``n`` such crystals among the first ``scan`` rows.
    """
    records = load_split(dataset, split, data_dir=data_dir, limit=scan, progress=False).records
    chosen = [r for r in records if len(r.structure) <= max_atoms][:n]
    if len(chosen) < n:
        raise ValueError(
            f"{dataset}/{split}: only {len(chosen)} of the first {scan} rows have at most "
            f"{max_atoms} atoms; {n} were asked for"
        )
    return chosen


def load_file(
    path: str | os.PathLike[str],
    *,
    like: str = "mp_20",
    split: str = "train",
    limit: int | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    progress: bool = True,
    options: PreprocessOptions | None = None,
) -> CrystalDataset:
    """Load a CSV or JARVIS ``.json.zip`` outside the registry (e.g. ``fetch-mp`` output).

    Parameters
    ----------
    path
        The file.
    like
        Registry dataset whose schema (property columns, main property) the file follows.
    split
        Split name (selects the key of a JARVIS file; a label for a CSV).
    limit, use_cache, workers, progress, options
        As in :func:`load_split`.

    Returns
    -------
    CrystalDataset
        The loaded file (``dataset`` is ``like``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such file")
    info = get_dataset_info(like)
    fmt = "jarvis_json_zip" if path.name.endswith(".json.zip") else "csv"
    has_props = fmt == "csv"
    return _load(
        path,
        fmt,
        like,
        split,
        info.property_columns if has_props else (),
        info.property_name if has_props else None,
        () if has_props else info.property_columns,
        [f"limited to the first {limit} rows"] if limit is not None else [],
        limit=limit,
        use_cache=use_cache,
        workers=workers,
        progress=progress,
        options=options or PreprocessOptions(),
    )


def _load(
    path: Path,
    fmt: str,
    dataset: str,
    split: str,
    columns: tuple[str, ...],
    property_name: str | None,
    missing_props: tuple[str, ...],
    notes: list[str],
    *,
    limit: int | None,
    use_cache: bool,
    workers: int | None,
    progress: bool,
    options: PreprocessOptions,
) -> CrystalDataset:
    t0 = time.perf_counter()
    cached_rows: list[CachedRow] | None = None
    entry: Path | None = None
    digest = key = ""
    if use_cache:
        digest = file_sha256(path)
        key = cache_key(digest, split, columns, options)
        entry = cache_path(cache_dir(), dataset, split, key)
        cached_rows = read_cache(entry)
    from_cache = cached_rows is not None
    if cached_rows is not None:
        rows = cached_rows if limit is None else [r for r in cached_rows if r.row < limit]
    else:
        raw = _read_rows(path, fmt, split, columns, limit)
        rows = process_rows(
            raw,
            property_name,
            options,
            workers,
            progress,
            desc=f"{dataset}/{split}",
        )
        if use_cache and limit is None and entry is not None:
            meta = {"dataset": dataset, "split": split, "source": str(path), "sha256": digest}
            write_cache(entry, rows, meta)

    records: list[CrystalRecord] = []
    errors: list[RowError] = []
    for r in rows:
        if r.error is not None or r.structure is None:
            errors.append(RowError(r.material_id, r.error or "no structure"))
        else:
            records.append(
                CrystalRecord(
                    material_id=r.material_id,
                    structure=r.structure.to_structure(),
                    properties=dict(r.properties or {}),
                    missing_properties=missing_props,
                )
            )
    for err in errors:
        log.warning("%s/%s: row %s skipped: %s", dataset, split, err.material_id, err.reason)
    log.info(
        "%s/%s: %d records, %d errors from %s in %.2f s (cache %s)",
        dataset,
        split,
        len(records),
        len(errors),
        path,
        time.perf_counter() - t0,
        "hit" if from_cache else "miss",
    )
    return CrystalDataset(
        dataset=dataset,
        split=split,
        records=records,
        errors=errors,
        source_path=str(path),
        source_format=fmt,
        notes=notes,
        limit=limit,
        from_cache=from_cache,
        content_key=key,
    )
