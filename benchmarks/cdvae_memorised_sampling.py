"""Re-sample a memorised CDVAE / DP-CDVAE with other chains: reconstruction and validity rates.

The slow memorisation test (``tests/generators/test_cdvae_memorisation.py``) keeps its trained
model when ``DFTLOOP_MEMORISATION_KEEP=DIR`` is set (``DIR/<model>.pt``). This script loads it
and measures, on the same 32 training crystals (carbon_24 by default, ≤ 8 atoms; ``--dataset``
for a model kept with ``DFTLOOP_MEMORISATION_DATASET``) and with the same matcher
(``analysis.matching.rms_dist``) and validity check (``analysis.validity.structure_is_valid``),
the reconstruction rate and the validity of 100 generated crystals for the chain lengths given.

Usage::

    DFTLOOP_MEMORISATION_KEEP=KEEP_DIR .venv/bin/pytest -m slow -k "full and not dpcdvae" \
        tests/generators/test_cdvae_memorisation.py
    .venv/bin/python benchmarks/cdvae_memorised_sampling.py KEEP_DIR/cdvae.pt \
        --recon-chain steps_per_level=20 --gen-chain steps_per_level=10 --reconstruct-from mu

``--diagnose`` separates the heads from the denoiser: per crystal, whether the atom-count head
is right, the lattice head's errors (lengths in Å, angles in degrees), and a second
reconstruction from the same z with the true atom count, lattice and atom types forced (only
the coordinate/type denoiser left to the model). Its match rate is the ceiling the heads allow;
each forced reconstruction also gets a loose second match (stol 1.0: near miss or another
arrangement), its shortest interatomic distance and whether its composition is right.

The forced reconstruction also records, every 50 decoder calls, how many atoms carry another type
than the training crystal's and how many crystals have lost their composition
(``forced_type_trace``), and per crystal whether the forced reconstruction matches when species
are ignored (``framework_forced``: right geometry, wrong types).

``--type-levels`` asks the type head the question the chain asks it at every step, with the
answer given: per noise level (CDVAE: every third σ; DP-CDVAE: every 50th step t), the training
crystals' true types and coordinates noised at that level go in, and the share of atoms whose
argmax type is not the input type comes out, with the 1 % quantile of the log-probability margin
of the true type over the next best.

``--recon-seeds 0,1,2`` repeats the reconstruction with other seeds of the chain's noise (same
model, same z from mu) and reports each draw's rate and, per crystal, in how many draws it was
matched (``matched_draws``): misses the same in every draw belong to the model, misses that move
between draws to the chain's randomness. ``reconstruction`` stays the first seed's rate.

``--levels`` (CDVAE) measures, per σ level, how much of the coordinate score the decoder has
learned on the training crystals (1 − loss / loss of a zero prediction), e.g.
``... KEEP_DIR/cdvae.pt --no-reconstruct --generate 0 --levels``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from pymatgen.analysis.structure_matcher import FrameworkComparator, StructureMatcher

from analysis.matching import MATCHER_TOLERANCES, rms_dist
from analysis.validity import shortest_distance, structure_is_valid
from generators.crystal import (
    MAX_ATOMIC_NUMBER,
    batch_to_structures,
    data_list_to_batch,
    lattice_to_params,
)
from generators.data import small_crystals
from generators.registry import build_model
from generators.trainer import structures_to_data_list

LOOSE_STOL = 1.0
"""Site tolerance of the loose second match in ``--diagnose`` (the metric's is 0.5): a forced
reconstruction that matches only with it is a near miss, one that matches neither is another
arrangement."""


TRACE_EVERY = 50
"""Decoder calls between two rows of the forced chain's type trace."""

TYPE_LEVEL_DRAWS = 20
"""Noise draws per level in ``--type-levels``."""


def chain_options(text: str | None) -> dict[str, int]:
    """``"steps_per_level=20"`` or ``"steps=200"`` → keyword arguments of configure_sampling."""
    if not text:
        return {}
    key, value = text.split("=")
    return {key: int(value)}


def seed_list(text: str) -> list[int]:
    """Parse ``--recon-seeds``: comma-separated non-negative integers, at least one."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"seeds must be integers: {text!r}") from error
    if not seeds or any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"give one or more non-negative seeds: {text!r}")
    return seeds


def matches(structures: list, records: list) -> list[bool]:  # type: ignore[type-arg]
    """Per crystal: the reconstruction StructureMatcher-matches the training crystal."""
    return [
        pred is not None and rms_dist(pred, rec.structure) is not None
        for pred, rec in zip(structures, records, strict=True)
    ]


class TypeChangeCounter:
    """Compare a chain's current atom types with the true ones.

    Parameters
    ----------
    truth
        [N] true atomic numbers.
    batch
        [N] crystal index of every atom.
    num_crystals
        Number of crystals in the batch.
    """

    def __init__(self, truth: torch.Tensor, batch: torch.Tensor, num_crystals: int) -> None:
        self.truth, self.batch, self.num_crystals = truth, batch, num_crystals
        self.composition = self.counts(truth)

    def counts(self, types: torch.Tensor) -> torch.Tensor:
        """[num_crystals, MAX_ATOMIC_NUMBER] element counts of every crystal."""
        counts = torch.zeros(self.num_crystals, MAX_ATOMIC_NUMBER, dtype=torch.long)
        return counts.index_put_((self.batch, types - 1), torch.ones_like(types), accumulate=True)

    def __call__(self, types: torch.Tensor) -> tuple[int, int]:
        """Atoms whose type differs from the truth, crystals whose composition does."""
        changed_atoms = int((types != self.truth).sum())
        changed_crystals = int((self.counts(types) != self.composition).any(-1).sum())
        return changed_atoms, changed_crystals


@torch.no_grad()
def diagnose(model, data: list, records: list, structures: list) -> dict[str, object]:  # type: ignore[no-untyped-def,type-arg]
    """Heads' errors and the match rate with the true atom count, lattice and types forced.

    Parameters
    ----------
    model
        A trained CDVAE-family model (eval mode, sampling configured).
    data, records
        The training crystals as graph data and as dataset records (same order).
    structures
        The reconstructions of ``data`` from the model's own heads (for the per-crystal table).
    """
    batch = data_list_to_batch(data)
    num_atoms = batch.num_atoms.view(-1)
    lattice = batch.lattice.view(-1, 3, 3)
    mu, _ = model.encode(batch)
    natom_logits, lattice_pred, _ = model.predict_statistics(mu)
    natom_ok = natom_logits.argmax(-1) == num_atoms
    lengths, angles = lattice_to_params(lattice)
    pred_lengths, pred_angles = lattice_to_params(model.unscale_lattice(lattice_pred, num_atoms))
    length_err = (pred_lengths - lengths).abs().max(-1).values
    angle_err = (pred_angles - angles).abs().max(-1).values
    trace: list[list[int]] = []
    wrong_types = TypeChangeCounter(batch.atom_types, batch.batch, len(num_atoms))

    def record(_module: torch.nn.Module, args: tuple) -> None:  # type: ignore[type-arg]
        calls = len(trace) + 1
        trace.append([calls, *wrong_types(args[2])])

    hook = model.decoder.register_forward_pre_hook(record)
    try:
        frac, types = model.sample_structure(
            mu, num_atoms, lattice, batch.atom_types, torch.Generator().manual_seed(0)
        )
    finally:
        hook.remove()
    forced = batch.clone()
    forced.frac_coords, forced.atom_types = frac.float(), types.long()
    forced_structures, _ = batch_to_structures(forced)
    own = matches(structures, records)
    with_truth = matches(forced_structures, records)
    framework = StructureMatcher(**MATCHER_TOLERANCES, comparator=FrameworkComparator())
    loose = {**MATCHER_TOLERANCES, "stol": LOOSE_STOL}
    rows = []
    for k, (rec, pred) in enumerate(zip(records, forced_structures, strict=True)):
        rms = None if pred is None else rms_dist(pred, rec.structure, loose)
        closest = None if pred is None else shortest_distance(pred)
        rows.append(
            {
                "id": str(rec.material_id),
                "atoms": int(num_atoms[k]),
                "natom_ok": bool(natom_ok[k]),
                "max_length_err_A": round(float(length_err[k]), 3),
                "max_angle_err_deg": round(float(angle_err[k]), 2),
                "match": own[k],
                "composition_ok": structures[k] is not None
                and structures[k].composition == rec.structure.composition,
                "match_forced": with_truth[k],
                "composition_forced_ok": pred is not None
                and pred.composition == rec.structure.composition,
                "rms_forced_loose": None if rms is None else round(float(rms), 3),
                "min_distance_forced_A": None if closest is None else round(closest, 2),
                "framework_forced": pred is not None and bool(framework.fit(pred, rec.structure)),
            }
        )
    return {
        "natom_right": int(natom_ok.sum()),
        "median_max_length_err_A": round(float(length_err.median()), 3),
        "median_max_angle_err_deg": round(float(angle_err.median()), 2),
        "match": sum(own),
        "composition_right": sum(row["composition_ok"] for row in rows),
        "match_forced": sum(with_truth),
        "framework_forced": sum(row["framework_forced"] for row in rows),
        "forced_type_trace": {
            "columns": ["decoder_call", "atoms_with_other_type", "crystals_with_other_composition"],
            "rows": [row for row in trace if row[0] % TRACE_EVERY == 0 or row is trace[-1]],
        },
        "crystals": rows,
    }


@torch.no_grad()
def level_losses(model, data: list, draws: int = 8) -> list[dict[str, float]]:  # type: ignore[no-untyped-def,type-arg]
    """CDVAE only: how much of the coordinate score the decoder has learned at each σ level.

    For every noise level, the training crystals (z = mu, true lattice and types) are noised
    ``draws`` times with that σ; the coordinate loss per atom, 0.5 |pred − d/σ|² (d the
    minimum-image displacement back to the crystal, as in training), is compared with the loss
    of a decoder that predicts zero, 0.5 |d/σ|². ``explained = 1 − loss / zero_loss``: 1 is a
    perfect score, 0 no better than zero.
    """
    from generators.models.cdvae import noise_coordinates

    batch = data_list_to_batch(data)
    num_atoms = batch.num_atoms.view(-1)
    lattice = batch.lattice.view(-1, 3, 3)
    z, _ = model.encode(batch)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for sigma_value in model.sigmas.tolist():
        loss = zero = 0.0
        for _ in range(draws):
            noise = torch.randn(batch.frac_coords.shape, generator=generator) * sigma_value
            noisy, target = noise_coordinates(batch.frac_coords, lattice, num_atoms, noise)
            pred, _ = model.decoder(z, noisy, batch.atom_types, lattice, num_atoms, batch.batch)
            target = target / sigma_value
            loss += float(0.5 * ((pred - target) ** 2).sum(-1).mean())
            zero += float(0.5 * (target**2).sum(-1).mean())
        rows.append(
            {
                "sigma_A": round(sigma_value, 4),
                "loss": round(loss / draws, 4),
                "zero_loss": round(zero / draws, 4),
                "explained": round(1.0 - loss / zero, 3),
            }
        )
    return rows


def noise_index_rows(model) -> list[tuple[int, float]]:  # type: ignore[no-untyped-def]
    """``--type-levels`` rows: (level index, σ in Å) or (step t, sqrt(1 − ᾱ_t)) of the chain."""
    if model.name == "cdvae":
        return [(k, float(model.sigmas[k])) for k in range(0, len(model.sigmas), 3)]
    last = model.num_timesteps - 1
    steps = [last, *range(last - last % 50, 0, -50), 10]
    alphas = model.schedule.alphas_cumprod
    return [(t, float((1.0 - alphas[t]).sqrt())) for t in steps]


def type_logits_at(
    model, batch, z: torch.Tensor, index: int, generator: torch.Generator
) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Type logits for ``z``, the true types and the true coordinates noised at one index."""
    num_atoms = batch.num_atoms.view(-1)
    lattice = batch.lattice.view(-1, 3, 3)
    noise = torch.randn(batch.frac_coords.shape, generator=generator)
    if model.name == "cdvae":
        from generators.models.cdvae import noise_coordinates

        noisy, _ = noise_coordinates(
            batch.frac_coords, lattice, num_atoms, noise * model.sigmas[index]
        )
        _, logits = model.decoder(z, noisy, batch.atom_types, lattice, num_atoms, batch.batch)
        return logits
    steps = torch.full((len(num_atoms),), index, dtype=torch.long)
    bounded, _ = model.noise_coordinates(batch.frac_coords, batch.batch, steps, noise)
    _, logits = model.denoise(z, bounded, batch.atom_types, lattice, num_atoms, batch.batch, steps)
    return logits


@torch.no_grad()
def type_levels(model, data: list, draws: int = TYPE_LEVEL_DRAWS) -> list[dict[str, float]]:  # type: ignore[no-untyped-def,type-arg]
    """Per noise level, how often the type head overrules correct input types.

    The training crystals (z = mu, true lattice and types) are noised ``draws`` times at each
    level of the chain; ``changed`` is the share of atoms whose argmax type differs from the
    (true) input type, ``margin_q01`` the 1 % quantile over atoms of log p(true type) minus the
    largest other log-probability (below 0 means changed).
    """
    batch = data_list_to_batch(data)
    truth = batch.atom_types
    atoms = torch.arange(len(truth))
    z, _ = model.encode(batch)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for index, noise_scale in noise_index_rows(model):
        margins = []
        for _ in range(draws):
            log_p = type_logits_at(model, batch, z, index, generator).log_softmax(-1)
            true = log_p[atoms, truth - 1]
            log_p[atoms, truth - 1] = -torch.inf
            margins.append(true - log_p.max(-1).values)
        margin = torch.cat(margins)
        rows.append(
            {
                "index": index,
                "noise": round(noise_scale, 4),
                "changed": round(float((margin < 0).float().mean()), 5),
                "margin_q01": round(float(margin.quantile(0.01)), 2),
            }
        )
    return rows


def main() -> None:
    """Load the kept model, reconstruct the training crystals, generate 100, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument(
        "--dataset",
        default="carbon_24",
        help="whose training crystals the model memorised (DFTLOOP_MEMORISATION_DATASET)",
    )
    parser.add_argument("--n", type=int, default=32, help="training crystals (≤ 8 atoms)")
    parser.add_argument("--recon-chain", default=None, help="e.g. steps_per_level=20, steps=999")
    parser.add_argument("--gen-chain", default=None, help="chain for the generated crystals")
    parser.add_argument("--generate", type=int, default=100, help="0 skips generation")
    parser.add_argument("--reconstruct-from", choices=["mu", "sample"], default="mu")
    parser.add_argument(
        "--recon-seeds",
        type=seed_list,
        default=[0],
        help="comma-separated seeds of the reconstruction chain's noise (default 0)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--diagnose", action="store_true", help="heads' errors and a forced-statistics rerun"
    )
    parser.add_argument(
        "--reconstruct",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reconstruct the training crystals (--no-reconstruct: only --levels / generation)",
    )
    parser.add_argument(
        "--type-levels",
        action="store_true",
        help="per noise level, the share of correct input types the type head changes",
    )
    parser.add_argument(
        "--levels",
        action="store_true",
        help="CDVAE: per σ level, the share of the coordinate score the decoder has learned",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    payload = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    config = {**payload["config"], "reconstruct_from": args.reconstruct_from, "progress": False}
    model = build_model(payload.get("model", args.checkpoint.stem), config)
    model.load_state_dict(payload["state_dict"])
    model.eval()

    records = small_crystals(args.dataset, args.n, data_dir=args.data_dir)
    data, _ = structures_to_data_list(records)
    result: dict[str, object] = {"checkpoint": str(args.checkpoint), "n": len(records)}

    if args.reconstruct or args.diagnose:
        start = time.perf_counter()
        model.configure_sampling(**chain_options(args.recon_chain))
        batch = data_list_to_batch(data)
        reconstructions = [
            batch_to_structures(model.reconstruct(batch, torch.Generator().manual_seed(seed)))[0]
            for seed in args.recon_seeds
        ]
        structures = reconstructions[0]
        draws = [matches(drawn, records) for drawn in reconstructions]
        result["recon_chain"] = args.recon_chain
        result["reconstruction"] = sum(draws[0]) / len(records)
        if len(draws) > 1:
            result["reconstruction_by_seed"] = {
                str(seed): sum(hits) / len(records)
                for seed, hits in zip(args.recon_seeds, draws, strict=True)
            }
            result["matched_draws"] = [sum(column) for column in zip(*draws, strict=True)]
        result["reconstruction_minutes"] = round((time.perf_counter() - start) / 60, 2)

    if args.levels:
        if model.name != "cdvae":
            parser.error("--levels is for CDVAE checkpoints (σ levels)")
        result["levels"] = level_losses(model, data)

    if args.type_levels:
        result["type_levels"] = type_levels(model, data)

    if args.diagnose:
        result["diagnosis"] = diagnose(model, data, records, structures)

    if args.generate:
        start = time.perf_counter()
        model.configure_sampling(**chain_options(args.gen_chain))
        generated = model.sample_generate(args.generate, torch.Generator().manual_seed(1))
        structures, _ = batch_to_structures(generated)
        valid = sum(1 for s in structures if s is not None and structure_is_valid(s))
        result["gen_chain"] = args.gen_chain
        result["validity"] = valid / args.generate
        result["generation_minutes"] = round((time.perf_counter() - start) / 60, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
