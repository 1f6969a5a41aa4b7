"""Reference structures of the convex hull of the stability experiment, and the hull itself.

E_hull must compare energies computed with one method, so the reference phases are relaxed with
the same relaxer (and the same DFT settings) as the generated structures. Which structures:

* an explicit list (``reference_structures``): material ids of the dataset (looked up in the
  train, val and test splits, in that order) or paths of structure files (CIF, POSCAR, JSON);
* by default, :data:`DEFAULT_REFERENCE_IDS` for the dataset when it has an entry (carbon_24:
  diamond and graphite *of the training split*, found with pymatgen's ``StructureMatcher``
  against hand-built prototypes);
* otherwise the ``n_reference`` lowest-energy distinct structures of the training split by the
  dataset's own energy column, or of the validation split when the training split has no
  energies (the JARVIS copies of the training splits in ``../shared/data`` have none); the
  description says which.

Every reference is reduced to its primitive cell (same energy per atom, fewer atoms: a 2-atom
diamond cell costs seconds in pw.x, a 6-atom one minutes) and gets the id ``ref:<material id>``.

The splits are read by the caller: ``records(split)`` returns the split's records, objects with
``material_id``, ``structure`` and ``properties`` (the data layer's records). :func:`reference_hull`
builds the hull from the references relaxed with one method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pymatgen.core import Structure

from analysis.stability_rows import usable_energy


class SplitRecord(Protocol):
    """A record of a dataset split: material id, structure and its properties."""

    material_id: str
    structure: Structure
    properties: Mapping[str, Any]


SplitRecords = Callable[[str], Sequence[SplitRecord]]
"""``records(split)``: the records of one split (``"train"``, ``"val"``, ``"test"``)."""

DEFAULT_REFERENCE_IDS: dict[str, tuple[str, ...]] = {
    "carbon_24": ("C-130526-2423-9", "C-34615-6034-26"),
}
"""Default hull references per dataset: carbon_24 train ``C-130526-2423-9`` is diamond (Fd-3m,
6 atoms, 5.44 Å³/atom) and ``C-34615-6034-26`` graphite (8 atoms, 7.14 Å³/atom:
compressed; matched with ``StructureMatcher()`` defaults against AB-stacked graphite,
a = 2.46 Å, c = 6.7 Å)."""

SPLITS: tuple[str, ...] = ("train", "val", "test")


def _lookup_ids(ids: Sequence[str], records: SplitRecords) -> dict[str, tuple[str, Structure]]:
    """Find material ids in the splits of a dataset; return ``{id: (split, structure)}``."""
    wanted: set[str] = set(ids)
    found: dict[str, tuple[str, Structure]] = {}
    for split in SPLITS:
        if not wanted - set(found):
            break
        for rec in records(split):
            if rec.material_id in wanted and rec.material_id not in found:
                found[rec.material_id] = (split, rec.structure)
    return found


def _lowest_energy(
    dataset: str, n_reference: int, records: SplitRecords
) -> tuple[list[tuple[str, Structure]], str]:
    """The ``n_reference`` lowest-energy distinct structures of the first split with energies."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    for split in ("train", "val"):
        with_energy = [
            r
            for r in records(split)
            if isinstance(r.properties.get("energy_per_atom"), int | float)
            or isinstance(r.properties.get("formation_energy_per_atom"), int | float)
        ]
        if not with_energy:
            continue
        key = (
            "energy_per_atom"
            if "energy_per_atom" in with_energy[0].properties
            else ("formation_energy_per_atom")
        )
        ranked = sorted(with_energy, key=lambda r: float(r.properties.get(key, float("inf"))))
        matcher = StructureMatcher()
        chosen: list[tuple[str, Structure]] = []
        for rec in ranked:
            prim = rec.structure.get_primitive_structure()
            if any(matcher.fit(prim, s) for _, s in chosen):
                continue
            chosen.append((rec.material_id, prim))
            if len(chosen) >= n_reference:
                break
        note = f"the {len(chosen)} lowest-{key} distinct structures of the {split} split" + (
            "" if split == "train" else " (the training split has no energies)"
        )
        return chosen, note
    raise ValueError(f"{dataset}: no split with an energy column to choose hull references from")


