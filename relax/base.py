"""The relaxation contract: :class:`RelaxResult`, the abstract :class:`Relaxer` and the input check.

Every relaxer (CHGNet, Quantum ESPRESSO, VASP, the two-stage combinations) implements
:class:`Relaxer`. A concrete relaxer writes two things:

- :meth:`Relaxer.settings` -- a JSON-serialisable dict of everything that changes the result
  (its hash keys the ``relaxation`` documents of the store);
- :meth:`Relaxer._relax_valid` -- relax a list of structures that already passed
  :func:`check_structure`, returning one :class:`RelaxResult` per item, in order.

:meth:`Relaxer.relax` (not to be overridden) runs the input check, reports bad structures as
per-item error results, calls ``_relax_valid`` on the rest and, if that raises for the whole
batch, retries the items one by one so that one bad structure never takes the others down.

Units: energies in eV, forces in eV/Å (one row per site), stress in GPa as a 3x3 tensor with the
ASE sign convention (positive = tensile: the cell would like to shrink).

Every relaxer holds a :class:`relax.protocol.RelaxProtocol` (pressure, dispersion, DFT settings);
:meth:`Relaxer.relax` adds the protocol's pressure and the enthalpies ``H = E + pV`` to each
result.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from monty.json import MontyEncoder
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymatgen.core import Structure

from relax.protocol import ProtocolSpec, RelaxProtocol, enthalpy_eV, resolve_protocol

Status = Literal["ok", "not_converged", "failed", "invalid_input", "unavailable", "interrupted"]
"""Outcome of one relaxation.

``ok``: converged; ``not_converged``: ran to its step/time limit, the result is usable but not a
minimum; ``failed``: the calculation crashed, timed out or could not be parsed; ``invalid_input``:
the structure was rejected by :func:`check_structure` before anything ran; ``unavailable``: the
code (e.g. ``pw.x``) is not installed, nothing ran.
"""

DEFAULT_MIN_DISTANCE = 0.5
"""Two atoms closer than this (Å, periodic images included) make a structure invalid."""

DEFAULT_MAX_ATOMS = 200
"""Structures with more sites than this are rejected (relaxers may set their own limit)."""

MIN_VOLUME_PER_ATOM = 1.0
"""Cells with less volume per atom than this (Å³) are rejected as collapsed.

