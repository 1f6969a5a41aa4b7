"""The benchmark datasets: what each split is, which files can serve it, and where they come from.

Every fact here is from ``../shared/data/README.md`` and ``../shared/reference/metrics.md`` §7.
Checksums (sha256) and sizes were computed on the ``../shared/data`` copies, which are
byte-identical to the public files named in ``url``. Where a file is not present here its
checksum is unknown: the registry then records ``sha256=None`` and the downloader verifies
only what is known (size, if recorded; otherwise nothing, and it says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

SplitName = Literal["train", "val", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "val", "test")
SourceFormat = Literal["csv", "jarvis_json_zip"]

CDVAE_RAW = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
DIFFCSP_RAW = "https://raw.githubusercontent.com/jiaor17/DiffCSP/main/data"
JARVIS_RAW = (
    "https://raw.githubusercontent.com/usnistgov/jarvis_leaderboard/main/"
    "jarvis_leaderboard/benchmarks/AI/AtomGen"
)
WYCKOFF_RAW = "https://raw.githubusercontent.com/SymmetryAdvantage/WyckoffTransformer/main/data"


@dataclass(frozen=True)
class FileSource:
    """One file that can serve a split.

    Attributes
    ----------
    relpath
        Path of the file relative to a data root (``<root>/<relpath>``).
    format
        ``"csv"`` (CDVAE/DiffCSP schema, first column an unnamed pandas index, optionally
        gzipped) or ``"jarvis_json_zip"`` (``{train,val,test}: {material_id: POSCAR}``).
    url
        Public download address (raw GitHub file).
    origin
        Human-readable provenance (repository, commit or folder).
    sha256, size
        Expected checksum and byte size, or ``None`` where unknown.
    has_properties
        Whether the file carries property columns.
    subset_note
        Non-empty when the file holds only part of the split (e.g. the MP-20 pilot).
    """

    relpath: str
    format: SourceFormat
    url: str
    origin: str
    sha256: str | None = None
    size: int | None = None
    has_properties: bool = True
    subset_note: str = ""

    @property
    def verification(self) -> str:
        """Describe how a download of this file is verified."""
        if self.sha256:
            return "sha256"
        if self.size:
            return "size only (sha256 unknown: file not in ../shared/data)"
        return "none (checksum and size unknown: file not in ../shared/data)"


@dataclass(frozen=True)
class SplitInfo:
    """Expected size of a split and the files that can serve it, in order of preference.

    Attributes
    ----------
    expected_rows
        Row count of the full split (metrics.md §7).
    rows_verified
        ``False`` where the published count is unverified.
    sources
        Candidate files, best first; the first one present on disk is used.
    """

    expected_rows: int
    rows_verified: bool
    sources: tuple[FileSource, ...]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one benchmark dataset.

    Attributes
    ----------
    name
        Dataset key (``perov_5``, ``carbon_24``, ``mp_20``, ``mpts_52``).
    property_name
        The property the papers use (``None`` where none is used).
    property_columns
        Numeric CSV columns loaded into ``CrystalRecord.properties``.
    max_atoms
        Maximum number of atoms per cell.
    cov_struct_cutoff, cov_comp_cutoff
        COV-R/COV-P cutoffs (δ_S on the structure fingerprint, δ_C on the composition one).
    cov_cutoffs_published
        ``False`` when no cutoffs were published and the values are borrowed (flagged).
    splits
        ``train``/``val``/``test`` -> :class:`SplitInfo`.
    notes
        Caveats worth showing a user.
    """

    name: str
    property_name: str | None
    property_columns: tuple[str, ...]
    max_atoms: int
    cov_struct_cutoff: float
    cov_comp_cutoff: float
    cov_cutoffs_published: bool
    splits: dict[str, SplitInfo]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cov_cutoffs(self) -> tuple[float, float]:
        """Return ``(struct, comp)`` COV cutoffs."""
        return (self.cov_struct_cutoff, self.cov_comp_cutoff)


