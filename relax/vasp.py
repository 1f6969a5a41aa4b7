"""VASP relaxations through atomate2 Makers, custodian and jobflow, behind :class:`Relaxer`.

For clusters that license VASP. Each structure becomes one jobflow Flow, built by
:class:`relax.vasp_makers.CHGNetVaspRelaxMaker` (an optional in-flow CHGNet pre-relax, then an
MP-compatible VASP double relaxation), run with ``jobflow.run_locally`` into a ``JobStore``; the
task documents are read back from the store and mapped to :class:`RelaxResult` (one stage per
job). custodian runs VASP with the error handlers named in the settings; when it gives up (or
any job raises) that structure gets an error result and the next structure goes on.

>>> from relax import get_relaxer
>>> relaxer = get_relaxer("vasp", vasp_cmd="srun vasp_std")  # doctest: +SKIP
>>> results = relaxer.relax([("mp-149", structure)])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import time
import uuid
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from jobflow import Flow, JobStore, run_locally
from pymatgen.core import Structure
from tqdm.auto import tqdm

from relax.base import DEFAULT_MAX_ATOMS, DEFAULT_MIN_DISTANCE, Relaxer, RelaxResult
from relax.protocol import ProtocolSpec
from relax.vasp_makers import (
    DEFAULT_HANDLERS,
    CHGNetVaspRelaxMaker,
    InputSetName,
    VaspProfile,
    build_handlers,
    chgnet_relax_maker,
    double_relax_maker,
    protocol_incar,
    static_maker,
)
from relax.vasp_results import (
    forcefield_stage_result,
    read_custodian_log,
    summarise_corrections,
    vasp_stage_result,
)


def default_work_dir() -> Path:
    """Return the folder for VASP job directories: ``$DFTLOOP_HOME/vasp`` (``./dftloop-runs``)."""
    return Path(os.environ.get("DFTLOOP_HOME", "dftloop-runs")) / "vasp"


class VaspRelaxer(Relaxer):
    """Relax structures with VASP (atomate2 Makers + custodian), one jobflow Flow per structure.

    The protocol (:class:`relax.protocol.RelaxProtocol`) reaches the INCAR through
    :func:`relax.vasp_makers.protocol_incar`: ``PSTRESS`` (kbar) for a pressure, ``IVDW = 12``
    for D3(BJ), ``ISIF = 2`` for a fixed cell, ``ISPIN = 1`` with spin off. k-points,
    ``ENCUT``, smearing and ``EDIFFG`` stay those of the input set (the protocol's k-spacing,
    cutoffs, smearing and DFT thresholds are pw.x's); set them with ``user_incar_settings``
    (e.g. ``{"KSPACING": 0.2}``, the protocol's 2π convention).

    Parameters
    ----------
    protocol
        The relaxation protocol (dataset name, dict of fields or protocol; ``None``: 0 GPa,
        no dispersion: the input set unchanged).
    input_set
        ``"mp-gga"`` (default; MPRelaxSet double relaxation, energies compatible with the
        Materials Project GGA entries) or ``"atomate2"`` (atomate2's ``DoubleRelaxMaker``).
    prerelax
        ``"chgnet"`` puts atomate2's CHGNet ``ForceFieldRelaxMaker`` in front of VASP inside the
        flow; ``None`` (default) relaxes the structures as given -- use
        ``get_relaxer("chgnet+vasp")`` for the batched CHGNet pre-relax of :mod:`relax`.
    prerelax_fmax, prerelax_steps
        Force criterion (eV/Å) and step limit of the in-flow CHGNet pre-relax.
    final_static
        Run a static calculation on the relaxed structure (MP practice: the reported final
        energy, forces and stress then come from the static).
    handlers
        custodian error handlers (class names in :mod:`custodian.vasp.handlers`).
    max_errors
        Corrections custodian applies before it gives up on a VASP run.
    user_incar_settings
        INCAR overrides for both relaxations (they change the settings hash; they win over
        the protocol's INCAR settings).
    handle_unsuccessful
        A VASP run that ends unconverged: ``False`` (default) continues and reports
        ``not_converged``; ``True`` stops the flow there; ``"error"`` makes it a failure.
    store
        The jobflow ``JobStore`` (needs a ``data`` additional store). ``None`` takes the project
        store, :func:`dftloop_io.job_store.load_job_store` (``JOBFLOW_CONFIG_FILE``, else the
        MontyStore under ``$DFTLOOP_HOME/store``), the store the flows write to.
    work_dir
        Parent folder of the per-structure job directories (default :func:`default_work_dir`).
    profile
        The machine profile (VASP command, custodian scratch directory and options).
    vasp_cmd
        Shortcut for ``profile.vasp_cmd``.
    check_vasp_cmd
        Report every structure as ``unavailable`` when the first word of the VASP command is not
        an executable on ``PATH`` (instead of letting custodian fail on each).
    progress
        Show a progress bar over the structures.
    max_atoms, min_distance
        Input-check limits (see :class:`relax.base.Relaxer`).
    """

    name = "vasp"

    def __init__(
        self,
        *,
        protocol: ProtocolSpec = None,
        input_set: InputSetName = "mp-gga",
        prerelax: Literal["chgnet"] | None = None,
        prerelax_fmax: float = 0.05,
        prerelax_steps: int = 500,
        final_static: bool = False,
        handlers: Sequence[str] = DEFAULT_HANDLERS,
        max_errors: int = 5,
        user_incar_settings: dict[str, Any] | None = None,
        handle_unsuccessful: bool | Literal["error"] = False,
        store: JobStore | None = None,
        work_dir: str | Path | None = None,
        profile: VaspProfile | dict[str, Any] | None = None,
        vasp_cmd: str | None = None,
        check_vasp_cmd: bool = True,
        progress: bool = True,
        max_atoms: int = DEFAULT_MAX_ATOMS,
        min_distance: float = DEFAULT_MIN_DISTANCE,
    ) -> None:
        super().__init__(max_atoms=max_atoms, min_distance=min_distance, protocol=protocol)
        if input_set not in ("mp-gga", "atomate2"):
            raise ValueError(f"unknown VASP input set {input_set!r}; use 'mp-gga' or 'atomate2'")
        if prerelax not in (None, "chgnet"):
            raise ValueError(f"unknown pre-relax {prerelax!r}; use 'chgnet' or None")
        if prerelax == "chgnet" and self.protocol.dispersion != "none":
            raise ValueError(
                "the in-flow CHGNet pre-relax (atomate2) has no D3; with dispersion "
                f"{self.protocol.dispersion!r} use the relaxer 'chgnet+vasp' instead"
            )
        if handle_unsuccessful not in (True, False, "error"):
            raise ValueError("handle_unsuccessful must be True, False or 'error'")
        build_handlers(handlers)  # fail early on a misspelt handler name
        self.input_set: InputSetName = input_set
        self.prerelax = prerelax
        self.prerelax_fmax = float(prerelax_fmax)
        self.prerelax_steps = int(prerelax_steps)
        self.final_static = bool(final_static)
        self.handlers = tuple(handlers)
        self.max_errors = int(max_errors)
        self.user_incar_settings = dict(user_incar_settings or {})
        self.handle_unsuccessful = handle_unsuccessful
        self._store = store
        self.work_dir = Path(work_dir) if work_dir is not None else default_work_dir()
        if isinstance(profile, dict):
            profile = VaspProfile(**profile)
        self.profile = profile or VaspProfile()
        if vasp_cmd is not None:
            self.profile.vasp_cmd = vasp_cmd
        self.check_vasp_cmd = bool(check_vasp_cmd)
        self.progress = bool(progress)

    # -- configuration -------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Return the settings that determine the result (the machine profile is not included).

        Returns
        -------
        dict
            Input set, pre-relax, custodian handlers and limit, INCAR overrides, the versions
            of atomate2 and pymatgen (they define the input sets) and the input-check limits.
        """
        from importlib.metadata import version

        return {
            "input_set": self.input_set,
            "prerelax": self.prerelax,
            "prerelax_fmax": self.prerelax_fmax if self.prerelax else None,
            "prerelax_steps": self.prerelax_steps if self.prerelax else None,
            "final_static": self.final_static,
            "handlers": list(self.handlers),
            "max_errors": self.max_errors,
            "user_incar_settings": dict(sorted(self.user_incar_settings.items())),
            "handle_unsuccessful": self.handle_unsuccessful,
            "versions": {pkg: version(pkg) for pkg in ("atomate2", "pymatgen", "custodian")},
            **self.check_settings(),
        }

    def supported_elements(self) -> frozenset[str] | None:
        """Return the elements the input set has POTCARs for."""
        return self._potcar_elements

    @cached_property
    def _potcar_elements(self) -> frozenset[str]:
        from atomate2.vasp.sets.core import RelaxSetGenerator
        from pymatgen.io.vasp.sets import MPRelaxSet

        if self.input_set == "mp-gga":
            return frozenset(MPRelaxSet.CONFIG["POTCAR"])
        return frozenset(RelaxSetGenerator().config_dict["POTCAR"])

    @property
    def store(self) -> JobStore:
        """The jobflow store the flows write to (the project store if none was given)."""
        if self._store is None:
            from dftloop_io.job_store import load_job_store

            self._store = load_job_store()
        if "data" not in self._store.additional_stores:
            raise ValueError(
                "the JobStore has no 'data' additional store; atomate2 VASP and force-field "
                "jobs write trajectories and volumetric data there"
            )
        return self._store

    def _vasp_options(self) -> dict[str, Any]:
        return {
            "run_vasp_kwargs": self.profile.run_vasp_kwargs(self.handlers, self.max_errors),
            "user_incar_settings": self.incar_settings(),
            "handle_unsuccessful": self.handle_unsuccessful,
        }

    def incar_settings(self) -> dict[str, Any]:
        """INCAR overrides of both relaxations: the protocol's, then ``user_incar_settings``."""
        return {**protocol_incar(self.protocol), **self.user_incar_settings}

    def maker(self) -> CHGNetVaspRelaxMaker:
        """Build the atomate2 Maker for these settings.

        Returns
        -------
        CHGNetVaspRelaxMaker
            Pre-relax Maker (or ``None``), the configured VASP double-relaxation Maker and, with
            ``final_static``, the static Maker.
        """
        options = self._vasp_options()
        vasp_maker = double_relax_maker(self.input_set, **options)
        static = static_maker(self.input_set, **options) if self.final_static else None
        pre = (
            chgnet_relax_maker(
                self.prerelax_fmax, self.prerelax_steps, pressure_gpa=self.protocol.pressure_gpa
            )
            if self.prerelax == "chgnet"
            else None
        )
        return CHGNetVaspRelaxMaker(chgnet_maker=pre, vasp_maker=vasp_maker, static_maker=static)

    def single_point_maker(self) -> CHGNetVaspRelaxMaker:
        """Build the Maker of a single point: the input set's static job only (no pre-relax).

        Returns
        -------
        CHGNetVaspRelaxMaker
            ``vasp_maker`` is the static Maker (``"MP GGA static"`` for ``"mp-gga"``).
        """
        return CHGNetVaspRelaxMaker(
            chgnet_maker=None, vasp_maker=static_maker(self.input_set, **self._vasp_options())
        )

    @property
    def dft_available(self) -> bool:
        """Whether the VASP command's program is on ``PATH`` (always ``True`` if not checked)."""
        return not self.check_vasp_cmd or self.vasp_command_problem() is None

    def vasp_command_problem(self) -> str | None:
        """Return why the VASP command cannot run here, or ``None`` if its program exists."""
        cmd = self.profile.run_vasp_kwargs((), self.max_errors)["vasp_cmd"]
        words = shlex.split(os.path.expandvars(cmd))
        if not words:
            return "the VASP command is empty"
        if shutil.which(words[0]) is None:
            return (
                f"VASP command {cmd!r}: {words[0]!r} is not on PATH "
                "(set vasp_cmd=..., ATOMATE2_VASP_CMD or VASP_CMD in ~/.atomate2.yaml)"
            )
        return None

    # -- running -------------------------------------------------------------------------------
    def _relax_valid(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        return self._run_all(items, single_point=False)

    def single_point(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        """VASP static (the input set's static job) of each structure as given.

        For a ΔE with both energies from the same input set, use ``final_static=True`` so that
        the final energy also comes from a static.

        Parameters
        ----------
        items
            ``(structure_id, structure)`` pairs.

        Returns
        -------
        list of RelaxResult
            ``initial_energy_eV == final_energy_eV``, ``n_ionic_steps == 0``, the input structure.
        """
        return self._run_checked(items, lambda batch: self._run_all(batch, single_point=True))

    def _run_all(
        self, items: Sequence[tuple[str, Structure]], *, single_point: bool
    ) -> list[RelaxResult]:
        problem = self.vasp_command_problem() if self.check_vasp_cmd else None
        if problem is not None:
            return [
                RelaxResult.failure(
                    sid, self, problem, structure=s, status="unavailable", dft_available=False
                )
                for sid, s in items
            ]
        store = self.store
        maker = self.single_point_maker() if single_point else self.maker()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        results = []
        desc = "VASP static" if single_point else "VASP relax"
        bar = tqdm(items, desc=desc, unit="structure", disable=not self.progress)
        for sid, structure in bar:
            bar.set_postfix_str(str(sid)[:30])
            try:
                result = self._relax_one(maker, store, sid, structure)
                if single_point and result.error is None:
                    result = _as_single_point(result, structure)
                results.append(result)
            except Exception as exc:  # a bug or a broken store: still one result per item
                results.append(
                    RelaxResult.failure(
                        sid, self, f"{type(exc).__name__}: {exc}", structure=structure
                    )
                )
        return results

    def _relax_one(
        self, maker: CHGNetVaspRelaxMaker, store: JobStore, sid: str, structure: Structure
    ) -> RelaxResult:
        """Build, run and read back the flow of one structure."""
        start = time.perf_counter()
        root = self.work_dir / f"{_safe_name(sid)}-{uuid.uuid4().hex[:8]}"
        flow: Flow = maker.make(structure)
        jobs = [job for job, _ in flow.iterflow()]
        failure: Exception | None = None
        try:
            run_locally(
                flow,
                store=store,
                create_folders=True,
                root_dir=root,
                raise_immediately=True,
                log=False,
            )
        except Exception as exc:  # custodian gave up, a parser failed, ...
            failure = exc

        stages: list[RelaxResult] = []
        failed_job = None
        for job in jobs:
            doc = _load_output(store, job.uuid)
            if doc is None:
                failed_job = failed_job or job
                continue
            if doc.get("@class") == "ForceFieldTaskDocument" or "forcefield_name" in doc:
                stages.append(forcefield_stage_result(sid, doc))
            else:
                stages.append(vasp_stage_result(sid, doc))
        vasp_stages = [s for s in stages if s.dft_available]
        relax_stages = [s for s in vasp_stages if s.extra.get("incar", {}).get("NSW")]
        wall = time.perf_counter() - start
        common = {
            "structure": structure,
            "stages": stages,
            "wall_time_s": wall,
            "dft_available": True,
        }

        if failure is not None or not vasp_stages:
            job_dir = _newest_job_dir(root)
            corrections = read_custodian_log(job_dir) if job_dir is not None else []
            where = f"job {failed_job.name!r}" if failed_job is not None else "flow"
            what = f"{type(failure).__name__}: {failure}" if failure else "no VASP output"
            reason = f"{where} failed: {what}"
            if corrections:
                reason += f" (custodian corrections: {summarise_corrections(corrections)})"
            return RelaxResult.failure(
                sid,
                self,
                reason,
                extra={
                    "work_dir": str(root),
                    "failed_job_dir": str(job_dir) if job_dir else None,
                    "custodian_corrections": corrections,
                },
                **common,
            )

        final = vasp_stages[-1]  # the static, if one was run
        converged = all(s.converged for s in (relax_stages[-1:] or vasp_stages) + [final])
        warnings = [w for s in stages for w in s.warnings]
        if failed_job is not None:  # handle_unsuccessful=True stopped the flow early
            converged = False
            warnings.append(
                f"stopped before job {failed_job.name!r}: an earlier run did not converge"
            )
        first = vasp_stages[0]
        given_as_is = self.prerelax is None
        return RelaxResult(
            structure_id=sid,
            relaxer=self.name,
            settings=self.settings(),
            settings_hash=self.settings_hash,
            formula=structure.composition.reduced_formula,
            n_sites=len(structure),
            initial_energy_eV=first.initial_energy_eV if given_as_is else None,
            initial_energy_per_atom_eV=first.initial_energy_per_atom_eV if given_as_is else None,
            final_structure=final.final_structure,
            final_energy_eV=final.final_energy_eV,
            final_energy_per_atom_eV=final.final_energy_per_atom_eV,
            forces=final.forces,
            stress=final.stress,
            n_ionic_steps=sum(s.n_ionic_steps for s in relax_stages),
            converged=converged,
            status="ok" if converged else "not_converged",
            wall_time_s=wall,
            dft_available=True,
            stages=stages,
            warnings=warnings,
            extra={
                "work_dir": str(root),
                "input_set": self.input_set,
                "first_dft_energy_eV": first.initial_energy_eV,
                "job_dirs": [s.extra.get("dir_name") for s in stages],
            },
        )


def _as_single_point(result: RelaxResult, structure: Structure) -> RelaxResult:
    """Turn the result of a static-only flow into a single-point result."""
    return result.model_copy(
        update={
            "initial_energy_eV": result.final_energy_eV,
            "initial_energy_per_atom_eV": result.final_energy_per_atom_eV,
            "final_structure": structure.as_dict(),
            "n_ionic_steps": 0,
        }
    )


def _load_output(store: JobStore, job_uuid: str) -> dict[str, Any] | None:
    """Return a job's stored output with data-store references resolved, or ``None``."""
    try:
        doc = store.get_output(job_uuid, which="last", load=True)
    except ValueError:
        return None
    if hasattr(doc, "model_dump"):
        doc = doc.model_dump()
    return doc if isinstance(doc, dict) else None


def _newest_job_dir(root: Path) -> Path | None:
    """Return the most recently created ``job_*`` folder under ``root`` (the failed job)."""
    # jobflow names job folders job_<UTC timestamp>-<random>, so name order is start order
    dirs = sorted(root.glob("job_*")) if root.is_dir() else []
    return dirs[-1] if dirs else None


def _safe_name(structure_id: str) -> str:
    """Return ``structure_id`` reduced to characters that are safe in a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(structure_id))[:60] or "structure"
