"""atomate2 Makers for a CHGNet pre-relax followed by a VASP double relaxation.

The chain is built from atomate2's own Makers, composed the atomate2 way (a Maker is a
serialisable dataclass whose ``make`` returns a jobflow Job or Flow):

``CHGNetVaspRelaxMaker``
    ``chgnet_maker`` (:class:`atomate2.forcefields.jobs.ForceFieldRelaxMaker` with
    ``force_field_name="CHGNet"``) -> ``vasp_maker`` (a VASP double relaxation, by default
    :class:`atomate2.vasp.flows.mp.MPGGADoubleRelaxMaker`, i.e. two MPRelaxSet relaxations).

VASP itself is launched in one place only, atomate2's ``run_vasp`` (custodian's ``VaspJob`` with
the error handlers named here). The machine profile -- the VASP command, custodian's scratch
directory -- is kept apart from the calculation parameters (:class:`VaspProfile`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

from custodian.vasp import handlers as custodian_handlers
from jobflow import Flow, Maker

from relax.protocol import RelaxProtocol

InputSetName = Literal["mp-gga", "atomate2"]
"""VASP input-set families: ``"mp-gga"`` (MPRelaxSet, MP-compatible energies) or ``"atomate2"``
(atomate2's own ``RelaxSetGenerator``: PBE_54 POTCARs, ENCUT 680, ISPIN 2)."""

DEFAULT_HANDLERS: tuple[str, ...] = (
    "VaspErrorHandler",
    "MeshSymmetryErrorHandler",
    "UnconvergedErrorHandler",
    "NonConvergingErrorHandler",
    "PotimErrorHandler",
    "PositiveEnergyErrorHandler",
    "FrozenJobErrorHandler",
    "StdErrHandler",
    "LargeSigmaHandler",
    "IncorrectSmearingHandler",
    "KspacingMetalHandler",
)
"""custodian VASP error handlers, by class name (the same set atomate2 uses by default)."""


def build_handlers(names: Sequence[str]) -> tuple[custodian_handlers.ErrorHandler, ...]:
    """Instantiate custodian VASP error handlers from their class names.

    Parameters
    ----------
    names
        Class names in :mod:`custodian.vasp.handlers` (e.g. ``"VaspErrorHandler"``).

    Returns
    -------
    tuple of ErrorHandler
        One default-constructed handler per name, in the given order.

    Raises
    ------
    ValueError
        If a name is not a custodian VASP error handler.
    """
    out = []
    for name in names:
        cls = getattr(custodian_handlers, name, None)
        if not (isinstance(cls, type) and issubclass(cls, custodian_handlers.ErrorHandler)):
            raise ValueError(f"{name!r} is not an error handler in custodian.vasp.handlers")
        out.append(cls())
    return tuple(out)


@dataclass
class VaspProfile:
    """Where and how VASP runs on this machine (not part of the calculation settings).

    Parameters
    ----------
    vasp_cmd
        Command for the standard VASP binary, e.g. ``"srun vasp_std"``. ``None`` takes atomate2's
        ``VASP_CMD`` setting (``ATOMATE2_VASP_CMD`` or ``~/.atomate2.yaml``; default ``vasp_std``).
    vasp_gamma_cmd
        Command for the Gamma-only binary (``None``: atomate2's ``VASP_GAMMA_CMD``).
    scratch_dir
        custodian's scratch directory (``None``: run in the job directory).
    custodian_kwargs
        Further keyword arguments of :class:`custodian.Custodian` (e.g. ``polling_time_step``).
    """

    vasp_cmd: str | None = None
    vasp_gamma_cmd: str | None = None
    scratch_dir: str | None = None
    custodian_kwargs: dict[str, Any] = field(default_factory=dict)

    def run_vasp_kwargs(self, handlers: Sequence[str], max_errors: int) -> dict[str, Any]:
        """Return the keyword arguments for atomate2's ``run_vasp``.

        Parameters
        ----------
        handlers
            custodian error-handler class names.
        max_errors
            Corrections custodian may apply before it gives up.

        Returns
        -------
        dict
            ``vasp_cmd``, ``vasp_gamma_cmd``, ``handlers``, ``max_errors``, ``scratch_dir``,
            ``custodian_kwargs``, explicitly set (the import-time defaults of ``run_vasp``
            are never relied on).
        """
        from atomate2 import SETTINGS

        return {
            "vasp_cmd": self.vasp_cmd or SETTINGS.VASP_CMD,
            "vasp_gamma_cmd": self.vasp_gamma_cmd or SETTINGS.VASP_GAMMA_CMD,
            "handlers": build_handlers(handlers),
            "max_errors": int(max_errors),
            "scratch_dir": self.scratch_dir,
            "custodian_kwargs": dict(self.custodian_kwargs),
        }


class VaspMakerOptions(TypedDict, total=False):
    """How every VASP job Maker of a chain is configured (:func:`configure_vasp_makers`).

    Attributes
    ----------
    run_vasp_kwargs
        Keyword arguments for ``run_vasp`` (see :meth:`VaspProfile.run_vasp_kwargs`), merged
        into each VASP Maker's ``run_vasp_kwargs``.
    user_incar_settings
        INCAR overrides, merged into each input-set generator's ``user_incar_settings``.
    handle_unsuccessful
        atomate2's toggle for a run that finished but did not converge (default ``False``: go on,
        the result is then reported as not converged; ``True`` stops later jobs, ``"error"``
        raises), set as ``stop_children_kwargs["handle_unsuccessful"]``.
    """

    run_vasp_kwargs: dict[str, Any] | None
    user_incar_settings: dict[str, Any] | None
    handle_unsuccessful: bool | str


INPUT_SET_MAKERS: dict[tuple[str, str], tuple[str, str]] = {
    ("double relax", "mp-gga"): ("atomate2.vasp.flows.mp", "MPGGADoubleRelaxMaker"),
    ("double relax", "atomate2"): ("atomate2.vasp.flows.core", "DoubleRelaxMaker"),
    ("static", "mp-gga"): ("atomate2.vasp.jobs.mp", "MPGGAStaticMaker"),
    ("static", "atomate2"): ("atomate2.vasp.jobs.core", "StaticMaker"),
}
"""(kind, input set) -> (atomate2 module, Maker class)."""


def input_set_maker(kind: str, input_set: str, **maker_kwargs: Any) -> Maker:
    """Instantiate atomate2's Maker of one kind of VASP job for an input-set family.

    Parameters
    ----------
    kind
        ``"double relax"`` or ``"static"``.
    input_set
        ``"mp-gga"`` or ``"atomate2"``.
    **maker_kwargs
        Passed to the Maker's constructor.

    Returns
    -------
    Maker
        The (not yet configured) Maker of :data:`INPUT_SET_MAKERS`.

    Raises
    ------
    ValueError
        For an unknown input set or kind.
    """
    if (kind, input_set) not in INPUT_SET_MAKERS:
        raise ValueError(f"unknown VASP input set {input_set!r}; use 'mp-gga' or 'atomate2'")
    module, name = INPUT_SET_MAKERS[(kind, input_set)]
    return getattr(importlib.import_module(module), name)(**maker_kwargs)


def double_relax_maker(
    input_set: InputSetName = "mp-gga", **options: Unpack[VaspMakerOptions]
) -> Maker:
    """Build atomate2's VASP double-relaxation Maker for an input-set family.

    Parameters
    ----------
    input_set
        ``"mp-gga"``: :class:`~atomate2.vasp.flows.mp.MPGGADoubleRelaxMaker` (MPRelaxSet, job
        names ``"MP GGA relax 1"``/``"MP GGA relax 2"``); ``"atomate2"``:
        :class:`~atomate2.vasp.flows.core.DoubleRelaxMaker` of two ``RelaxMaker`` (job names
        ``"relax 1"``/``"relax 2"``).
    **options
        :class:`VaspMakerOptions` (``run_vasp_kwargs``, ``user_incar_settings``,
        ``handle_unsuccessful``).

    Returns
    -------
    Maker
        The configured double-relaxation Maker.
    """
    return configure_vasp_makers(input_set_maker("double relax", input_set), **options)


def configure_vasp_makers(maker: Maker, **options: Unpack[VaspMakerOptions]) -> Maker:
    """Return a copy of ``maker`` with every nested VASP job Maker configured.

    Parameters
    ----------
    maker
        A VASP job Maker or a flow Maker holding VASP Makers as fields.
    **options
        :class:`VaspMakerOptions`.

    Returns
    -------
    Maker
        The configured copy (the input is not modified).
    """
    from atomate2.vasp.jobs.base import BaseVaspMaker

    if isinstance(maker, BaseVaspMaker):
        generator = maker.input_set_generator
        user_incar_settings = options.get("user_incar_settings")
        if user_incar_settings:
            generator = copy.deepcopy(generator)
            generator.user_incar_settings = {
                **(generator.user_incar_settings or {}),
                **user_incar_settings,
            }
        return dataclasses.replace(
            maker,
            input_set_generator=generator,
            run_vasp_kwargs={**maker.run_vasp_kwargs, **(options.get("run_vasp_kwargs") or {})},
            stop_children_kwargs={
                **maker.stop_children_kwargs,
                "handle_unsuccessful": options.get("handle_unsuccessful", False),
            },
        )
    updates = {}
    for f in dataclasses.fields(maker):
        value = getattr(maker, f.name)
        if isinstance(value, Maker):
            updates[f.name] = configure_vasp_makers(value, **options)
    return dataclasses.replace(maker, **updates) if updates else maker


def static_maker(input_set: InputSetName = "mp-gga", **options: Unpack[VaspMakerOptions]) -> Maker:
    """Build atomate2's VASP static Maker that follows a relaxation (reusing its WAVECAR/CHGCAR).

    Parameters
    ----------
    input_set
        ``"mp-gga"``: :class:`~atomate2.vasp.jobs.mp.MPGGAStaticMaker` (``"MP GGA static"``);
        ``"atomate2"``: :class:`~atomate2.vasp.jobs.core.StaticMaker` (``"static"``).
    **options
        :class:`VaspMakerOptions`, as in :func:`double_relax_maker`.

    Returns
    -------
    Maker
        The configured static Maker.
    """
    reuse = {"additional_vasp_files": ("WAVECAR", "CHGCAR")}
    maker = input_set_maker("static", input_set, copy_vasp_kwargs=reuse)
    return configure_vasp_makers(maker, **options)


def chgnet_relax_maker(fmax: float = 0.05, steps: int = 500, pressure_gpa: float = 0.0) -> Maker:
    """Build atomate2's CHGNet relaxation Maker (cell and positions relaxed) for the pre-relax.

    The criteria are those of :func:`relax.chgnet_jobflow.chgnet_relax_maker` (FIRE, the same
    optimiser as the relax package's batched CHGNet relaxer); only the job name differs.

    Parameters
    ----------
    fmax
        Force criterion of the ASE optimiser, eV/Å.
    steps
        Maximum number of optimiser steps.
    pressure_gpa
        External pressure, GPa (the cell filter's scalar pressure).

    Returns
    -------
    Maker
        ``ForceFieldRelaxMaker(force_field_name="CHGNet")`` named ``"CHGNet pre-relax"``.
    """
    from relax.chgnet_jobflow import chgnet_relax_maker as _chgnet_maker

    return _chgnet_maker(
        fmax=fmax, steps=steps, relax_cell=True, name="CHGNet pre-relax", pressure_gpa=pressure_gpa
    )


def protocol_incar(protocol: RelaxProtocol) -> dict[str, Any]:
    """INCAR settings that put a relaxation protocol into a VASP input set.

    Only what differs from the input sets' own defaults is set, so the default protocol (0 GPa,
    no dispersion, cell relaxed, spin auto) leaves MP-compatible inputs unchanged.

    Four fields reach VASP: pressure, dispersion, ``relax_cell`` and ``spin``. The others are
    pw.x's and are ignored here: k-points (``kspacing``, ``relax_kspacing``), ``ENCUT``
    (``ecutwfc``, ``ecutrho``), ``ISMEAR``/``SIGMA`` (``smearing``, ``degauss``) and ``EDIFFG``
    (``dft_fmax``; VASP has no stress criterion for ``dft_press_conv_kbar``) stay the atomate2
    input set's. A user sets them with ``user_incar_settings``, e.g. ``{"KSPACING": 0.2,
    "EDIFFG": -0.0257}``: VASP's ``KSPACING`` has the protocol's convention (Å⁻¹, 2π
    included), and with it the input set writes no KPOINTS file.

    Parameters
    ----------
    protocol
        The protocol.

    Returns
    -------
    dict
        ``PSTRESS`` (kbar) when the pressure is not zero; ``IVDW = 12`` (D3 with Becke-Johnson
        damping, PBE parameters chosen by VASP from ``GGA = PE``, two-body) for ``"d3bj"``;
        ``ISIF = 2`` when the cell is fixed; ``ISPIN = 1`` when spin is off.
    """
    incar: dict[str, Any] = {}
    if protocol.pressure_gpa != 0.0:
        incar["PSTRESS"] = protocol.pressure_kbar
    if protocol.dispersion == "d3bj":
        incar["IVDW"] = 12
    if not protocol.relax_cell:
        incar["ISIF"] = 2
    if protocol.spin == "off":
        incar["ISPIN"] = 1
    return incar


@dataclass
class CHGNetVaspRelaxMaker(Maker):
    """CHGNet pre-relaxation followed by a VASP double relaxation (and an optional static).

    Parameters
    ----------
    name
        Name of the flows produced by this Maker.
    chgnet_maker
        The force-field pre-relax Maker; ``None`` skips the pre-relax.
    vasp_maker
        The VASP (double-)relaxation flow Maker, run on the pre-relaxed structure.
    static_maker
        An optional VASP static Maker run on the relaxed structure (``None``: no static).
    """

    name: str = "CHGNet + VASP relax"
    chgnet_maker: Maker | None = field(default_factory=chgnet_relax_maker)
    vasp_maker: Maker = field(default_factory=double_relax_maker)
    static_maker: Maker | None = None

    def make(self, structure: Any, prev_dir: str | Path | None = None) -> Flow:
        """Create the pre-relax -> VASP relaxation flow.

        Parameters
        ----------
        structure
            A pymatgen ``Structure``.
        prev_dir
            A previous VASP directory to copy outputs from (passed to the VASP Maker).

        Returns
        -------
        Flow
            The flow; its output is the task document of the last VASP job.
        """
        jobs: list = []
        if self.chgnet_maker is not None:
            pre = self.chgnet_maker.make(structure)
            jobs.append(pre)
            structure = pre.output.structure
        vasp = self.vasp_maker.make(structure, prev_dir=prev_dir)
        jobs.append(vasp)
        output = vasp.output
        if self.static_maker is not None:
            static = self.static_maker.make(output.structure, prev_dir=output.dir_name)
            jobs.append(static)
            output = static.output
        return Flow(jobs, output=output, name=self.name)