CSV_CHECKSUMS: dict[str, tuple[str, int]] = {
    "perov_5/val.csv": (
        "326f401219901270374b71e2faff63df3a29a99fd26f469993b9f476b693daf2",
        3_673_814,
    ),
    "perov_5/test.csv": (
        "a85878c685037f0a578257f6d4fcdde00e968dbab73c5f1e90ecef65218513f6",
        3_671_842,
    ),
    "carbon_24/val.csv": (
        "36c00689cd63073c954a58bc6ed6e2adb7aeed5a630c994970959a1babffd50e",
        2_321_923,
    ),
    "carbon_24/test.csv": (
        "386b17c08816f434818d51e46687bf72ff3f92348f3ba24823e4758f1fe8a969",
        2_319_350,
    ),
    "mpts_52/val.csv": (
        "b5d9f7a8ff72f3a1f24d6bb97e11ad201be40d10be7b27924234da06af04baba",
        9_941_357,
    ),
    "mpts_52/test.csv": (
        "4d6e76c4726fb12fb2a7e5bb23594f9b82dbd9bf67b7bfd4866e9c74a8f49038",
        16_358_482,
    ),
}
"""(sha256, bytes) of the CSV files present in ../shared/data, by path under the data root."""


def _csv(relpath: str, url: str, origin: str) -> FileSource:
    sha256, size = CSV_CHECKSUMS.get(relpath, (None, None))
    return FileSource(
        relpath=relpath, format="csv", url=url, origin=origin, sha256=sha256, size=size
    )


def _cdvae_csv(ds: str, split: str) -> FileSource:
    relpath = f"{ds}/{split}.csv"
    return _csv(relpath, f"{CDVAE_RAW}/{relpath}", f"txie-93/cdvae@f857f59 data/{relpath}")


def _diffcsp_csv(split: str) -> FileSource:
    relpath = f"mpts_52/{split}.csv"
    return _csv(relpath, f"{DIFFCSP_RAW}/{relpath}", f"jiaor17/DiffCSP data/{relpath}")


def _splits(
    rows: dict[str, int],
    sources: Callable[[str], tuple[FileSource, ...]],
    unverified: tuple[str, ...] = (),
) -> dict[str, SplitInfo]:
    """``{split: SplitInfo}`` from the row counts and the candidate files of each split."""
    return {
        split: SplitInfo(n, split not in unverified, sources(split)) for split, n in rows.items()
    }


def _jarvis(ds: str, filename: str, sha256: str, size: int) -> FileSource:
    return FileSource(
        relpath=f"{ds}/jarvis_leaderboard/{filename}",
        format="jarvis_json_zip",
        url=f"{JARVIS_RAW}/{filename}",
        origin="usnistgov/jarvis_leaderboard benchmarks/AI/AtomGen (structures only)",
        sha256=sha256,
        size=size,
        has_properties=False,
    )


_PEROV_JARVIS = _jarvis(
    "perov_5",
    "perov5_heat_ref.json.zip",
    "8528dc28a3cd282f2d6eff2ad027306e16b40a03c80b21b5f3eedd92b39d561e",
    1_373_554,
)
_CARBON_JARVIS = _jarvis(
    "carbon_24",
    "carbon24_energy_per_atom.json.zip",
    "c49ca9fa944b39008a56fa49b03f0d7c1f26775c253999b268e82d1677d09a6c",
    2_122_372,
)

_MP20_PILOT_SHA = {
    "train": ("a89a708d16d80401fe256d6742680f2e02ed5746f1a685cfea1b509754fe728e", 215_380),
    "val": ("b03d4aeb363a7ec3018cea66e2e69fce3ca3b518c900531a03a1266d5d392eb6", 216_406),
    "test": ("c0b5922164322338d0e282d4429b2dc8ab31ffa39d456d05e102b6ec88ea7262", 212_469),
}


def _mp20_pilot(split: str) -> FileSource:
    sha, size = _MP20_PILOT_SHA[split]
    return FileSource(
        relpath=f"mp_20/wyckofftransformer_mp_20_pilot/{split}.csv.gz",
        format="csv",
        url=f"{WYCKOFF_RAW}/mp_20_pilot/{split}.csv.gz",
        origin="SymmetryAdvantage/WyckoffTransformer data/mp_20_pilot",
        sha256=sha,
        size=size,
        subset_note=f"pilot subset: the first 1,000 rows of the MP-20 {split} split",
    )


