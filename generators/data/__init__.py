"""Benchmark and Materials Project data: loading, preprocessing, caching and downloads.

See ``docs/data.md`` and ``docs/architecture.md`` §1.
"""

from __future__ import annotations

from generators.data.loading import DataNotFoundError, load_split, small_crystals
from generators.data.locations import cache_dir, data_dir, download_dir, locate_split
from generators.data.preprocessing import PreprocessOptions, preprocess_structure
from generators.data.records import CrystalDataset, CrystalRecord, RowError
from generators.data.registry import DATASETS, SPLITS, DatasetInfo, FileSource, SplitInfo

__all__ = [
    "DATASETS",
    "SPLITS",
    "CrystalDataset",
    "CrystalRecord",
    "DataNotFoundError",
    "DatasetInfo",
    "FileSource",
    "PreprocessOptions",
    "RowError",
    "SplitInfo",
    "cache_dir",
    "data_dir",
    "download_dir",
    "load_split",
    "locate_split",
    "preprocess_structure",
    "small_crystals",
]
