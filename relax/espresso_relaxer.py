"""Quantum ESPRESSO relaxation (pw.x ``vc-relax``) and single points (``scf``) through ASE.

Per structure: SSSP pseudopotentials and cutoffs, a k-point grid from a density, Marzari-Vanderbilt
smearing, spin polarisation when a magnetic element is present
(:mod:`relax.espresso_params`); pw.x started by :mod:`relax.espresso_profile` in a scratch folder
of its own, with a time limit. An SCF that does not converge is retried with gentler mixing,
more SCF steps and then conjugate-gradient diagonalisation (continuing from the last complete
geometry). See ``docs/relax.md`` for every setting and error.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from ase import Atoms, units
from ase.io import read as ase_read
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from tqdm.auto import tqdm

from relax.base import DEFAULT_MAX_ATOMS, DEFAULT_MIN_DISTANCE, Relaxer, RelaxResult, Status
from relax.espresso_params import (
    MAGNETIC_ELEMENTS,
    PseudoLibrary,
    kpoint_grid,
    starting_magnetisation,
)
from relax.espresso_profile import (
    EspressoInterrupted,
    EspressoMachine,
    EspressoRunError,
    EspressoTimeout,
    crashed,
)
from relax.protocol import RY_PER_BOHR_IN_EV_PER_A, ProtocolSpec

Calculation = Literal["scf", "vc-relax", "relax"]

SCRATCH_ENV = "DFTLOOP_SCRATCH_DIR"

RECOVERY_LADDER: tuple[dict[str, Any], ...] = (
    {},
    {"mixing_beta": 0.2, "electron_maxstep": 200},
    {"mixing_beta": 0.1, "electron_maxstep": 300, "diagonalization": "cg"},
)
"""Electron-step overrides tried in turn when an SCF does not converge (values only lower
``mixing_beta`` and only raise ``electron_maxstep``)."""

_SCF_FAILED = "convergence NOT achieved"
_MAX_STEPS = "maximum number of steps has been reached"
_BFGS_DONE = re.compile(r"bfgs converged in\s+(\d+) scf cycles and\s+(\d+) bfgs steps")


class EspressoRelaxer(Relaxer):
    """Relax structures with Quantum ESPRESSO's pw.x (``vc-relax``, BFGS on positions and cell).

    The physics comes from the protocol (:class:`relax.protocol.RelaxProtocol`): pressure
    (``press`` in kbar, ``vc-relax``), DFT-D3(BJ) (``vdw_corr='dft-d3'``, ``dftd3_version=4``,
    two-body), k-spacing, cutoffs, smearing, spin, force and pressure thresholds. The keyword
    arguments of the same name below override the protocol's fields when given.

    Parameters
    ----------
    protocol
        The relaxation protocol (dataset name, dict of fields or protocol; ``None``: 0 GPa,
        no dispersion, k-spacing 0.3 Å⁻¹, SSSP cutoffs).
    kspacing
        Largest k-point spacing, Å⁻¹ (2π included): ``N_i = ceil(|b_i| / kspacing)``
        (overrides ``protocol.kspacing``). Single points, and so every energy, use it.
    relax_kspacing
        k-point spacing of the relaxation (overrides ``protocol.relax_kspacing``; ``None``
        there: ``kspacing``). When it differs from ``kspacing``, a relaxation is followed by
        an SCF of the relaxed structure at ``kspacing`` whose energy, forces and stress are the
        result's, and the initial energy is an SCF of the input at ``kspacing`` (see
        ``initial_single_point``); the relaxation's own energies are kept in ``extra``.
    initial_single_point
        With a separate relaxation grid: compute the initial energy by an SCF of the input at
        ``kspacing`` (else it is left empty; the two-stage relaxer computes its own, of the
        structure before the force-field stage).
    ecutwfc, ecutrho
        Cutoffs in Ry; ``None`` takes the protocol's, and when it has none the SSSP library's
        (see :meth:`relax.espresso_params.PseudoLibrary.cutoffs`).
    smearing, degauss
        Occupation smearing (``"mv"``: Marzari-Vanderbilt cold smearing) and its width, Ry
        (override the protocol's).
    conv_thr_per_atom
        SCF threshold per atom, Ry (``conv_thr = conv_thr_per_atom · n_atoms``).
    mixing_beta, electron_maxstep, diagonalization
        SCF settings of the first attempt.
    forc_conv_thr, etot_conv_thr, press_conv_thr
        Relaxation thresholds: Ry/Bohr, Ry, kbar (pw.x's own units and defaults;
        ``forc_conv_thr`` and ``press_conv_thr`` override the protocol's ``dft_fmax`` and
        ``dft_press_conv_kbar``).
    nstep
        Largest number of ionic (BFGS) steps.
    ion_dynamics, cell_dynamics, cell_dofree
        pw.x optimiser settings (``bfgs``, ``bfgs``, ``all``).
    magnetic_elements, starting_magnetization
        Elements that start spin-polarised and their ``starting_magnetization``.
    recovery
        Retry SCF non-convergence with :data:`RECOVERY_LADDER`.
    pseudo_dir
        Pseudopotential folder (default ``$DFTLOOP_PSEUDO_DIR`` or ``../shared/pseudos/...``).
    machine
        How pw.x runs (binary, MPI ranks, pools, time limit); or give ``n_procs``, ``pools``,
        ``timeout_s``, ``pw_command`` directly.
    scratch_dir
        Root of the per-structure scratch folders (default ``$DFTLOOP_SCRATCH_DIR`` or the
        system temporary folder / ``dftloop-espresso``).
    keep_scratch
        Keep the scratch folder of successful runs too (failed runs are always kept).
    max_atoms, min_distance
        Input-check limits.
    progress
        Show a progress bar over structures.
    """

    name: ClassVar[str] = "espresso"

    def __init__(
        self,
        *,
        protocol: ProtocolSpec = None,
        kspacing: float | None = None,
        relax_kspacing: float | None = None,
        initial_single_point: bool = True,
        ecutwfc: float | None = None,
        ecutrho: float | None = None,
        smearing: str | None = None,
        degauss: float | None = None,
        conv_thr_per_atom: float = 1e-9,
        mixing_beta: float = 0.4,
        electron_maxstep: int = 100,
        diagonalization: str = "david",
        forc_conv_thr: float | None = None,
        etot_conv_thr: float = 1e-4,
        press_conv_thr: float | None = None,
        nstep: int = 100,
        ion_dynamics: str = "bfgs",
        cell_dynamics: str = "bfgs",
        cell_dofree: str = "all",
        magnetic_elements: Sequence[str] | None = None,
        starting_magnetization: float = 0.5,
        recovery: bool = True,
        pseudo_dir: str | Path | None = None,
        machine: EspressoMachine | None = None,
        n_procs: int | None = None,
        pools: int | None = None,
        timeout_s: float | None = None,
        pw_command: str | None = None,
        scratch_dir: str | Path | None = None,
        keep_scratch: bool = False,
        max_atoms: int = DEFAULT_MAX_ATOMS,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        progress: bool = False,
    ) -> None:
        super().__init__(max_atoms=max_atoms, min_distance=min_distance, protocol=protocol)
        if kspacing is not None and kspacing <= 0:
            raise ValueError(f"kspacing must be positive, got {kspacing}")
        self.protocol = self.protocol.with_overrides(
            kspacing=kspacing,
            relax_kspacing=relax_kspacing,
            ecutwfc=ecutwfc,
            ecutrho=ecutrho,
            smearing=smearing,
            degauss=degauss,
            dft_fmax=None if forc_conv_thr is None else forc_conv_thr * RY_PER_BOHR_IN_EV_PER_A,
            dft_press_conv_kbar=press_conv_thr,
        )
        self.kspacing = self.protocol.kspacing
        self.relax_kspacing = self.protocol.relax_kspacing or self.kspacing
        self.initial_single_point = bool(initial_single_point)
        self.ecutwfc = self.protocol.ecutwfc
        self.ecutrho = self.protocol.ecutrho
        self.smearing = self.protocol.smearing
        self.degauss = self.protocol.degauss
        self.conv_thr_per_atom = float(conv_thr_per_atom)
        self.mixing_beta = float(mixing_beta)
        self.electron_maxstep = int(electron_maxstep)
        self.diagonalization = diagonalization
        self.forc_conv_thr = self.protocol.forc_conv_thr_ry_bohr
        self.etot_conv_thr = float(etot_conv_thr)
        self.press_conv_thr = self.protocol.dft_press_conv_kbar
        self.nstep = int(nstep)
        self.ion_dynamics = ion_dynamics
        self.cell_dynamics = cell_dynamics
        self.cell_dofree = cell_dofree
        self.magnetic_elements = frozenset(
            MAGNETIC_ELEMENTS if magnetic_elements is None else magnetic_elements
        )
        self.starting_magnetization = float(starting_magnetization)
        self.recovery = bool(recovery)
        self.library = PseudoLibrary.load(pseudo_dir)
        self.machine = machine or EspressoMachine()
        if n_procs is not None:
            self.machine.n_procs = int(n_procs)
        if pools is not None:
            self.machine.pools = int(pools)
        if timeout_s is not None:
            self.machine.timeout_s = float(timeout_s)
        if pw_command is not None:
            self.machine.pw_command = pw_command
        self.scratch_root = (
            Path(scratch_dir).expanduser().resolve() if scratch_dir else default_scratch_root()
        )
        self.keep_scratch = bool(keep_scratch)
        self.progress = progress

    # -- settings ------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Return the physics settings (the machine, scratch and time limit are not included).

        Pressure, dispersion, k-spacing, cutoffs, smearing, spin and the force and pressure
        thresholds are in ``"protocol"``; the rest are pw.x's own.
        """
        return {
            "code": "Quantum ESPRESSO pw.x",
            "pseudopotentials": self.library.name,
            "conv_thr_per_atom": self.conv_thr_per_atom,
            "mixing_beta": self.mixing_beta,
            "electron_maxstep": self.electron_maxstep,
            "diagonalization": self.diagonalization,
            "etot_conv_thr": self.etot_conv_thr,
            "nstep": self.nstep,
            "ion_dynamics": self.ion_dynamics,
            "cell_dynamics": self.cell_dynamics,
            "cell_dofree": self.cell_dofree,
            "magnetic_elements": sorted(self.magnetic_elements),
            "starting_magnetization": self.starting_magnetization,
            "recovery": self.recovery,
            **self._energy_settings(),
            **self.check_settings(),
        }

    @property
    def final_single_point(self) -> bool:
        """Whether energies come from SCFs at ``kspacing`` after a relaxation on another grid."""
        return not math.isclose(self.relax_kspacing, self.kspacing)

    def _energy_settings(self) -> dict[str, Any]:
        """Where the energies come from, recorded only with a separate relaxation grid."""
        if not self.final_single_point:
            return {}
        return {
            "energies": "SCF at kspacing of the relaxed structure (relaxed at relax_kspacing)",
            "initial_energy": "SCF at kspacing of the input" if self.initial_single_point else None,
        }

    def check(self, structure: Structure | None) -> str | None:
        """Input check plus: every element needs a pseudopotential in the library."""
        reason = super().check(structure)
        if reason is None and structure is not None:
            missing = self.library.missing(structure)
            if missing:
                return f"no pseudopotential for {', '.join(missing)} in {self.library.directory}"
        return reason

    @property
    def dft_available(self) -> bool:
        """Whether pw.x can be found."""
        return self.machine.pw_path() is not None

    # -- inputs --------------------------------------------------------------------------------
    def parameters(
        self,
        structure: Structure,
        calculation: Calculation = "vc-relax",
        overrides: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """pw.x parameters for ``structure`` (ASE ``Espresso`` keyword arguments).

        Parameters
        ----------
        structure
            The structure.
        calculation
            ``"scf"``, ``"relax"`` or ``"vc-relax"``.
        overrides
            Electron-section overrides (a step of the recovery ladder).

        Returns
        -------
        dict
            ``input_data`` (nested namelists), ``pseudopotentials``, ``kpts``, ``koffset``.
        """
        ecutwfc, ecutrho = self.library.cutoffs(structure)
        if self.ecutwfc is not None:
            ecutwfc = float(self.ecutwfc)
            if self.ecutrho is None:
                ecutrho = max(e.dual for e in self._entries(structure)) * ecutwfc
        if self.ecutrho is not None:
            ecutrho = float(self.ecutrho)
        n = len(structure)
        control: dict[str, Any] = {
            "calculation": calculation,
            "prefix": "pwscf",
            "outdir": "./out",
            "tprnfor": True,
            "tstress": True,
            "disk_io": "low",
        }
        if calculation != "scf":
            control.update(
                nstep=self.nstep,
                forc_conv_thr=self.forc_conv_thr,
                etot_conv_thr=self.etot_conv_thr,
            )
        system: dict[str, Any] = {
            "ecutwfc": ecutwfc,
            "ecutrho": ecutrho,
            "occupations": "smearing",
            "smearing": self.smearing,
            "degauss": self.degauss,
        }
        if self.protocol.dispersion == "d3bj":
            # Grimme D3 with Becke-Johnson damping, two-body only (as VASP's IVDW = 12)
            system.update(vdw_corr="dft-d3", dftd3_version=4, dftd3_threebody=False)
        electrons: dict[str, Any] = {
            "conv_thr": self.conv_thr_per_atom * n,
            "mixing_beta": self.mixing_beta,
            "electron_maxstep": self.electron_maxstep,
            "diagonalization": self.diagonalization,
        }
        for key, value in (overrides or {}).items():
            if key == "mixing_beta":
                electrons[key] = min(electrons[key], value)
            elif key == "electron_maxstep":
                electrons[key] = max(electrons[key], value)
            else:
                electrons[key] = value
        input_data: dict[str, Any] = {"control": control, "system": system, "electrons": electrons}
        if calculation in ("relax", "vc-relax"):
            input_data["ions"] = {"ion_dynamics": self.ion_dynamics}
        if calculation == "vc-relax":
            input_data["cell"] = {
                "cell_dynamics": self.cell_dynamics,
                "press": self.protocol.pressure_kbar,
                "press_conv_thr": self.press_conv_thr,
                "cell_dofree": self.cell_dofree,
            }
        return {
            "input_data": input_data,
            "pseudopotentials": self.library.pseudopotentials(structure),
            "kpts": kpoint_grid(
                structure, self.kspacing if calculation == "scf" else self.relax_kspacing
            ),
            "koffset": (0, 0, 0),
        }

    def _entries(self, structure: Structure) -> list[Any]:
        return [self.library.entries[el.symbol] for el in structure.composition.elements]

    def atoms(self, structure: Structure) -> Atoms:
        """ASE atoms with the starting magnetisation set (ASE then writes ``nspin = 2``)."""
        atoms = AseAtomsAdaptor.get_atoms(structure)
        magnetic = self.magnetic_elements if self.protocol.spin == "auto" else frozenset()
        magmoms = starting_magnetisation(structure, magnetic, self.starting_magnetization)
        atoms.set_initial_magnetic_moments(magmoms if magmoms is not None else None)
        return atoms

    def write_input(
        self,
        structure: Structure,
        directory: str | Path,
        calculation: Calculation = "vc-relax",
        overrides: dict[str, Any] | None = None,
    ) -> Path:
        """Write the pw.x input for ``structure`` into ``directory`` (ASE's Espresso writer).

        Returns
        -------
        Path
            The input file (``espresso.pwi``).
        """
        from ase.calculators.espresso import Espresso

        directory = Path(directory)
        params = self.parameters(structure, calculation, overrides)
        pools = self.machine.choose_pools(len(structure), int(np.prod(params["kpts"])))
        calc = Espresso(
            profile=self.machine.profile(self.library.directory, pools),
            directory=directory,
            **params,
        )
        calc.write_inputfiles(self.atoms(structure), ["energy", "forces", "stress"])
        return directory / calc.template.inputname

    # -- running -------------------------------------------------------------------------------
    @property
    def relax_calculation(self) -> Calculation:
        """``"vc-relax"`` when the protocol relaxes the cell, else ``"relax"``."""
        return "vc-relax" if self.protocol.relax_cell else "relax"

    def _relax_valid(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        relaxed = self._run_all(items, self.relax_calculation)
        if not self.final_single_point:
            return relaxed
        return [
            self._with_single_points(sid, s, r) for (sid, s), r in zip(items, relaxed, strict=True)
        ]

    def _with_single_points(
        self, sid: str, structure: Structure, relaxed: RelaxResult
    ) -> RelaxResult:
        """Energies, forces and stress from SCFs at ``kspacing`` (relaxation on another grid)."""
        if relaxed.status in ("unavailable", "interrupted") or relaxed.final_structure is None:
            return relaxed
        final = self._run_one(sid, relaxed.structure(), "scf")
        initial = self._run_one(sid, structure, "scf") if self.initial_single_point else None
        stopped = [r for r in (final, initial) if r is not None and r.status == "interrupted"]
        if stopped:  # an energy is missing because pw.x was stopped: not a result
            return stopped[0]
        wall = relaxed.wall_time_s + final.wall_time_s + (initial.wall_time_s if initial else 0.0)
        extra = {
            **relaxed.extra,
            "kpts": final.extra.get("kpts"),
            "relax_kpts": relaxed.extra.get("kpts"),
            "relax_initial_energy_eV": relaxed.initial_energy_eV,
            "relax_final_energy_eV": relaxed.final_energy_eV,
            "final_scf_attempts": final.extra.get("attempts"),
        }
        if final.error is not None:
            return RelaxResult.failure(
                sid,
                self,
                f"single point of the relaxed structure at kspacing {self.kspacing:g} failed: "
                f"{final.error.removeprefix(f'{sid}: ')} (the relaxed structure is kept)",
                structure=structure,
                final_structure=relaxed.final_structure,
                n_ionic_steps=relaxed.n_ionic_steps,
                wall_time_s=wall,
                dft_available=True,
                extra=extra,
            )
        warnings = list(relaxed.warnings) + [f"final SCF: {w}" for w in final.warnings]
        e0 = e0_pa = None
        if initial is not None:
            if initial.error is None:
                e0, e0_pa = initial.final_energy_eV, initial.final_energy_per_atom_eV
                extra["initial_scf_attempts"] = initial.extra.get("attempts")
            else:
                warnings.append(f"SCF of the input failed, initial energy unknown: {initial.error}")
        return relaxed.model_copy(
            update={
                "initial_energy_eV": e0,
                "initial_energy_per_atom_eV": e0_pa,
                "final_energy_eV": final.final_energy_eV,
                "final_energy_per_atom_eV": final.final_energy_per_atom_eV,
                "forces": final.forces,
                "stress": final.stress,
                "wall_time_s": wall,
                "warnings": warnings,
                "extra": extra,
            }
        )

    def single_point(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        """pw.x SCF energy, forces and stress of each structure as given."""
        return self._run_checked(items, lambda batch: self._run_all(batch, "scf"))

    def _run_all(
        self, items: Sequence[tuple[str, Structure]], calculation: Calculation
    ) -> list[RelaxResult]:
        if not self.dft_available:
            reason = (
                f"pw.x not available: {self.machine.pw_command!r} was not found on PATH "
                "(install quantum-espresso or set DFTLOOP_PW_COMMAND); nothing was computed"
            )
            return [
                RelaxResult.failure(
                    sid, self, reason, structure=s, status="unavailable", dft_available=False
                )
                for sid, s in items
            ]
        bar = tqdm(items, desc=f"pw.x {calculation}", disable=not self.progress)
        return [self._run_one(sid, s, calculation) for sid, s in bar]

    def _run_one(self, sid: str, structure: Structure, calculation: Calculation) -> RelaxResult:
        start = time.perf_counter()
        deadline = start + self.machine.timeout_s
        workdir = self.scratch_root / f"{_safe(sid)}-{calculation}-{uuid.uuid4().hex[:8]}"
        workdir.mkdir(parents=True, exist_ok=True)
        ladder = RECOVERY_LADDER if self.recovery else RECOVERY_LADDER[:1]
        current = structure
        first: Atoms | None = None
        attempts: list[dict[str, Any]] = []
        steps_done = 0
        common = {
            "dft_available": True,
            "extra": {"scratch_dir": str(workdir), "calculation": calculation},
        }
        for k, overrides in enumerate(ladder):
            attempt_dir = workdir / f"attempt-{k + 1}"
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return self._fail(
                    sid, structure, start, attempts, common, "time limit reached before retry"
                )
            record: dict[str, Any] = {"attempt": k + 1, "overrides": overrides}
            attempts.append(record)
            try:
                images, text, run_error = self._run_pw_once_more_after_a_crash(
                    current, attempt_dir, calculation, overrides, deadline, record
                )
            except EspressoTimeout as exc:
                record["outcome"] = "timeout"
                return self._fail(sid, structure, start, attempts, common, str(exc))
            except EspressoInterrupted as exc:  # not a result: the store hands it out again
                record["outcome"] = "interrupted"
                return self._fail(
                    sid, structure, start, attempts, common, str(exc), status="interrupted"
                )
            except Exception as exc:  # writing the input or parsing failed
                record["outcome"] = f"{type(exc).__name__}: {exc}"
                return self._fail(sid, structure, start, attempts, common, record["outcome"])
            if first is None and images:
                first = images[0]
            if _SCF_FAILED in text:
                record["outcome"] = "scf not converged"
                steps_done += max(len(images) - 1, 0) if images else 0
                if images:  # continue from the last complete geometry
                    current = AseAtomsAdaptor.get_structure(images[-1])
                continue
            if run_error is not None or not images:
                record["outcome"] = run_error or "no energy in the output"
                detail = _pw_error_message(text) or run_error or "no energy in the output"
                return self._fail(sid, structure, start, attempts, common, f"pw.x failed: {detail}")
            record["outcome"] = "ok"
            assert first is not None
            result = self._success(
                sid, structure, calculation, first, images, text, start, attempts, steps_done
            )
            if self.keep_scratch:
                result.extra["scratch_dir"] = str(workdir)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            return result
        return self._fail(
            sid,
            structure,
            start,
            attempts,
            common,
            f"SCF did not converge after {len(ladder)} attempt(s) "
            f"({'; '.join(str(a['overrides'] or 'defaults') for a in attempts)})",
        )

    def _run_pw_once_more_after_a_crash(
        self,
        structure: Structure,
        directory: Path,
        calculation: Calculation,
        overrides: dict[str, Any],
        deadline: float,
        record: dict[str, Any],
    ) -> tuple[list[Atoms], str, str | None]:
        """:meth:`_run_pw`, and once more in ``<directory>-rerun`` when pw.x crashed.

        A crash by SIGSEGV or SIGBUS (:func:`relax.espresso_profile.crashed`) need not come from
        the input: a pw.x run that crashed in its first SCF iteration has completed with the
        same input when started again. The rerun uses the same input; the crash stays in
        ``record["crash"]``. A second crash is a failure like any other.
        """
        images, text, run_error, crash = self._run_pw(
            structure, directory, calculation, overrides, deadline - time.perf_counter()
        )
        remaining = deadline - time.perf_counter()
        if crash and remaining > 0:
            record["crash"] = run_error
            rerun = directory.with_name(directory.name + "-rerun")
            images, text, run_error, _ = self._run_pw(
                structure, rerun, calculation, overrides, remaining
            )
        return images, text, run_error

    def _run_pw(
        self,
        structure: Structure,
        directory: Path,
        calculation: Calculation,
        overrides: dict[str, Any],
        timeout_s: float,
    ) -> tuple[list[Atoms], str, str | None, bool]:
        """Write the input, run pw.x, parse every configuration with results.

        Returns the configurations, the output text, the error (``None`` on success) and
        whether pw.x crashed (:func:`relax.espresso_profile.crashed`).
        """
        inp = self.write_input(structure, directory, calculation, overrides)
        params = self.parameters(structure, calculation, overrides)
        pools = self.machine.choose_pools(len(structure), int(np.prod(params["kpts"])))
        profile = self.machine.profile(self.library.directory, pools, timeout_s=timeout_s)
        output = directory / "espresso.pwo"
        run_error, crash = None, False
        try:
            profile.run(directory, inp.name, output.name, errorfile="espresso.err")
        except EspressoRunError as exc:
            run_error, crash = str(exc), crashed(exc.code)
        text = output.read_text(errors="replace") if output.exists() else ""
        images: list[Atoms] = []
        if "!    total energy" in text:
            try:
                images = list(ase_read(output, index=":", format="espresso-out"))
            except Exception as exc:
                run_error = run_error or f"could not parse pw.x output: {exc}"
        return images, text, run_error, crash

    def _success(
        self,
        sid: str,
        structure: Structure,
        calculation: Calculation,
        first: Atoms,
        images: list[Atoms],
        text: str,
        start: float,
        attempts: list[dict[str, Any]],
        steps_before: int,
    ) -> RelaxResult:
        last = images[-1]
        n = len(structure)
        e0 = float(first.get_potential_energy())
        e1 = float(last.get_potential_energy())
        final_structure = AseAtomsAdaptor.get_structure(last)
        final_structure = Structure.from_sites(final_structure.sites, to_unit_cell=True)
        bfgs = _BFGS_DONE.search(text)
        if calculation == "scf":
            converged, steps = "JOB DONE" in text, 0
        else:
            converged = bfgs is not None and _MAX_STEPS not in text
            steps = steps_before + (int(bfgs.group(2)) if bfgs else max(len(images) - 1, 0))
        warnings = []
        if len(attempts) > 1:
            ladder = "; ".join(
                f"{a['attempt']}: {a['overrides'] or 'defaults'} -> {a['outcome']}"
                for a in attempts
            )
            warnings.append(f"SCF needed {len(attempts)} attempts: {ladder}")
        if not converged:
            warnings.append(f"pw.x {calculation} did not converge within nstep={self.nstep}")
        params = self.parameters(structure, calculation)
        stress = last.get_stress(voigt=False) if "stress" in last.calc.results else None
        return RelaxResult(
            structure_id=sid,
            relaxer=self.name,
            settings=self.settings(),
            settings_hash=self.settings_hash,
            formula=structure.composition.reduced_formula,
            n_sites=n,
            initial_energy_eV=e0,
            initial_energy_per_atom_eV=e0 / n,
            final_structure=(structure if calculation == "scf" else final_structure).as_dict(),
            final_energy_eV=e1,
            final_energy_per_atom_eV=e1 / n,
            forces=np.asarray(last.get_forces()).tolist(),
            stress=None if stress is None else (np.asarray(stress) / units.GPa).tolist(),
            n_ionic_steps=steps,
            converged=converged,
            status="ok" if converged else "not_converged",
            wall_time_s=time.perf_counter() - start,
            dft_available=True,
            warnings=warnings,
            extra={
                "calculation": calculation,
                "kpts": list(params["kpts"]),
                "ecutwfc": params["input_data"]["system"]["ecutwfc"],
                "ecutrho": params["input_data"]["system"]["ecutrho"],
                "spin_polarised": bool(self.atoms(structure).get_initial_magnetic_moments().any()),
                "n_scf": len(images),
                "attempts": attempts,
                "n_procs": self.machine.n_procs,
            },
        )

    def _fail(
        self,
        sid: str,
        structure: Structure,
        start: float,
        attempts: list[dict[str, Any]],
        common: dict[str, Any],
        reason: str,
        status: Status = "failed",
    ) -> RelaxResult:
        scratch = common["extra"]["scratch_dir"]
        return RelaxResult.failure(
            sid,
            self,
            f"{reason}; inputs and outputs kept in {scratch}",
            structure=structure,
            status=status,
            wall_time_s=time.perf_counter() - start,
            dft_available=True,
            extra={**common["extra"], "attempts": attempts},
        )


def default_scratch_root() -> Path:
    """pw.x's scratch folder when none is given (absolute).

    ``$DFTLOOP_SCRATCH_DIR``, else the system temporary folder / ``dftloop-espresso``.
    """
    import os

    root = os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "dftloop-espresso"
    return Path(root).expanduser().resolve()


def _safe(structure_id: str) -> str:
    """A file-system-safe version of a structure id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", structure_id)[:80] or "structure"


def _pw_error_message(text: str) -> str | None:
    """Extract the message of pw.x's ``%%%%`` error block, if any."""
    match = re.search(r"%{20,}\s*\n(.*?)\n\s*%{20,}", text, re.S)
    if not match:
        return None
    return " ".join(line.strip() for line in match.group(1).splitlines() if line.strip())