No solid comes near it (diamond has 5.7 Å³ per atom, and compression to hundreds of GPa leaves
more than 2), while a generated cell of ~1 Å edges gives a force field's neighbour lists
thousands of entries per atom and ties up a core for many minutes. A fixed physical bound, not a
setting: it rejects only what no relaxer can treat as a crystal.
"""


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` to canonical JSON (sorted keys, no spaces).

    Parameters
    ----------
    obj
        A JSON-serialisable object (dicts, lists, str, int, float, bool, None).

    Returns
    -------
    str
        The canonical JSON text; equal objects give equal text.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def settings_hash(settings: dict[str, Any]) -> str:
    """Return the sha256 hex digest of the canonical JSON of ``settings``.

    Parameters
    ----------
    settings
        A relaxer's settings dict.

    Returns
    -------
    str
        64 hex characters.
    """
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


class RelaxResult(BaseModel):
    """The result of relaxing one structure (JSON-serialisable, see ``docs/relax.md``).

    A failure is a result with ``error`` set (and ``status`` other than ``ok``/``not_converged``);
    the energy/structure fields are then ``None`` unless a partial value was obtained.

    Attributes
    ----------
    structure_id
        The caller's id of the structure.
    relaxer
        Name of the relaxer (``"chgnet"``, ``"espresso"``, ``"chgnet+espresso"``, ...).
    settings, settings_hash
        The relaxer's settings and the sha256 of their canonical JSON.
    formula, n_sites
        Reduced formula and number of sites of the input structure (``None`` if unreadable).
    initial_energy_eV, initial_energy_per_atom_eV
        Energy of the structure as given (same method as the final energy).
    final_structure
        The relaxed structure as ``Structure.as_dict()``.
    final_energy_eV, final_energy_per_atom_eV
        Energy of the relaxed structure.
    forces
        Final forces, eV/Å, one ``[fx, fy, fz]`` per site.
    stress
        Final stress, GPa, 3x3, ASE sign convention (positive = tensile).
    n_ionic_steps
        Number of ionic (optimiser) steps taken.
    converged
        Whether the force/stress criteria were met.
    wall_time_s
        Wall-clock time spent on this structure (for a batch: the batch time shared evenly).
    error
        ``None`` or a human-readable reason naming the problem.
    status
        See :data:`Status`.
    dft_available
        For DFT relaxers: whether the DFT code was found; ``None`` for force fields.
    stages
        Per-stage results of a multi-stage relaxation (e.g. the CHGNet pre-relax).
    warnings
        Non-fatal remarks (e.g. an SCF that needed the recovery ladder).
    extra
        Relaxer-specific details (k-point grid, cutoffs, scratch directory, ...).
    pressure_gpa
        The pressure the structure was relaxed at (the protocol's), GPa.
    initial_enthalpy_eV, initial_enthalpy_per_atom_eV, final_enthalpy_eV, final_enthalpy_per_atom_eV
        ``H = E + pV`` of the input and of the relaxed structure (``V`` of that structure). At
        zero pressure they equal the energies; compare enthalpies whenever ``p != 0``.
    final_volume_per_atom_A3
        Volume per atom of the relaxed structure, Å³.
    """

    model_config = ConfigDict(extra="forbid")

    structure_id: str
    relaxer: str
    settings: dict[str, Any] = Field(default_factory=dict)
    settings_hash: str = ""
    formula: str | None = None
    n_sites: int | None = None
    initial_energy_eV: float | None = None
    initial_energy_per_atom_eV: float | None = None
    final_structure: dict[str, Any] | None = None
    final_energy_eV: float | None = None
    final_energy_per_atom_eV: float | None = None
    forces: list[list[float]] | None = None
    stress: list[list[float]] | None = None
    n_ionic_steps: int = 0
    converged: bool = False
    wall_time_s: float = 0.0
    error: str | None = None
    status: Status = "ok"
    dft_available: bool | None = None
    stages: list[RelaxResult] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)
    pressure_gpa: float = 0.0
    initial_enthalpy_eV: float | None = None
    initial_enthalpy_per_atom_eV: float | None = None
    final_enthalpy_eV: float | None = None
    final_enthalpy_per_atom_eV: float | None = None
    final_volume_per_atom_A3: float | None = None

    @field_validator("final_structure", "settings", "extra", mode="before")
    @classmethod
    def _plain_json(cls, value: Any) -> Any:
        """Normalise to plain JSON types (tuples -> lists, numpy -> Python) so results compare."""
        if value is None:
            return None
        return json.loads(json.dumps(value, cls=MontyEncoder))

    @property
    def ok(self) -> bool:
        """``True`` when the relaxation ran without error (converged or not)."""
        return self.error is None

    def structure(self) -> Structure | None:
        """Return the relaxed structure as a pymatgen :class:`Structure` (``None`` if absent)."""
        if self.final_structure is None:
            return None
        return Structure.from_dict(self.final_structure)

    def with_enthalpy(self, pressure_gpa: float, initial: Structure | None) -> RelaxResult:
        """Return a copy with the pressure and the enthalpies ``H = E + pV`` filled in.

        Parameters
        ----------
        pressure_gpa
            The pressure of the relaxation, GPa.
        initial
            The input structure (its volume goes with the initial energy); ``None`` leaves
            the initial enthalpy empty.

        Returns
        -------
        RelaxResult
            The copy (stages keep their own values).
        """
        update: dict[str, Any] = {
            "pressure_gpa": float(pressure_gpa),
            "initial_enthalpy_eV": None,
            "initial_enthalpy_per_atom_eV": None,
            "final_enthalpy_eV": None,
            "final_enthalpy_per_atom_eV": None,
        }
        if self.initial_energy_eV is not None and isinstance(initial, Structure):
            h0 = enthalpy_eV(self.initial_energy_eV, initial.volume, pressure_gpa)
            update["initial_enthalpy_eV"] = h0
            update["initial_enthalpy_per_atom_eV"] = h0 / len(initial)
        final = self.structure()
        if final is not None:
            update["final_volume_per_atom_A3"] = final.volume / len(final)
            if self.final_energy_eV is not None:
                h1 = enthalpy_eV(self.final_energy_eV, final.volume, pressure_gpa)
                update["final_enthalpy_eV"] = h1
                update["final_enthalpy_per_atom_eV"] = h1 / len(final)
        return self.model_copy(update=update)

    @classmethod
    def failure(
        cls,
        structure_id: str,
        relaxer: Relaxer | str,
        reason: str,
        *,
        structure: Structure | None = None,
        status: Status = "failed",
        **fields: Any,
    ) -> RelaxResult:
        """Build an error result.

        Parameters
        ----------
        structure_id
            Id of the structure that failed.
        relaxer
            The relaxer (its name, settings and hash are recorded) or just its name.
        reason
            The error message; it is prefixed with the structure id.
        structure
            The input structure, if readable (records formula and number of sites).
        status
            The failure kind (default ``"failed"``).
        **fields
            Further :class:`RelaxResult` fields (e.g. ``dft_available``, ``wall_time_s``).

        Returns
        -------
        RelaxResult
            A result with ``error`` set and ``converged`` false.
        """
        base = _relaxer_fields(relaxer)
        base.update(_structure_fields(structure))
        base.update(fields)
        message = reason if reason.startswith(f"{structure_id}:") else f"{structure_id}: {reason}"
        return cls(
            structure_id=structure_id,
            error=message,
            status=status,
            converged=False,
            **base,
        )


def _relaxer_fields(relaxer: Relaxer | str) -> dict[str, Any]:
    if isinstance(relaxer, Relaxer):
        return {
            "relaxer": relaxer.name,
            "settings": relaxer.settings(),
            "settings_hash": relaxer.settings_hash,
        }
    return {"relaxer": str(relaxer)}


def _structure_fields(structure: Structure | None) -> dict[str, Any]:
    if structure is None:
        return {}
    try:
        return {"formula": structure.composition.reduced_formula, "n_sites": len(structure)}
    except Exception:  # a structure too broken for pymatgen's composition
        return {"n_sites": len(structure)}


def check_structure(
    structure: Structure | None,
    *,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    supported_elements: frozenset[str] | None = None,
) -> str | None:
    """Check that a structure can be handed to a relaxer.

    Parameters
    ----------
    structure
        The structure (``None`` counts as invalid: a sample that could not be built).
    min_distance
        Smallest allowed interatomic distance in Å, periodic images included.
    max_atoms
        Largest allowed number of sites.
    supported_elements
        Element symbols the relaxer can handle; ``None`` means any element.

    Returns
    -------
    str or None
        ``None`` if the structure is fine, otherwise the reason it is rejected.
    """
    if structure is None:
        return "no structure (the sample could not be built)"
    if not isinstance(structure, Structure):
        return f"expected a pymatgen Structure, got {type(structure).__name__}"
    n = len(structure)
    if n == 0:
        return "structure has no sites"
    if n > max_atoms:
        return f"structure has {n} sites, more than the limit of {max_atoms}"
    if not structure.is_ordered:
        return "structure is disordered (partial occupancies); relaxers need an ordered structure"
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if not np.all(np.isfinite(matrix)):
        return "lattice contains NaN or infinite values"
    frac = np.asarray(structure.frac_coords, dtype=float)
    if not np.all(np.isfinite(frac)):
        bad = sorted({int(i) for i in np.where(~np.isfinite(frac))[0]})
        return f"coordinates contain NaN or infinite values (sites {bad[:10]})"
    volume = float(np.linalg.det(matrix))
    if not math.isfinite(volume) or volume <= 1e-6:
        return f"cell volume is zero or negative ({volume:.4g} Å^3)"
    if min_distance > 0 and volume / n < min_distance**3 / math.sqrt(2):
        # spheres of diameter min_distance pack at most to pi/sqrt(18): a denser cell must have
        # two atoms closer than min_distance. Checked before the neighbour search, whose cost
        # explodes for nearly flat, strongly sheared cells.
        return (
            f"atoms overlap: {volume / n:.3g} Å^3 per atom is below "
            f"{min_distance**3 / math.sqrt(2):.3g} Å^3, the densest packing of atoms "
            f"{min_distance:.3f} Å apart (a nearly flat or sheared cell)"
        )
    if volume / n < MIN_VOLUME_PER_ATOM:
        return (
            f"cell collapsed: {volume / n:.3g} Å^3 per atom is below {MIN_VOLUME_PER_ATOM:g} Å^3, "
            f"denser than any solid (lattice lengths "
            f"{', '.join(f'{x:.3g}' for x in structure.lattice.abc)} Å)"
        )
    if supported_elements is not None:
        species = {el.symbol for el in structure.composition.elements}
        unsupported = sorted(species - supported_elements)
        if unsupported:
            return f"element(s) not supported by this relaxer: {', '.join(unsupported)}"
    closest = _min_distance(structure, min_distance)
    if closest is not None:
        return (
            f"atoms overlap: closest distance {closest:.3f} Å is below the threshold "
            f"{min_distance:.3f} Å"
        )
    return None


def _min_distance(structure: Structure, threshold: float) -> float | None:
    """Return the smallest periodic distance if it is below ``threshold``, else ``None``."""
    if threshold <= 0:
        return None
    centers, points, images, distances = structure.get_neighbor_list(
        r=threshold, exclude_self=False
    )
    if len(distances) == 0:
        return None
    # exclude_self=False keeps each atom's zero-distance self pair: drop exactly those, but keep
    # a site coinciding with its own periodic image (a far too small cell)
    keep = ~((centers == points) & np.all(images == 0, axis=1))
    if not np.any(keep):
        return None
    return float(np.min(distances[keep]))


class Relaxer(ABC):
    """A structure relaxer.

    Subclasses set :attr:`name`, implement :meth:`settings` and :meth:`_relax_valid`, and may
    override :meth:`supported_elements` and :meth:`single_point`.

    Parameters
    ----------
    max_atoms
        Structures with more sites are rejected with an ``invalid_input`` result.
    min_distance
        Structures with two atoms closer than this (Å) are rejected.
    protocol
        The relaxation protocol (:func:`relax.protocol.resolve_protocol`: a dataset name, a
        dict of fields or a :class:`~relax.protocol.RelaxProtocol`; ``None``: 0 GPa, no
        dispersion). Concrete relaxers record ``protocol.settings()`` in their settings.
    """

    name: ClassVar[str] = "relaxer"

    def __init__(
        self,
        *,
        max_atoms: int = DEFAULT_MAX_ATOMS,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        protocol: ProtocolSpec = None,
    ) -> None:
        self.max_atoms = int(max_atoms)
        self.min_distance = float(min_distance)
        self.protocol: RelaxProtocol = resolve_protocol(protocol)

    # -- to implement --------------------------------------------------------------------------
    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Return the JSON-serialisable settings that determine the result.

        Returns
        -------
        dict
            Include the input check limits (``max_atoms``, ``min_distance``) and the protocol
            via :meth:`check_settings`.
        """

    @abstractmethod
    def _relax_valid(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        """Relax structures that passed the input check; one result per item, same order."""

    def supported_elements(self) -> frozenset[str] | None:
        """Return the element symbols this relaxer can handle (``None``: no restriction)."""
        return None

    def single_point(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        """Compute the energy of each structure as given, without moving atoms.

        The result has ``initial_energy_eV == final_energy_eV``, ``n_ionic_steps == 0`` and
        ``final_structure`` equal to the input. Relaxers that cannot do this raise
        :class:`NotImplementedError`.

        Parameters
        ----------
        items
            ``(structure_id, structure)`` pairs.

        Returns
        -------
        list of RelaxResult
            One per item, in order.
        """
        raise NotImplementedError(f"relaxer {self.name!r} has no single-point calculation")

    # -- provided ------------------------------------------------------------------------------
    def check_settings(self) -> dict[str, Any]:
        """Return the input-check limits and the protocol, to be merged into :meth:`settings`.

        The protocol's fields go under ``"protocol"`` (:meth:`RelaxProtocol.settings`), so the
        settings hash changes with the pressure, the dispersion, the k-spacing, ...
        """
        return {
            "max_atoms": self.max_atoms,
            "min_distance": self.min_distance,
            "protocol": self.protocol.settings(),
        }

    @property
    def settings_hash(self) -> str:
        """The sha256 of the canonical JSON of :meth:`settings`."""
        return settings_hash(self.settings())

    def check(self, structure: Structure | None) -> str | None:
        """Run :func:`check_structure` with this relaxer's limits and elements."""
        return check_structure(
            structure,
            min_distance=self.min_distance,
            max_atoms=self.max_atoms,
            supported_elements=self.supported_elements(),
        )

    def relax(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        """Relax structures; bad ones give error results, the rest go on.

        Parameters
        ----------
        items
            ``(structure_id, structure)`` pairs.

        Returns
        -------
        list of RelaxResult
            One per item, in the order given. Never raises for one bad structure.
        """
        return self._run_checked(items, self._relax_valid)

    def _run_checked(
        self,
        items: Sequence[tuple[str, Structure]],
        worker: Any,
    ) -> list[RelaxResult]:
        """Input-check ``items``, run ``worker`` on the valid ones and merge the results."""
        results: list[RelaxResult | None] = [None] * len(items)
        valid: list[int] = []
        for i, (sid, structure) in enumerate(items):
            try:
                reason = self.check(structure)
            except Exception as exc:  # e.g. MemoryError in the neighbour search of a wild cell
                reason = f"the input check itself failed ({type(exc).__name__}: {exc})"
            if reason is None:
                valid.append(i)
            else:
                results[i] = RelaxResult.failure(
                    str(sid),
                    self,
                    f"invalid input: {reason}",
                    structure=structure if isinstance(structure, Structure) else None,
                    status="invalid_input",
                )
        if valid:
            batch = [(str(items[i][0]), items[i][1]) for i in valid]
            for i, res in zip(valid, self._run_guarded(batch, worker), strict=True):
                results[i] = res
        pressure = self.protocol.pressure_gpa
        return [
            r.with_enthalpy(pressure, s if isinstance(s, Structure) else None)
            for r, (_, s) in zip(results, items, strict=True)
            if r is not None
        ]

    def _run_guarded(self, batch: list[tuple[str, Structure]], worker: Any) -> list[RelaxResult]:
        """Run ``worker`` on a batch; if it raises, run the items one at a time."""
        try:
            out = list(worker(batch))
            if len(out) != len(batch):
                raise RuntimeError(
                    f"{type(self).__name__} returned {len(out)} results for {len(batch)} items"
                )
            return out
        except Exception as exc:
            if len(batch) == 1:
                sid, structure = batch[0]
                return [
                    RelaxResult.failure(
                        sid, self, f"{type(exc).__name__}: {exc}", structure=structure
                    )
                ]
        out = []
        for item in batch:
            out.extend(self._run_guarded([item], worker))
        return out


def timed_result(start: float) -> float:
    """Return the seconds elapsed since ``start`` (a :func:`time.perf_counter` value)."""
    return time.perf_counter() - start
