"""Converge the pw.x k-point spacing and cutoff on a set of reference structures.

The quantity that must be converged is what the experiment compares: energy *differences*
between structures (ΔE, E_hull), not total energies. For each setting every structure gets a
pw.x SCF (:meth:`relax.espresso_relaxer.EspressoRelaxer.single_point`, the protocol's
pressure, dispersion and smearing), and the differences ``E_i − E_ref`` (per atom, against the
first structure) are compared between successive settings:

1. k-spacing, every value of the list from coarse to fine at the starting cutoff (spacings that
   give the same grids for every structure are skipped); the coarsest spacing whose
   differences lie within ``tol_mev`` (meV/atom, every structure) of those of *every* finer
   spacing is kept -- k-point convergence of a semimetal such as graphite oscillates, so one
   small step between neighbours is not enough;
2. cutoff at that spacing, raising ``ecutwfc`` (``ecutrho`` keeps its ratio), chosen the same
   way.

:func:`converge_dft` returns a :class:`ConvergenceResult`, written as JSON by
:meth:`ConvergenceResult.write`; :func:`relax.protocol.converged_settings` reads it back.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from relax.espresso_params import kpoint_grid
from relax.protocol import ProtocolSpec, resolve_protocol

DEFAULT_KSPACINGS: tuple[float, ...] = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15)
"""k-point spacings tried, Å⁻¹ (2π included), coarse to fine."""

DEFAULT_CUTOFF_STEPS: tuple[float, ...] = (1.0, 1.2, 1.4)
"""Multiples of the starting ``ecutwfc`` tried (``ecutrho`` scaled alike)."""


@dataclass
class ConvergencePoint:
    """Energies of every structure at one setting.

    Attributes
    ----------
    kspacing, ecutwfc, ecutrho
        The setting (Å⁻¹, Ry, Ry).
    grids
        k-point grid per structure id.
    energy_per_atom_eV
        SCF energy per atom per structure id (``None`` when the SCF failed).
    differences_meV
        ``E_i − E_ref`` per atom, meV, per structure id (the reference itself excluded).
    change_meV
        Largest change of any difference against the previous point of the same scan
        (``None`` for the first point; for the table, the choice compares with every tighter
        point).
    wall_time_s
        Seconds for all SCFs of this point.
    """

    kspacing: float
    ecutwfc: float
    ecutrho: float
    grids: dict[str, list[int]]
    energy_per_atom_eV: dict[str, float | None]
    differences_meV: dict[str, float | None]
    change_meV: float | None = None
    wall_time_s: float = 0.0


@dataclass
class ConvergenceResult:
    """Outcome of :func:`converge_dft`.

    Attributes
    ----------
    dataset
        The dataset the settings are for.
    reference
        Id of the structure the differences are taken against.
    structures
        Id -> ``{"formula", "n_sites"}`` of every structure used.
    tol_mev
        The threshold, meV/atom.
    protocol
        The protocol fields held fixed during the scans (pressure, dispersion, smearing).
    kpoint_scan, cutoff_scan
        The points of both scans, in order.
    converged
        ``{"kspacing", "ecutwfc", "ecutrho"}`` chosen, and ``"kspacing_converged"`` /
        ``"cutoff_converged"`` flags (``False``: only the finest value tried qualified, nothing
        tighter confirms it).
    created
        UTC time stamp.
    """

    dataset: str
    reference: str
    structures: dict[str, dict[str, Any]]
    tol_mev: float
    protocol: dict[str, Any]
    kpoint_scan: list[ConvergencePoint] = field(default_factory=list)
    cutoff_scan: list[ConvergencePoint] = field(default_factory=list)
    converged: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dict."""
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        """Write the result as JSON (folders created); return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        return path

    def markdown(self) -> str:
        """Return both scans as markdown tables (differences in meV/atom)."""
        ids = [sid for sid in self.structures if sid != self.reference]
        lines = []
        for title, scan in (("k-point spacing", self.kpoint_scan), ("cutoff", self.cutoff_scan)):
            if not scan:
                continue
            head = ["kspacing Å⁻¹", "ecutwfc/ecutrho Ry"]
            head += [f"{sid} − {self.reference}" for sid in ids]
            head += ["max change", "time s"]
            lines += [f"{title} scan:", "", "| " + " | ".join(head) + " |"]
            lines.append("|" + "---|" * len(head))
            for p in scan:
                cells = [f"{p.kspacing:g}", f"{p.ecutwfc:g}/{p.ecutrho:g}"]
                cells += [_fmt(p.differences_meV.get(sid)) for sid in ids]
                cells += [_fmt(p.change_meV), f"{p.wall_time_s:.0f}"]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


SinglePoint = Callable[[Sequence[tuple[str, Structure]], dict[str, Any]], dict[str, float | None]]
"""``energies(items, protocol_overrides) -> {id: energy per atom (eV) or None}``."""


def espresso_single_points(
    protocol: ProtocolSpec, relaxer_kwargs: dict[str, Any] | None = None
) -> SinglePoint:
    """Return a :data:`SinglePoint` function running pw.x SCFs with ``protocol`` + overrides.

    Parameters
    ----------
    protocol
        The protocol (pressure, dispersion, smearing ...) held fixed.
    relaxer_kwargs
        Further :class:`~relax.espresso_relaxer.EspressoRelaxer` keyword arguments (machine,
        scratch, pseudopotential folder, SCF threshold).
    """
    from relax.espresso_relaxer import EspressoRelaxer

    base = resolve_protocol(protocol)

    def run(items: Sequence[tuple[str, Structure]], overrides: dict[str, Any]) -> dict:
        relaxer = EspressoRelaxer(
            protocol=base.with_overrides(**overrides), **(relaxer_kwargs or {})
        )
        results = relaxer.single_point(list(items))
        errors = [r.error for r in results if r.error]
        if results and all(r.error for r in results):
            raise RuntimeError(f"every pw.x SCF failed: {errors[0]}")
        return {r.structure_id: r.final_energy_per_atom_eV for r in results}

    return run


def _point(
    items: Sequence[tuple[str, Structure]],
    reference: str,
    energies: SinglePoint,
    kspacing: float,
    ecutwfc: float,
    ecutrho: float,
) -> ConvergencePoint:
    start = time.perf_counter()
    found = energies(items, {"kspacing": kspacing, "ecutwfc": ecutwfc, "ecutrho": ecutrho})
    e_ref = found.get(reference)
    diffs: dict[str, float | None] = {}
    for sid, _ in items:
        if sid == reference:
            continue
        e = found.get(sid)
        diffs[sid] = None if e is None or e_ref is None else (e - e_ref) * 1000.0
    return ConvergencePoint(
        kspacing=kspacing,
        ecutwfc=ecutwfc,
        ecutrho=ecutrho,
        grids={sid: list(kpoint_grid(s, kspacing)) for sid, s in items},
        energy_per_atom_eV=dict(found),
        differences_meV=diffs,
        wall_time_s=time.perf_counter() - start,
    )


def _change(a: ConvergencePoint, b: ConvergencePoint) -> float | None:
    """Largest change of a difference between two points (``None`` if any is missing)."""
    changes = []
    for sid, value in b.differences_meV.items():
        before = a.differences_meV.get(sid)
        if value is None or before is None:
            return None
        changes.append(abs(value - before))
    return max(changes) if changes else 0.0


def _scan(
    settings: Sequence[tuple[float, float, float]],
    items: Sequence[tuple[str, Structure]],
    reference: str,
    energies: SinglePoint,
    tol_mev: float,
    log: Callable[[str], None],
    done: dict[tuple[float, float, float], ConvergencePoint],
    on_point: Callable[[], None] = lambda: None,
) -> tuple[list[ConvergencePoint], int, bool]:
    """Run every setting; return the points, the chosen index and whether it is confirmed.

    ``done`` holds points already computed (by setting); they are reused, not recomputed.
    ``change_meV`` of a point is against the previous one (for the table); the choice is
    :func:`_choose`.
    """
    points: list[ConvergencePoint] = []
    for kspacing, ecutwfc, ecutrho in settings:
        key = (round(kspacing, 6), round(ecutwfc, 6), round(ecutrho, 6))
        if key in done:
            point = ConvergencePoint(**asdict(done[key]))
            point.change_meV = None
        else:
            point = _point(items, reference, energies, kspacing, ecutwfc, ecutrho)
            done[key] = point
            on_point()
        if points:
            point.change_meV = _change(points[-1], point)
        points.append(point)
        log(
            f"kspacing {kspacing:g}, ecutwfc {ecutwfc:g} Ry: differences "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in point.differences_meV.items())
            + f" meV/atom; change {_fmt(point.change_meV)} ({point.wall_time_s:.0f} s)"
        )
    return points, *_choose(points, tol_mev)


def _choose(points: Sequence[ConvergencePoint], tol_mev: float) -> tuple[int, bool]:
    """Index of the first point whose differences are within ``tol_mev`` of every later one.

    Convergence with k-points is not monotonic (graphite, a semimetal, oscillates), so one
    small change between neighbours proves nothing: a point counts only if no tighter setting
    of the scan moves any difference by ``tol_mev`` or more. The flag is ``False`` when only the
    last (tightest) point qualifies, i.e. nothing tighter confirms it.
    """
    for j, point in enumerate(points[:-1]):
        changes = [_change(point, later) for later in points[j + 1 :]]
        if all(c is not None and c < tol_mev for c in changes):
            return j, True
    return len(points) - 1, False


def _load_checkpoint(
    path: str | Path | None, wanted: ConvergenceResult, log: Callable[[str], None]
) -> dict[tuple[float, float, float], ConvergencePoint]:
    """Points of an earlier run of the same study (same structures, protocol, tolerance)."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        log(f"checkpoint {path} unreadable: starting afresh")
        return {}
    same = all(
        old.get(key) == getattr(wanted, key)
        for key in ("dataset", "reference", "structures", "tol_mev", "protocol")
    )
    if not same:
        log(f"checkpoint {path} is of another study (structures or protocol): not reused")
        return {}
    done = {}
    for raw in [*old.get("kpoint_scan", []), *old.get("cutoff_scan", [])]:
        point = ConvergencePoint(**raw)
        done[(round(point.kspacing, 6), round(point.ecutwfc, 6), round(point.ecutrho, 6))] = point
    log(f"checkpoint {path}: {len(done)} point(s) reused")
    return done