def resolve_reference_structures(
    dataset: str,
    records: SplitRecords,
    reference_structures: Sequence[str] | None = None,
    n_reference: int = 4,
) -> tuple[list[tuple[str, Structure]], dict[str, Any]]:
    """Return the hull reference structures (primitive cells) and how they were chosen.

    Parameters
    ----------
    dataset
        Dataset name.
    records
        ``records(split)``: the records of a split of ``dataset`` (:data:`SplitRecords`).
    reference_structures
        Material ids of the dataset or structure file paths; ``None`` for the default.
    n_reference
        Number of structures of the lowest-energy default (datasets without an entry in
        :data:`DEFAULT_REFERENCE_IDS`).

    Returns
    -------
    tuple
        ``([("ref:<id>", primitive Structure), ...], {"source": ..., "ids": [...],
        "splits": {...}})``.

    Raises
    ------
    ValueError
        If an id is in no split (the message names it), or no reference is found.
    """
    splits: dict[str, str] = {}
    if reference_structures:
        source = "given"
        ids = [r for r in reference_structures if not Path(r).is_file()]
        files = [r for r in reference_structures if Path(r).is_file()]
    elif dataset in DEFAULT_REFERENCE_IDS:
        source = f"default for {dataset}: diamond and graphite of the training split"
        ids, files = list(DEFAULT_REFERENCE_IDS[dataset]), []
    else:
        chosen, note = _lowest_energy(dataset, n_reference, records)
        pairs = [(f"ref:{mid}", s) for mid, s in chosen]
        return pairs, {"source": note, "ids": [mid for mid, _ in chosen], "splits": {}}
    found = _lookup_ids(ids, records) if ids else {}
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValueError(
            f"reference structure(s) {', '.join(missing)}: neither a file nor a material id of "
            f"the {dataset} splits {', '.join(SPLITS)}"
        )
    pairs = []
    for mid in ids:
        split, structure = found[mid]
        splits[mid] = split
        pairs.append((f"ref:{mid}", structure.get_primitive_structure()))
    for path in files:
        pairs.append(
            (f"ref:{Path(path).name}", Structure.from_file(path).get_primitive_structure())
        )
        splits[Path(path).name] = "file"
    if not pairs:
        raise ValueError(f"{dataset}: no hull reference structure")
    return pairs, {"source": source, "ids": [p[0][4:] for p in pairs], "splits": splits}


def reference_hull(
    references: Sequence[tuple[str, Structure]], docs: Mapping[str, Mapping[str, Any] | None]
) -> tuple[Any, dict[str, Any]]:
    """The hull of relaxed references; ``(None, description)`` when it cannot be built.

    Parameters
    ----------
    references
        ``(reference id, structure)`` as given to the relaxer.
    docs
        ``{reference id: relaxation document}`` of one method.

    Returns
    -------
    tuple
        ``(PhaseDiagram or None, {"entries": {id: {"energy_per_atom_eV", "status", "error",
        "n_sites"}}, "error"?})``; the energies are ``H/N`` where the relaxations ran at
        ``p ≠ 0`` (:mod:`analysis.enthalpy`).
    """
    from analysis.hull import build_hull, reference_entries

    structures, energies, ids = [], [], []
    info: dict[str, Any] = {"entries": {}}
    for rid, structure in references:
        doc = docs.get(rid)
        energy = usable_energy(doc, structure)
        relaxed = (
            Structure.from_dict(dict(doc["final_structure"]))
            if energy is not None and doc is not None and doc.get("final_structure")
            else structure
        )
        info["entries"][rid] = {
            "energy_per_atom_eV": energy,
            "status": (doc or {}).get("status"),
            "error": (doc or {}).get("error"),
            "n_sites": len(structure),
        }
        structures.append(relaxed)
        energies.append(energy)
        ids.append(rid)
    try:
        hull = build_hull(reference_entries(structures, energies, ids=ids))
    except ValueError as exc:
        info["error"] = str(exc)
        return None, info
    return hull, info
