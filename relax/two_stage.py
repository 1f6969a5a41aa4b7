"""Two-stage relaxation: a batched force-field pre-relax, then a DFT final relax.

Energies of the result are DFT energies only. DP-CDVAE's ΔE compares the energy of a generated
structure with the energy of its relaxed form, so both must come from the same method:

- ``initial_energy_eV`` is a DFT single point (SCF) of the structure *as given*;
- ``final_energy_eV`` is the DFT energy after the DFT relaxation, which starts from the
  force-field-relaxed structure.

``stages`` holds the force-field stage and the DFT single point; the DFT relaxation is the
result itself (its own starting energy, that of the pre-relaxed structure, is in
``extra["dft_relax_start_energy_eV"]``; empty when pw.x relaxes on a separate grid, see
:class:`relax.espresso_relaxer.EspressoRelaxer`). When the DFT code is missing the result says so
(``status="unavailable"``, ``dft_available=False``) and still carries the force-field stage.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pymatgen.core import Structure

from relax.base import Relaxer, RelaxResult


class TwoStageRelaxer(Relaxer):
    """Pre-relax with ``pre`` (e.g. batched CHGNet), then relax with ``final`` (e.g. pw.x).

    Parameters
    ----------
    pre
        The first (cheap, batched) relaxer.
    final
        The DFT relaxer; its ``single_point`` gives the initial energy.
    initial_single_point
        Compute the DFT single point of the input structure (needed for ΔE; default on).
    """

    def __init__(self, pre: Relaxer, final: Relaxer, *, initial_single_point: bool = True) -> None:
        super().__init__(
            max_atoms=min(pre.max_atoms, final.max_atoms),
            min_distance=0.0,
            protocol=final.protocol,  # its pressure gives the enthalpies of the result
        )
        self.pre = pre
        self.final = final
        self.initial_single_point = bool(initial_single_point)
        self.name = f"{pre.name}+{final.name}"  # type: ignore[misc]

    def settings(self) -> dict[str, Any]:
        """Settings of both stages and of the initial-energy convention."""
        return {
            "pre": {"relaxer": self.pre.name, **self.pre.settings()},
            "final": {"relaxer": self.final.name, **self.final.settings()},
            "initial_energy": (
                "final-stage single point of the input structure"
                if self.initial_single_point
                else None
            ),
        }

    def check(self, structure: Structure | None) -> str | None:
        """A structure must pass both stages' input checks."""
        return self.pre.check(structure) or self.final.check(structure)

    @property
    def dft_available(self) -> bool:
        """Whether the final stage's code is installed (``True`` if it does not say)."""
        return bool(getattr(self.final, "dft_available", True))

    def _relax_valid(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult]:
        start = time.perf_counter()
        pre_results = self.pre.relax(items)
        if not self.dft_available:
            return [
                self._unavailable(sid, s, pre)
                for (sid, s), pre in zip(items, pre_results, strict=True)
            ]
        singles = self._single_points(items)
        final_items: list[tuple[str, Structure]] = []
        for (sid, _), pre in zip(items, pre_results, strict=True):
            relaxed = pre.structure() if pre.error is None else None
            if relaxed is not None:
                final_items.append((sid, relaxed))
        finals = iter(self.final.relax(final_items)) if final_items else iter(())
        share = (time.perf_counter() - start) / max(len(items), 1)
        out = []
        for (sid, s), pre, single in zip(items, pre_results, singles, strict=True):
            if pre.error is not None or pre.final_structure is None:
                out.append(
                    RelaxResult.failure(
                        sid,
                        self,
                        f"{self.pre.name} pre-relax failed, DFT not run: {pre.error}",
                        structure=s,
                        stages=[pre],
                        dft_available=True,
                        wall_time_s=share,
                    )
                )
                continue
            out.append(self._combine(sid, s, pre, single, next(finals), share))
        return out

    def _single_points(self, items: Sequence[tuple[str, Structure]]) -> list[RelaxResult | None]:
        if not self.initial_single_point:
            return [None] * len(items)
        try:
            return list(self.final.single_point(items))
        except NotImplementedError as exc:
            return [
                RelaxResult.failure(sid, self.final, f"no DFT single point: {exc}", structure=s)
                for sid, s in items
            ]

    def _combine(
        self,
        sid: str,
        structure: Structure,
        pre: RelaxResult,
        single: RelaxResult | None,
        final: RelaxResult,
        share: float,
    ) -> RelaxResult:
        if single is not None and single.status == "interrupted":
            # the input's energy is missing because pw.x was stopped: not a result
            final = single
        warnings = [f"{self.pre.name}: {w}" for w in pre.warnings] + list(final.warnings)
        stages = [pre]
        initial = initial_pa = None
        if single is not None:
            stages.append(single)
            if single.error is None:
                initial, initial_pa = single.final_energy_eV, single.final_energy_per_atom_eV
            else:
                warnings.append(
                    f"DFT single point of the input failed, initial energy unknown: {single.error}"
                )
        extra = dict(final.extra)
        extra["dft_relax_start_energy_eV"] = final.initial_energy_eV
        wall = pre.wall_time_s + final.wall_time_s + (single.wall_time_s if single else 0.0)
        return final.model_copy(
            update={
                "structure_id": sid,
                "relaxer": self.name,
                "settings": self.settings(),
                "settings_hash": self.settings_hash,
                "formula": structure.composition.reduced_formula,
                "n_sites": len(structure),
                "initial_energy_eV": initial,
                "initial_energy_per_atom_eV": initial_pa,
                "stages": stages,
                "warnings": warnings,
                "extra": extra,
                "wall_time_s": max(wall, share),
                "error": None
                if final.error is None
                else f"{sid}: DFT stage: {final.error.removeprefix(f'{sid}: ')}",
            }
        )

    def _unavailable(self, sid: str, structure: Structure, pre: RelaxResult) -> RelaxResult:
        return RelaxResult.failure(
            sid,
            self,
            f"DFT stage not run: {self.final.name} is not available on this machine "
            f"(only the {self.pre.name} pre-relax was done, see stages)",
            structure=structure,
            status="unavailable",
            dft_available=False,
            stages=[pre],
            wall_time_s=pre.wall_time_s,
        )
