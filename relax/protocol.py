"""The relaxation protocol: the physics every relaxer of one dataset shares.

A :class:`RelaxProtocol` fixes the target pressure, the dispersion correction, the DFT k-point
spacing, cutoffs, smearing and spin, and the force-field thresholds. The CHGNet, Quantum
ESPRESSO and VASP relaxers all take one (``protocol=``) and record it in their settings, so it is
part of every result's ``settings_hash``: two protocols never share stored results.

Each dataset has its defaults (:data:`DATASET_PROTOCOLS`): ``carbon_24`` (AIRSS searches at
10 GPa) relaxes at 10 GPa with DFT-D3(BJ) and the converged k-spacing and cutoffs of
:func:`converged_settings`; ``perov_5``, ``mp_20`` and ``mpts_52`` at 0 GPa without dispersion.
Any field can be overridden::

    >>> from relax.protocol import resolve_protocol
    >>> p = resolve_protocol({"dataset": "carbon_24", "pressure_gpa": 0})  # doctest: +SKIP
    >>> p.pressure_gpa, p.dispersion  # doctest: +SKIP
    (0.0, 'd3bj')
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import ase.units
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Dispersion = Literal["none", "d3bj"]
"""``"none"`` or ``"d3bj"``: Grimme's DFT-D3 with Becke-Johnson damping, PBE parameters."""

Spin = Literal["auto", "off"]
"""``"auto"``: spin-polarised when a magnetic element is present; ``"off"``: never."""

EV_PER_GPA_A3: float = ase.units.GPa
"""1 GPa·Å³ in eV (ASE's unit: 1 GPa = 1/160.21766208 eV/Å³)."""

KBAR_PER_GPA = 10.0
"""pw.x ``press`` and VASP ``PSTRESS`` are in kbar."""

RY_PER_BOHR_IN_EV_PER_A = 25.71104309541616
"""1 Ry/Bohr in eV/Å (CODATA 2006 Rydberg and Bohr, as pw.x uses)."""

D3BJ_PBE: dict[str, float] = {"s6": 1.0, "s8": 0.7875, "a1": 0.4289, "a2": 4.4407, "s9": 0.0}
"""D3(BJ) parameters of PBE (Grimme, Ehrlich, Goerigk 2011), two-body only (``s9 = 0``).

Two-body only because VASP's ``IVDW = 12`` has no three-body term and cannot add one; pw.x gets
``dftd3_threebody = .false.`` so that all three codes compute the same correction."""

CONVERGED_ENV = "DFTLOOP_CONVERGED_DIR"
"""Folder of user convergence results (default ``$DFTLOOP_HOME/cache/converged``)."""

PACKAGED_CONVERGED_DIR = Path(__file__).resolve().parent / "converged"
"""Converged settings shipped with the package (one JSON per dataset)."""