DATASETS: dict[str, DatasetInfo] = {
    "perov_5": DatasetInfo(
        name="perov_5",
        property_name="heat_ref",
        property_columns=("heat_all", "heat_ref", "dir_gap", "ind_gap"),
        max_atoms=20,
        cov_struct_cutoff=0.2,
        cov_comp_cutoff=4.0,
        cov_cutoffs_published=True,
        splits=_splits(
            {"train": 11_356, "val": 3_787, "test": 3_785},
            lambda split: (_cdvae_csv("perov_5", split), _PEROV_JARVIS),
        ),
        notes=(
            "max_atoms 20 follows the CDVAE data config (every Perov-5 cell has 5 atoms).",
            "train.csv is not in ../shared/data: train is read from the JARVIS JSON, "
            "which has no property columns (heat_ref unavailable for train).",
        ),
    ),
    "carbon_24": DatasetInfo(
        name="carbon_24",
        property_name="energy_per_atom",
        property_columns=("energy_per_atom",),
        max_atoms=24,
        cov_struct_cutoff=0.2,
        cov_comp_cutoff=4.0,
        cov_cutoffs_published=True,
        splits=_splits(
            {"train": 6_091, "val": 2_032, "test": 2_030},
            lambda split: (_cdvae_csv("carbon_24", split), _CARBON_JARVIS),
        ),
        notes=(
            "train.csv is not in ../shared/data: train is read from the JARVIS JSON, "
            "which has no property columns (energy_per_atom unavailable for train).",
        ),
    ),
    "mp_20": DatasetInfo(
        name="mp_20",
        property_name="formation_energy_per_atom",
        property_columns=("formation_energy_per_atom", "band_gap", "e_above_hull"),
        max_atoms=20,
        cov_struct_cutoff=0.4,
        cov_comp_cutoff=10.0,
        cov_cutoffs_published=True,
        splits=_splits(
            {"train": 27_136, "val": 9_047, "test": 9_046},
            lambda split: (_cdvae_csv("mp_20", split), _mp20_pilot(split)),
            unverified=("val", "test"),
        ),
        notes=(
            "../shared/data holds only the WyckoffTransformer pilot (first 1,000 rows of each "
            "split); the full CSVs are downloaded on a user machine.",
            "val/test row counts (~9,047 / ~9,046) are UNVERIFIED.",
        ),
    ),
    "mpts_52": DatasetInfo(
        name="mpts_52",
        property_name=None,
        property_columns=("formation_energy_per_atom", "energy_above_hull", "year"),
        max_atoms=52,
        cov_struct_cutoff=0.4,
        cov_comp_cutoff=10.0,
        cov_cutoffs_published=False,
        splits=_splits(
            {"train": 27_380, "val": 5_000, "test": 8_096},
            lambda split: (_diffcsp_csv(split),),
        ),
        notes=(
            "No COV cutoffs were published for MPTS-52: MP-20's (0.4 / 10) are used (FLAGGED).",
            "Chronological split (DiffCSP §5.1); train.csv is downloaded on a user machine.",
        ),
    ),
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` of ``name`` or raise a ``KeyError`` naming the choices.

    Parameters
    ----------
    name
        Dataset key.

    Returns
    -------
    DatasetInfo
        The registry entry.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def get_split_info(name: str, split: str) -> SplitInfo:
    """Return the :class:`SplitInfo` of ``name``/``split`` with a clear error for a bad split.

    Parameters
    ----------
    name
        Dataset key.
    split
        ``train``, ``val`` or ``test``.

    Returns
    -------
    SplitInfo
        The registry entry.
    """
    info = get_dataset_info(name)
    if split not in info.splits:
        raise KeyError(f"unknown split {split!r} of {name}; known: {', '.join(info.splits)}")
    return info.splits[split]
