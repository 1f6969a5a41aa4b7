"""FIRE on many structures at once, positions and cell together.

The optimiser acts on one concatenated array of generalised coordinates: for every structure its
atom positions in the undeformed frame (one row per atom) followed by the matrix logarithm of its
cell deformation gradient scaled by the number of atoms (three rows). This is the parametrisation
of ASE's ``FrechetCellFilter``; the FIRE rules (time step, mixing, restarts, step cap) are those
of ASE's ``FIRE`` with its default parameters, applied per structure. A structure therefore
follows the same trajectory as ``FIRE(FrechetCellFilter(atoms))`` with the same energy model,
but all structures share one call of the energy model per step.

Each structure stops (and stops being evaluated) when its largest generalised force row is below
``fmax``: atom forces in eV/Å and cell rows ≈ ``-V·(σ + p)/N`` in eV (the same criterion as ASE).

Under an external pressure ``p`` (``pressure``, eV/Å³, ASE's ``scalar_pressure``) the cell
minimises the enthalpy ``H = E + pV``: the virial is ``-V·(σ + p·I)`` exactly as in
``FrechetCellFilter(atoms, scalar_pressure=p)``, so a converged cell has ``σ ≈ -p·I``. FIRE uses
forces only, so the ``pV`` term enters through the cell forces and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import expm
from threadpoolctl import threadpool_limits


@dataclass(frozen=True)
class FireParameters:
    """FIRE parameters (defaults are ASE's ``FIRE`` defaults).

    Attributes
    ----------
    dt, dtmax
        Initial and largest time step.
    maxstep
        Largest step (Euclidean norm over all generalised coordinates of a structure).
    n_min
        Downhill steps before the time step may grow.
    finc, fdec
        Time-step growth and cut factors.
    astart, fa
        Initial velocity-mixing coefficient and its decay factor.
    """

    dt: float = 0.1
    dtmax: float = 1.0
    maxstep: float = 0.2
    n_min: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


@dataclass
class Evaluation:
    """Energy model output for one structure.

    Attributes
    ----------
    energy
        Total energy, eV.
    forces
        Forces, eV/Å, shape ``(n_atoms, 3)``.
    stress
        Stress, eV/Å^3, 3x3, ASE sign convention (``None`` if the model gives none).
    error
        If set, the evaluation failed for this structure and the rest are ignored.
    """

    energy: float = float("nan")
    forces: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    stress: np.ndarray | None = None
    error: str | None = None


Evaluator = Callable[[Sequence[int], Sequence[np.ndarray], Sequence[np.ndarray]], list[Evaluation]]
"""``evaluate(indices, cart_positions, cells) -> evaluations`` for the listed structures."""


@dataclass
class FireOutcome:
    """Final state of one structure.

    Attributes
    ----------
    positions, cell
        Final Cartesian positions (Å) and cell (rows are lattice vectors, Å).
    initial, final
        Energy-model evaluations of the starting and of the final geometry.
    n_steps
        FIRE steps taken.
    converged
        Whether the generalised forces fell below ``fmax``.
    max_force
        Largest generalised force row at the end (eV/Å for atoms, eV for cell rows).
    error
        Set if an evaluation failed (the geometry is then the last one evaluated).
    """

    positions: np.ndarray
    cell: np.ndarray
    initial: Evaluation | None = None
    final: Evaluation | None = None
    n_steps: int = 0
    converged: bool = False
    max_force: float = float("nan")
    error: str | None = None


def _expm_frechet_batch(a: np.ndarray) -> np.ndarray:
    """Directional derivatives of expm at each ``a[b]`` along the 9 unit matrices.

    Returns ``L`` of shape ``(B, 3, 3, 3, 3)`` with ``L[b, m, n] = d expm(a[b] + t E_mn)/dt``,
    from the block identity ``expm([[A, E], [0, A]])[:3, 3:] = L(A, E)``.
    """
    n_struct = a.shape[0]
    blocks = np.zeros((n_struct, 9, 6, 6))
    blocks[:, :, :3, :3] = a[:, None]
    blocks[:, :, 3:, 3:] = a[:, None]
    for k in range(9):
        blocks[:, k, k // 3, 3 + k % 3] = 1.0
    return expm(blocks)[:, :, :3, 3:].reshape(n_struct, 3, 3, 3, 3)


def batched_fire(
    positions: Sequence[np.ndarray],
    cells: Sequence[np.ndarray],
    evaluate: Evaluator,
    *,
    fmax: float = 0.05,
    max_steps: int = 500,
    relax_cell: bool = True,
    params: FireParameters | None = None,
    progress: Callable[[int, int], None] | None = None,
    pressure: float = 0.0,
) -> list[FireOutcome]:
    """Relax several structures together with FIRE on positions and cell.

    Parameters
    ----------
    positions
        Cartesian positions (Å) of each structure, shapes ``(n_i, 3)``.
    cells
        Cells (rows are lattice vectors, Å), shapes ``(3, 3)``.
    evaluate
        The energy model, called once per step with all structures still moving.
    fmax
        Convergence threshold on the largest generalised force row.
    max_steps
        Largest number of FIRE steps per structure.
    relax_cell
        Whether the cell moves (otherwise positions only, and cell rows are not tested).
    params
        FIRE parameters; defaults to :class:`FireParameters`.
    progress
        Called after each step as ``progress(step, n_still_moving)``.
    pressure
        External hydrostatic pressure, eV/Å³ (ASE's ``scalar_pressure``; 1 GPa =
        1/160.21766 eV/Å³): the cell relaxes to the minimum of ``E + pV``.

    Returns
    -------
    list of FireOutcome
        One per structure, in order.
    """
    # The optimiser's own linear algebra is on 3x3 and 6x6 matrices: a multi-threaded BLAS only
    # adds spin-waits there (measured 5 ms per 3x3 solve on the loaded 2-core box), so it runs
    # with one BLAS thread. The energy model (torch) keeps its own thread setting.
    with threadpool_limits(limits=1, user_api="blas"):
        return _batched_fire(
            positions,
            cells,
            evaluate,
            fmax=fmax,
            max_steps=max_steps,
            relax_cell=relax_cell,
            params=params or FireParameters(),
            progress=progress,
            pressure=float(pressure),
        )


def _batched_fire(
    positions: Sequence[np.ndarray],
    cells: Sequence[np.ndarray],
    evaluate: Evaluator,
    *,
    fmax: float,
    max_steps: int,
    relax_cell: bool,
    params: FireParameters,
    progress: Callable[[int, int], None] | None,
    pressure: float = 0.0,
) -> list[FireOutcome]:
    p = params
    n_struct = len(positions)
    if len(cells) != n_struct:
        raise ValueError(f"{n_struct} position arrays but {len(cells)} cells")
    n_atoms = np.array([len(x) for x in positions], dtype=int)
    rows_per = n_atoms + 3
    starts = np.concatenate([[0], np.cumsum(rows_per)[:-1]]).astype(int)
    total = int(rows_per.sum())
    owner = np.repeat(np.arange(n_struct), rows_per)
    atom_rows = np.concatenate(
        [np.arange(s, s + n) for s, n in zip(starts, n_atoms, strict=True)] or [np.zeros(0, int)]
    ).astype(int)
    cell_rows = (starts[:, None] + n_atoms[:, None] + np.arange(3)[None, :]).astype(int)  # (B,3)
    is_cell_row = np.zeros(total, dtype=bool)
    is_cell_row[cell_rows.ravel()] = True

    orig_cells = np.array([np.asarray(c, dtype=float) for c in cells]).reshape(n_struct, 3, 3)
    ecf = n_atoms.astype(float)  # exp_cell_factor: the number of atoms
    x = np.zeros((total, 3))
    x[atom_rows] = np.concatenate([np.asarray(r, dtype=float) for r in positions]).reshape(-1, 3)
    # the cell rows start at log(I) = 0
    vel = np.zeros((total, 3))
    dt = np.full(n_struct, p.dt)
    alpha = np.full(n_struct, p.astart)
    n_down = np.zeros(n_struct, dtype=int)
    started = np.zeros(n_struct, dtype=bool)
    active = np.ones(n_struct, dtype=bool)
    outcomes = [
        FireOutcome(positions=np.array(positions[i], float), cell=orig_cells[i].copy())
        for i in range(n_struct)
    ]

    def geometry(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Deformation gradients, cells and Cartesian positions of structures ``idx``."""
        log_f = x[cell_rows[idx]] / ecf[idx, None, None]  # (b,3,3)
        deform = expm(log_f) if relax_cell else np.broadcast_to(np.eye(3), log_f.shape).copy()
        new_cells = orig_cells[idx] @ np.transpose(deform, (0, 2, 1))
        carts = []
        for j, i in enumerate(idx):
            rows = slice(starts[i], starts[i] + n_atoms[i])
            carts.append(x[rows] @ deform[j].T)
        return deform, new_cells, carts

    def gradient(idx: np.ndarray) -> np.ndarray:
        """Evaluate structures ``idx``; fill their generalised forces; return the force array."""
        deform, new_cells, carts = geometry(idx)
        evals = evaluate([int(i) for i in idx], carts, list(new_cells))
        if len(evals) != len(idx):
            raise RuntimeError(f"evaluator returned {len(evals)} results for {len(idx)}")
        forces = np.zeros((total, 3))
        log_f = x[cell_rows[idx]] / ecf[idx, None, None]
        frechet = _expm_frechet_batch(log_f) if relax_cell else None
        for j, i in enumerate(idx):
            out = outcomes[i]
            ev = evals[j]
            out.positions, out.cell = carts[j], new_cells[j]
            if ev.error is not None:
                out.error = ev.error
                active[i] = False
                continue
            if out.initial is None:
                out.initial = ev
            out.final = ev
            rows = slice(starts[i], starts[i] + n_atoms[i])
            forces[rows] = np.asarray(ev.forces, float) @ deform[j]
            if relax_cell:
                if ev.stress is None:
                    out.error = "the energy model gave no stress; cannot relax the cell"
                    active[i] = False
                    continue
                volume = abs(np.linalg.det(new_cells[j]))
                virial = -volume * (np.asarray(ev.stress, float) + pressure * np.eye(3))
                ucf_grad = virial @ np.linalg.inv(deform[j].T)
                cell_force = np.einsum("mnij,ij->mn", frechet[j], ucf_grad)
                forces[cell_rows[i]] = cell_force / ecf[i]
        return forces

    def check_converged(forces: np.ndarray, idx: np.ndarray) -> None:
        norms = np.linalg.norm(forces, axis=1)
        if not relax_cell:
            norms = np.where(is_cell_row, 0.0, norms)
        row_max = np.zeros(n_struct)
        np.maximum.at(row_max, owner, norms)
        for i in idx:
            if not active[i]:
                continue
            outcomes[i].max_force = float(row_max[i])
            if row_max[i] < fmax:
                outcomes[i].converged = True
                active[i] = False

    idx = np.flatnonzero(active)
    forces = gradient(idx)
    check_converged(forces, idx)
    step = 0
    while step < max_steps and active.any():
        step += 1
        idx = np.flatnonzero(active)
        moving = active[owner]
        if not relax_cell:
            moving &= ~is_cell_row
        g = np.where(moving[:, None], forces, 0.0)
        # FIRE velocity update, per structure
        vf = np.bincount(owner, weights=np.einsum("ij,ij->i", g, vel), minlength=n_struct)
        g2 = np.bincount(owner, weights=np.einsum("ij,ij->i", g, g), minlength=n_struct)
        v2 = np.bincount(owner, weights=np.einsum("ij,ij->i", vel, vel), minlength=n_struct)
        downhill = active & started & (vf > 0.0)
        restart = active & started & ~(vf > 0.0)
        mix_rows = downhill[owner]
        if mix_rows.any():
            a_r = alpha[owner][:, None]
            scale = (np.sqrt(v2) / np.sqrt(np.where(g2 > 0, g2, 1.0)))[owner][:, None]
            mixed = (1.0 - a_r) * vel + a_r * g * scale
            vel[mix_rows] = mixed[mix_rows]
        grow = downhill & (n_down > p.n_min)
        dt[grow] = np.minimum(dt[grow] * p.finc, p.dtmax)
        alpha[grow] *= p.fa
        n_down[downhill] += 1
        vel[restart[owner]] = 0.0
        alpha[restart] = p.astart
        dt[restart] *= p.fdec
        n_down[restart] = 0
        started[active] = True
        vel[moving] += (dt[owner][:, None] * g)[moving]
        dr = np.where(moving[:, None], dt[owner][:, None] * vel, 0.0)
        norm_dr = np.sqrt(
            np.bincount(owner, weights=np.einsum("ij,ij->i", dr, dr), minlength=n_struct)
        )
        cap = np.where(norm_dr > p.maxstep, p.maxstep / np.where(norm_dr > 0, norm_dr, 1.0), 1.0)
        x[:] += dr * cap[owner][:, None]
        for i in idx:
            outcomes[i].n_steps = step
        forces = gradient(idx)
        check_converged(forces, idx)
        if progress is not None:
            progress(step, int(active.sum()))
    return outcomes
