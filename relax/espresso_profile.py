"""The machine side of Quantum ESPRESSO: where pw.x is, how MPI starts it, a time limit.

This is the one place that launches ``pw.x``. :class:`EspressoMachine` holds the settings that do
not change a result (binary, number of MPI ranks, k-point pools, time limit);
:class:`TimedEspressoProfile` is ASE's :class:`~ase.calculators.espresso.EspressoProfile` with a
``run`` that kills the whole process group when the time limit is reached.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ase.calculators.espresso import EspressoProfile

NPROCS_ENV = "DFTLOOP_QE_NPROCS"
PW_COMMAND_ENV = "DFTLOOP_PW_COMMAND"


class EspressoTimeout(RuntimeError):
    """pw.x ran past its time limit and was killed."""


class EspressoRunError(RuntimeError):
    """pw.x exited with a non-zero status (``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class EspressoInterrupted(RuntimeError):
    """pw.x was stopped from outside (SIGTERM, SIGINT or SIGHUP): interrupted, not failed."""


#: Signals of a crash of the process itself (invalid memory access), which pw.x shows now and
#: then on a run that completes when started again (:func:`crashed`).
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS})

#: Signals by which a job is asked to stop (a batch system, a machine shutdown, Ctrl-C), as
#: opposed to a crash of the code itself (SIGSEGV, SIGABRT) or the kernel's OOM kill (SIGKILL).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def stopped_from_outside(code: int) -> bool:
    """Whether an exit status means "stopped by a stop signal".

    ``subprocess`` reports a signal as ``-signum``; mpirun and shells exit with ``128 + signum``.
    """
    return _signal_of(code) in STOP_SIGNALS


def _signal_of(code: int) -> int:
    return -code if code < 0 else code - 128 if code > 128 else 0


def crashed(code: int) -> bool:
    """Whether an exit status means "crashed by SIGSEGV or SIGBUS".

    Signals as in :func:`stopped_from_outside`: ``-signum`` or ``128 + signum``.
    """
    return _signal_of(code) in CRASH_SIGNALS


def find_pw(pw_command: str = "pw.x") -> str | None:
    """Return the absolute path of ``pw_command`` if it can be run, else ``None``."""
    if os.sep in pw_command:
        path = Path(pw_command)
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(pw_command)


@dataclass
class EspressoMachine:
    """How pw.x is started on this machine (kept out of the settings hash).

    Parameters
    ----------
    pw_command
        Name or path of the pw.x binary (``$DFTLOOP_PW_COMMAND`` or ``pw.x``).
    n_procs
        MPI ranks; 1 runs pw.x serially without mpirun (``$DFTLOOP_QE_NPROCS`` or 1).
    pools
        k-point pools (``-nk``); ``None`` chooses ``n_procs`` for small cells with at least as
        many k-points as ranks, else 1.
    small_cell_atoms
        Cells with at most this many atoms count as small for the pool choice.
    mpirun
        The MPI launcher.
    timeout_s
        Time limit per structure (all retries together), seconds.
    env
        Extra environment variables for pw.x.
    """

    pw_command: str = field(default_factory=lambda: os.environ.get(PW_COMMAND_ENV, "pw.x"))
    n_procs: int = field(default_factory=lambda: int(os.environ.get(NPROCS_ENV, "1")))
    pools: int | None = None
    small_cell_atoms: int = 16
    mpirun: str = "mpirun"
    timeout_s: float = 6 * 3600.0
    env: dict[str, str] = field(default_factory=dict)

    def pw_path(self) -> str | None:
        """Absolute path of pw.x, or ``None`` when it is not installed."""
        return find_pw(self.pw_command)

    def choose_pools(self, n_atoms: int, n_kpoints: int) -> int:
        """Number of k-point pools for a cell with ``n_atoms`` atoms and ``n_kpoints`` k-points."""
        if self.pools is not None:
            return max(1, int(self.pools))
        if self.n_procs > 1 and n_atoms <= self.small_cell_atoms and n_kpoints >= self.n_procs:
            return self.n_procs
        return 1

    def command(self, pools: int = 1) -> str:
        """The command line before ``-in <file>`` (``mpirun -np N pw.x -nk P`` or ``pw.x``)."""
        pw = self.pw_path() or self.pw_command
        if self.n_procs <= 1:
            return pw
        parts = [self.mpirun, "-np", str(self.n_procs), pw]
        if pools > 1:
            parts += ["-nk", str(pools)]
        return " ".join(parts)

    def environment(self) -> dict[str, str]:
        """Environment for pw.x: one OpenMP thread; Open MPI allowed to run as root."""
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = "1"
        if self.n_procs > 1 and hasattr(os, "geteuid") and os.geteuid() == 0:
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        env.update(self.env)
        return env

    def profile(
        self, pseudo_dir: Path, pools: int = 1, timeout_s: float | None = None
    ) -> TimedEspressoProfile:
        """Build the ASE profile for one run."""
        return TimedEspressoProfile(
            command=self.command(pools),
            pseudo_dir=pseudo_dir,
            env=self.environment(),
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
        )