def converge_dft(
    items: Sequence[tuple[str, Structure]],
    *,
    dataset: str,
    protocol: ProtocolSpec = None,
    energies: SinglePoint | None = None,
    kspacings: Sequence[float] = DEFAULT_KSPACINGS,
    cutoff_steps: Sequence[float] = DEFAULT_CUTOFF_STEPS,
    ecutwfc: float | None = None,
    ecutrho: float | None = None,
    tol_mev: float = 1.0,
    relaxer_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    checkpoint: str | Path | None = None,
) -> ConvergenceResult:
    """Find the coarsest k-spacing and lowest cutoff whose energy differences are converged.

    Parameters
    ----------
    items
        ``(id, structure)``; the first is the reference of the differences.
    dataset
        The dataset name recorded in the result.
    protocol
        The protocol held fixed (pressure, dispersion, smearing, spin).
    energies
        The energy function (default: pw.x, :func:`espresso_single_points`).
    kspacings
        Spacings tried, coarse to fine, Å⁻¹.
    cutoff_steps
        Multiples of the starting ``ecutwfc`` tried.
    ecutwfc, ecutrho
        Starting cutoffs, Ry (default: the SSSP recommendation for the structures' elements).
    tol_mev
        Largest deviation of every difference (meV/atom) from its value at every tighter
        setting for a setting to count as converged.
    relaxer_kwargs
        For :func:`espresso_single_points`.
    log
        Called with one line per point.
    checkpoint
        A JSON file: points already in it (same structures, protocol and tolerance, as written
        by an interrupted run) are reused instead of recomputed, and every new point is added
        to it as soon as it is computed.

    Returns
    -------
    ConvergenceResult
        Both scans and the chosen setting.
    """
    if len(items) < 2:
        raise ValueError("need at least two structures: a reference and one to compare")
    base = resolve_protocol(protocol)
    energies = energies or espresso_single_points(base, relaxer_kwargs)
    if ecutwfc is None or ecutrho is None:
        from relax.espresso_params import PseudoLibrary

        library = PseudoLibrary.load((relaxer_kwargs or {}).get("pseudo_dir"))
        cuts = [library.cutoffs(s) for _, s in items]
        ecutwfc = ecutwfc or max(c[0] for c in cuts)
        ecutrho = ecutrho or max(c[1] for c in cuts)
    reference = items[0][0]
    # spacings that give the same grid for every structure are the same calculation
    seen, k_settings = set(), []
    for k in kspacings:
        grids = tuple(tuple(kpoint_grid(s, k)) for _, s in items)
        if grids not in seen:
            seen.add(grids)
            k_settings.append((float(k), float(ecutwfc), float(ecutrho)))
    structures = {
        sid: {"formula": s.composition.reduced_formula, "n_sites": len(s)} for sid, s in items
    }
    partial = ConvergenceResult(
        dataset=dataset,
        reference=reference,
        structures=structures,
        tol_mev=float(tol_mev),
        protocol=base.settings(),
    )
    done = _load_checkpoint(checkpoint, partial, log)

    def save() -> None:
        if checkpoint is not None:
            partial.kpoint_scan = list(done.values())
            partial.write(checkpoint)

    k_points, k_index, k_ok = _scan(
        k_settings, items, reference, energies, tol_mev, log, done, save
    )
    kspacing = k_points[k_index].kspacing
    dual = ecutrho / ecutwfc
    cut_settings = [(kspacing, ecutwfc * f, ecutwfc * f * dual) for f in cutoff_steps]
    c_points, c_index, c_ok = _scan(
        cut_settings, items, reference, energies, tol_mev, log, done, save
    )
    chosen = c_points[c_index]
    return ConvergenceResult(
        dataset=dataset,
        reference=reference,
        structures=structures,
        tol_mev=float(tol_mev),
        protocol=base.settings(),
        kpoint_scan=k_points,
        cutoff_scan=c_points,
        converged={
            "kspacing": kspacing,
            "ecutwfc": chosen.ecutwfc,
            "ecutrho": chosen.ecutrho,
            "kspacing_converged": k_ok,
            "cutoff_converged": c_ok,
        },
        created=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
