"""The objects a split loads into: records, row errors and the dataset that holds them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pymatgen.core import Structure


@dataclass
class CrystalRecord:
    """One crystal of a split.

    Attributes
    ----------
    material_id
        The id from the source file (a string).
    structure
        The preprocessed structure (Niggli-reduced, canonical lattice, coordinates in [0, 1)).
    properties
        Numeric property columns of the source (empty when the source has none).
    missing_properties
        Properties the dataset defines but this record's source does not carry (e.g. the
        JARVIS JSON train split of perov_5 has no ``heat_ref``).
    """

    material_id: str
    structure: Structure
    properties: dict[str, float] = field(default_factory=dict)
    missing_properties: tuple[str, ...] = ()


@dataclass(frozen=True)
class RowError:
    """A row that could not be turned into a structure, with the reason."""

    material_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.material_id}: {self.reason}"


@dataclass
class CrystalDataset:
    """A loaded split: the records, the rows that failed, and where they came from.

    Attributes
    ----------
    dataset, split
        Registry keys.
    records
        Parsed crystals, in source order.
    errors
        Rows that could not be parsed (reported, never silently dropped).
    source_path
        The file read.
    source_format
        ``"csv"`` or ``"jarvis_json_zip"``.
    notes
        Caveats (pilot subset, properties absent, row limit).
    limit
        The row limit the split was loaded with (``None`` for the whole file).
    from_cache
        Whether the records came from the preprocessed cache.
    content_key
        The preprocessed cache's key of the whole split: a hash of the source file's bytes, the
        split, the property columns and the preprocessing options (empty when the cache is not
        used). Data derived from the split can be kept under it and go stale with it.
    """

    dataset: str
    split: str
    records: list[CrystalRecord]
    errors: list[RowError]
    source_path: str = ""
    source_format: str = ""
    notes: list[str] = field(default_factory=list)
    limit: int | None = None
    from_cache: bool = False
    content_key: str = ""

    @property
    def structures(self) -> list[Structure]:
        """Return the structures of the records, in order."""
        return [r.structure for r in self.records]

    @property
    def material_ids(self) -> list[str]:
        """Return the material ids of the records, in order."""
        return [r.material_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[CrystalRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> CrystalRecord:
        return self.records[index]