class TimedEspressoProfile(EspressoProfile):
    """ASE's EspressoProfile whose ``run`` has a time limit and its own environment.

    Parameters
    ----------
    command
        Command line before ``-in <file>``.
    pseudo_dir
        Pseudopotential folder (written as ``pseudo_dir`` in the input).
    env
        Environment of the pw.x process.
    timeout_s
        Seconds before the process group is killed.
    """

    def __init__(
        self, command: str, pseudo_dir: Path, *, env: dict[str, str], timeout_s: float
    ) -> None:
        super().__init__(command=command, pseudo_dir=pseudo_dir)
        self.env = env
        self.timeout_s = float(timeout_s)

    def run(
        self,
        directory: Path,
        inputfile: str | None,
        outputfile: str,
        errorfile: str | None = None,
        append: bool = False,
    ) -> None:
        """Run pw.x in ``directory``; raise on timeout or non-zero exit.

        Raises
        ------
        EspressoTimeout
            When the time limit is reached (the process group is killed first).
        EspressoInterrupted
            When pw.x was stopped by SIGTERM, SIGINT or SIGHUP (:func:`stopped_from_outside`).
        EspressoRunError
            When pw.x exits with another non-zero status.
        """
        argv = self.get_command(inputfile)
        mode = "ab" if append else "wb"
        directory = Path(directory)
        err_path = directory / (errorfile or "pw.err")
        with open(directory / outputfile, mode) as out, open(err_path, mode) as err:
            proc = subprocess.Popen(
                argv, cwd=directory, stdout=out, stderr=err, env=self.env, start_new_session=True
            )
            try:
                code = proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                _kill_leftovers(directory)
                raise EspressoTimeout(
                    f"pw.x exceeded its time limit of {self.timeout_s:.0f} s and was killed"
                ) from None
            except BaseException:
                _kill_group(proc)
                _kill_leftovers(directory)
                raise
        if stopped_from_outside(code):
            raise EspressoInterrupted(
                f"pw.x was stopped from outside (exit status {code}) before it finished"
            )
        if code != 0:
            raise EspressoRunError(f"pw.x exited with status {code} ({' '.join(argv)})", code)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group started for ``proc`` (mpirun and its ranks) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def processes_in(directory: Path) -> list[int]:
    """Return the ids of processes whose working directory is ``directory`` or inside it (Linux).

    A serial pw.x built with Open MPI starts an ``orted --singleton`` helper in a session of its
    own, out of reach of the process-group kill; it runs in the same folder, which finds it.
    """
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return []
    directory = Path(directory).resolve()
    found = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = (entry / "cwd").resolve(strict=True)
        except OSError:
            continue
        if cwd == directory or directory in cwd.parents:
            found.append(int(entry.name))
    return found


def _kill_leftovers(directory: Path) -> None:
    """Kill processes still running in ``directory`` (pw.x's MPI helpers) after a kill."""
    for pid in processes_in(directory):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