class RelaxProtocol(BaseModel):
    """The physics of a relaxation shared by the force-field and DFT stages (immutable).

    Attributes
    ----------
    name
        Where the defaults came from (a dataset name or ``"default"``); not part of the
        settings: two protocols with the same physics give the same hash.
    pressure_gpa
        Target hydrostatic pressure, GPa. Results carry the enthalpy ``H = E + pV``.
    dispersion
        ``"none"`` or ``"d3bj"`` (:data:`D3BJ_PBE`): pw.x ``vdw_corr='dft-d3'``, VASP
        ``IVDW = 12``, the force field summed with simple-DFT-D3.
    kspacing
        DFT k-point spacing, Å⁻¹, 2π included (``N_i = ceil(|b_i| / kspacing)``; VASP's
        ``KSPACING`` convention). Every DFT energy is computed at this spacing.
    relax_kspacing
        k-point spacing of the pw.x relaxation's ionic and cell steps, Å⁻¹ (``None``: the
        same as ``kspacing``). When it differs, the relaxation runs at this spacing and the
        energies of the input and of the relaxed structure come from single points (SCF) at
        ``kspacing``: the usual practice of relaxing on a coarser grid than the converged one
        and taking energies from a final static calculation.
    ecutwfc, ecutrho
        pw.x cutoffs, Ry; ``None`` takes the SSSP recommendation per element.
    smearing, degauss
        pw.x occupation smearing (``"mv"``: Marzari-Vanderbilt) and width, Ry.
    spin
        ``"auto"`` (magnetic elements start spin-polarised) or ``"off"``.
    fmax, max_steps
        Force-field convergence threshold (eV/Å, generalised forces) and FIRE step limit.
    dft_fmax
        DFT force threshold, eV/Å (pw.x ``forc_conv_thr`` = ``dft_fmax`` in Ry/Bohr; the
        default 0.0257 eV/Å is pw.x's own 1e-3 Ry/Bohr).
    dft_press_conv_kbar
        pw.x ``press_conv_thr``, kbar.
    relax_cell
        Relax the cell together with the positions (force field: Fréchet cell filter; pw.x
        ``vc-relax``; VASP ``ISIF = 3``), else positions only.
    source
        Where ``kspacing`` / cutoffs came from (a convergence file), for the record only; not
        part of the settings.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "default"
    pressure_gpa: float = 0.0
    dispersion: Dispersion = "none"
    kspacing: float = Field(0.3, gt=0)
    relax_kspacing: float | None = Field(None, gt=0)
    ecutwfc: float | None = Field(None, gt=0)
    ecutrho: float | None = Field(None, gt=0)
    smearing: str = "mv"
    degauss: float = Field(0.01, gt=0)
    spin: Spin = "auto"
    fmax: float = Field(0.05, gt=0)
    max_steps: int = Field(500, ge=0)
    dft_fmax: float = Field(1e-3 * RY_PER_BOHR_IN_EV_PER_A, gt=0)
    dft_press_conv_kbar: float = Field(0.5, gt=0)
    relax_cell: bool = True
    source: str | None = None

    @field_validator("dispersion", mode="before")
    @classmethod
    def _dispersion_alias(cls, value: Any) -> Any:
        """Accept ``"d3"``, ``"d3(bj)"``, ``"off"``, ``False``/``None`` spellings."""
        if value is None or value is False:
            return "none"
        text = str(value).strip().lower().replace("(", "").replace(")", "").replace("-", "")
        return {"d3": "d3bj", "d3bj": "d3bj", "off": "none", "none": "none", "": "none"}.get(
            text, value
        )

    # -- derived values ------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Return the fields that change a result (``name`` and ``source`` excluded).

        Returns
        -------
        dict
            JSON-serialisable; recorded under ``"protocol"`` in each relaxer's settings.
        """
        out = self.model_dump(exclude={"name", "source"})
        if self.relax_kspacing is None:  # absent, so that the other protocols' hashes stay
            del out["relax_kspacing"]
        if self.dispersion == "d3bj":
            out["d3_parameters"] = dict(D3BJ_PBE)
        return out

    @property
    def pressure_ev_per_a3(self) -> float:
        """The pressure in eV/Å³ (ASE's unit, e.g. for ``FrechetCellFilter(scalar_pressure=)``)."""
        return self.pressure_gpa * EV_PER_GPA_A3

    @property
    def pressure_kbar(self) -> float:
        """The pressure in kbar (pw.x ``press``, VASP ``PSTRESS``)."""
        return self.pressure_gpa * KBAR_PER_GPA

    @property
    def forc_conv_thr_ry_bohr(self) -> float:
        """:attr:`dft_fmax` in Ry/Bohr (pw.x ``forc_conv_thr``)."""
        return self.dft_fmax / RY_PER_BOHR_IN_EV_PER_A

    def with_overrides(self, **overrides: Any) -> RelaxProtocol:
        """Return a copy with the given fields replaced (``None`` values are ignored).

        Raises
        ------
        ValueError
            For an unknown field or an invalid value (the message names the field).
        """
        changes = {k: v for k, v in overrides.items() if v is not None}
        if not changes:
            return self
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"unknown protocol field(s) {unknown}; fields are {protocol_fields()}")
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise ValueError(f"invalid protocol override {changes}: {exc}") from None


def protocol_fields() -> list[str]:
    """Return the names of the protocol fields a user can set."""
    return [name for name in RelaxProtocol.model_fields if name != "source"]


def enthalpy_eV(energy_eV: float, volume_A3: float, pressure_gpa: float) -> float:
    """Return ``H = E + pV`` in eV.

    Parameters
    ----------
    energy_eV
        Energy, eV.
    volume_A3
        Cell volume, Å³.
    pressure_gpa
        Pressure, GPa.

    Returns
    -------
    float
        The enthalpy, eV (equal to ``energy_eV`` at zero pressure).
    """
    return float(energy_eV) + float(pressure_gpa) * float(volume_A3) * EV_PER_GPA_A3


