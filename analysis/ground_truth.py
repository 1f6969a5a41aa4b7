"""Ground-truth structures for the metrics, and the raw-CIF ground-truth file of the papers.

The metrics take their ground truth as a :class:`GroundTruth` (ids, structures, where they came
from), or as a :data:`GroundTruthLoader` that reads the first ``limit`` rows of a source on
demand. Reading a dataset split is the data layer's job (``flows.evaluation`` passes a loader);
this module reads one file format itself: the CSV with a ``cif`` column that CDVAE's and
DiffCSP's ``compute_metrics.py --gt_file`` take (for example the dataset's ``test.csv``).

:func:`read_gt_file` builds each structure as the original evaluator does
(``get_gt_crys_ori`` then ``Crystal``): ``Structure.from_str(cif, fmt="cif")``, then the lattice
rebuilt from its lengths and angles (``Lattice.from_parameters``) with the parsed atomic numbers
and fractional coordinates. There is no Niggli reduction and no other reload, so fingerprints and
matches are those of the original's ``--gt_file`` path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from analysis.construction import CheckedStructure, structure_from_params


@dataclass
class GroundTruth:
    """Ground-truth structures and where they came from.

    Parameters
    ----------
    ids
        One id per structure (material ids; CSP targets are looked up by them).
    structures
        Structures (or anything :func:`analysis.construction.check_structure` accepts).
    source
        Where they came from, in words (recorded in every metric's definition).
    label
        A short name of the source (the split name, or the file name), recorded as ``gt_split``.
    row_errors
        Rows of the source that could not be read: ``{"id", "reason"}`` each; they are not in
        ``structures``.
    content_key
        A hash of the source's content (for a dataset split: the key of its preprocessed
        cache), or ``None``. With ``cache_dir`` it names the file that keeps the ground truth's
        fingerprints (:mod:`analysis.gt_fingerprints`), so a changed source gets a new file.
    cache_dir
        Directory where data computed from these structures may be kept (for a dataset split:
        the data cache directory), or ``None`` to keep nothing.
    """

    ids: list[str]
    structures: list[Any]
    source: str
    label: str = "given"
    row_errors: list[dict[str, str]] = field(default_factory=list)
    content_key: str | None = None
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.structures):
            raise ValueError(
                f"ground truth {self.label!r}: {len(self.ids)} ids for "
                f"{len(self.structures)} structures"
            )

    @classmethod
    def from_structures(
        cls, structures: Sequence[Any], ids: Sequence[Any] | None = None
    ) -> GroundTruth:
        """Wrap structures given by the caller (ids default to ``"0"``, ``"1"``, ...)."""
        items = list(structures)
        names = [str(i) for i in (ids if ids is not None else range(len(items)))]
        return cls(names, items, "structures given by the caller", "given")


GroundTruthLoader = Callable[[int | None], GroundTruth]
"""Reads the first ``limit`` rows of a ground-truth source (all rows for ``None``)."""


def structure_from_cif(cif: str, item_id: str = "?") -> CheckedStructure:
    """Build a ground-truth crystal from CIF text as CDVAE/DiffCSP's ``--gt_file`` path does.

    Parameters
    ----------
    cif
        CIF text (the first data block is used, as ``Structure.from_str`` does).
    item_id
        Id used in the result and in an error reason.

    Returns
    -------
    CheckedStructure
        The structure rebuilt from lattice parameters, atomic numbers and fractional
        coordinates, or the reason it could not be read.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = Structure.from_str(cif, fmt="cif")
    except Exception as exc:
        return CheckedStructure(item_id, None, f"malformed_input: malformed CIF ({exc})")
    lattice = parsed.lattice
    try:
        zs = [int(site.specie.Z) for site in parsed]
    except AttributeError as exc:  # a disordered site has no single species
        return CheckedStructure(item_id, None, f"malformed_input: {exc}")
    return structure_from_params(lattice.abc, lattice.angles, zs, parsed.frac_coords, item_id)


def read_gt_file(path: str | Path, limit: int | None = None) -> GroundTruth:
    """Read a ground-truth CSV with a ``cif`` column (CDVAE/DiffCSP ``--gt_file``).

    Parameters
    ----------
    path
        The CSV (for example a dataset's ``test.csv``). Ids come from its ``material_id``
        column when it has one, else from the row number.
    limit
        Only the first ``limit`` rows.

    Returns
    -------
    GroundTruth
        The structures (built by :func:`structure_from_cif`); rows that cannot be built are
        listed in ``row_errors`` with their id and the reason, and left out.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file has no ``cif`` column.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file {path} does not exist")
    table = pd.read_csv(path, nrows=limit)
    if "cif" not in table.columns:
        raise ValueError(
            f"ground-truth file {path} has no 'cif' column (columns: {', '.join(table.columns)})"
        )
    if "material_id" in table.columns:
        row_ids = [str(i) for i in table["material_id"]]
    else:
        row_ids = [str(i) for i in range(len(table))]
    ids: list[str] = []
    structures: list[Structure] = []
    errors: list[dict[str, str]] = []
    for row_id, cif in zip(row_ids, table["cif"], strict=True):
        if not isinstance(cif, str):
            errors.append({"id": row_id, "reason": "missing_structure: empty cif cell"})
            continue
        checked = structure_from_cif(cif, row_id)
        if checked.structure is None or checked.error is not None:
            errors.append({"id": row_id, "reason": str(checked.error)})
            continue
        ids.append(row_id)
        structures.append(checked.structure)
    source = (
        f"CIFs of {path.name} as read by CDVAE/DiffCSP --gt_file "
        "(Structure.from_str, lattice rebuilt from its parameters, not Niggli-reduced)"
    )
    return GroundTruth(ids, structures, source, path.name, errors)
