"""Summaries of a loaded split: rows, errors, element counts and the atom-count distribution."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from generators.data.records import CrystalDataset


@dataclass
class SplitSummary:
    """Counts that describe a loaded split.

    Attributes
    ----------
    dataset, split
        Registry keys.
    rows
        Rows read (records + errors).
    records, errors
        Parsed rows and failed rows.
    element_counts
        Number of structures containing each element (most common first).
    num_atoms
        Histogram ``atoms per cell -> structures``.
    error_reasons
        Histogram of error reasons.
    """

    dataset: str
    split: str
    rows: int
    records: int
    errors: int
    element_counts: dict[str, int] = field(default_factory=dict)
    num_atoms: dict[int, int] = field(default_factory=dict)
    error_reasons: dict[str, int] = field(default_factory=dict)


def summarise(data: CrystalDataset) -> SplitSummary:
    """Count elements, atoms per cell and error reasons of a split.

    Parameters
    ----------
    data
        A loaded split.

    Returns
    -------
    SplitSummary
        The counts.
    """
    elements: Counter[str] = Counter()
    sizes: Counter[int] = Counter()
    for record in data.records:
        elements.update({el.symbol for el in record.structure.composition.elements})
        sizes[len(record.structure)] += 1
    reasons = Counter(err.reason.split(":")[0] for err in data.errors)
    return SplitSummary(
        dataset=data.dataset,
        split=data.split,
        rows=len(data.records) + len(data.errors),
        records=len(data.records),
        errors=len(data.errors),
        element_counts=dict(elements.most_common()),
        num_atoms=dict(sorted(sizes.items())),
        error_reasons=dict(reasons.most_common()),
    )