# -- converged settings ------------------------------------------------------------------------
def converged_dir() -> Path:
    """Return the folder of user convergence results.

    ``$DFTLOOP_CONVERGED_DIR``, else ``$DFTLOOP_HOME/cache/converged``, else
    ``./dftloop-runs/cache/converged``.
    """
    explicit = os.environ.get(CONVERGED_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    home = os.environ.get("DFTLOOP_HOME") or "dftloop-runs"
    return Path(home).expanduser().resolve() / "cache" / "converged"


def converged_settings(dataset: str) -> tuple[dict[str, Any], str] | None:
    """Return the converged DFT settings of a dataset and the file they came from.

    A result of ``dftloop dft converge`` in :func:`converged_dir` wins over the one shipped in
    the package (:data:`PACKAGED_CONVERGED_DIR`).

    Parameters
    ----------
    dataset
        Dataset name.

    Returns
    -------
    tuple or None
        ``({"kspacing": ..., "ecutwfc": ..., "ecutrho": ...}, source)`` or ``None`` when no file
        exists. ``source`` is ``"user:<file name>"`` or ``"package:<file name>"``.

    Raises
    ------
    ValueError
        If the file exists but is unreadable or lacks ``kspacing``.
    """
    for folder, tag in ((converged_dir(), "user"), (PACKAGED_CONVERGED_DIR, "package")):
        path = folder / f"{dataset}.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            chosen = data["converged"]
            out = {"kspacing": float(chosen["kspacing"])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"converged settings {path}: unreadable ({exc})") from None
        for key in ("ecutwfc", "ecutrho"):
            if chosen.get(key) is not None:
                out[key] = float(chosen[key])
        return out, f"{tag}:{path.name}"
    return None


# -- per-dataset defaults ----------------------------------------------------------------------
DATASET_PROTOCOLS: dict[str, dict[str, Any]] = {
    "default": {},
    "carbon_24": {"pressure_gpa": 10.0, "dispersion": "d3bj", "relax_kspacing": 0.3},
    "perov_5": {},
    "mp_20": {},
    "mpts_52": {},
}
"""Per-dataset overrides of the :class:`RelaxProtocol` defaults (converged k-spacing and
cutoffs are added by :func:`dataset_protocol` when a convergence file exists).

carbon_24 relaxes on a 0.3 Å⁻¹ grid and takes its energies from single points at the
converged spacing (0.2 Å⁻¹ in ``relax/converged/carbon_24.json``): in that file's k-point scan
the graphite and lonsdaleite energies relative to diamond at 0.3 lie within 2 meV/atom of their
values at 0.2 and 0.15, while the grids are about 3.7 times smaller (a 6-atom test cell of
carbon_24: 9×5×5 k-points at 0.3 against 13×8×8 at 0.2)."""


def dataset_protocol(dataset: str | None = None) -> RelaxProtocol:
    """Return the default protocol of a dataset.

    Parameters
    ----------
    dataset
        A key of :data:`DATASET_PROTOCOLS` (``None``: ``"default"``).

    Returns
    -------
    RelaxProtocol
        The dataset's defaults, with its converged k-spacing and cutoffs when a convergence
        file exists (:func:`converged_settings`).

    Raises
    ------
    ValueError
        For an unknown dataset name.
    """
    key = "default" if dataset is None else str(dataset).strip()
    if key not in DATASET_PROTOCOLS:
        raise ValueError(
            f"no relaxation protocol for dataset {key!r}; known: {sorted(DATASET_PROTOCOLS)} "
            "(or give the fields explicitly)"
        )
    fields: dict[str, Any] = {"name": key, **DATASET_PROTOCOLS[key]}
    found = converged_settings(key) if key != "default" else None
    if found is not None:
        values, source = found
        fields.update(values)
        fields["source"] = source
    return RelaxProtocol(**fields)


ProtocolSpec = RelaxProtocol | Mapping[str, Any] | str | None
"""What a relaxer accepts as ``protocol=``: a protocol, a dataset name, or a dict of fields
(``{"dataset": "carbon_24", "pressure_gpa": 0}``: the dataset's defaults, then the fields)."""


def resolve_protocol(spec: ProtocolSpec = None) -> RelaxProtocol:
    """Turn a protocol specification into a :class:`RelaxProtocol`.

    Parameters
    ----------
    spec
        ``None`` (the ``"default"`` protocol: 0 GPa, no dispersion), a dataset name, a
        :class:`RelaxProtocol`, or a mapping of fields whose optional ``"dataset"`` (or
        ``"name"``) key picks the defaults the other fields override. A mapping written by
        :meth:`RelaxProtocol.settings` (with ``d3_parameters``) is accepted too.

    Returns
    -------
    RelaxProtocol
        The protocol.

    Raises
    ------
    ValueError
        For an unknown dataset, field or value.
    """
    if spec is None:
        return dataset_protocol(None)
    if isinstance(spec, RelaxProtocol):
        return spec
    if isinstance(spec, str):
        return dataset_protocol(spec)
    if isinstance(spec, Mapping):
        fields = dict(spec)
        fields.pop("d3_parameters", None)
        base = fields.pop("dataset", None) or fields.pop("name", None)
        return dataset_protocol(base).with_overrides(**fields)
    raise ValueError(f"cannot read a relaxation protocol from {type(spec).__name__}: {spec!r}")


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into protocol fields (values read as JSON when they parse).

    Parameters
    ----------
    items
        E.g. ``["pressure_gpa=10", "dispersion=d3bj"]``.

    Returns
    -------
    dict
        ``{"pressure_gpa": 10, "dispersion": "d3bj"}``.

    Raises
    ------
    ValueError
        For an item without ``=`` or an unknown field.
    """
    out: dict[str, Any] = {}
    allowed = {*protocol_fields(), "dataset"}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"protocol setting must be key=value, got {item!r}")
        if key not in allowed:
            raise ValueError(f"unknown protocol field {key!r}; fields are {sorted(allowed)}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw.strip()
    return out
