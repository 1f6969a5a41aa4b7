"""Loading CHGNet once per process and evaluating many structures in one forward pass."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from relax.batched_fire import Evaluation

if TYPE_CHECKING:
    from chgnet.model import CHGNet

CHGNET_MAX_Z = 94
"""CHGNet's atom embedding covers atomic numbers 1..94."""


@functools.cache
def supported_elements() -> frozenset[str]:
    """Return the element symbols CHGNet can embed (Z = 1..94)."""
    return frozenset(Element.from_Z(z).symbol for z in range(1, CHGNET_MAX_Z + 1))


@functools.cache
def load_chgnet(model_name: str = "0.3.0") -> CHGNet:
    """Load a pretrained CHGNet (weights ship in the wheel; no network) and cache it.

    Parameters
    ----------
    model_name
        CHGNet model version (``"0.3.0"``, ``"0.2.0"`` or ``"r2scan"``).

    Returns
    -------
    CHGNet
        The model in evaluation mode on the CPU.
    """
    from chgnet.model import CHGNet

    model = CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)
    model.eval()
    return model


def make_structure(species: Sequence[str], positions: np.ndarray, cell: np.ndarray) -> Structure:
    """Build a pymatgen structure from species, Cartesian positions and a cell."""
    return Structure(Lattice(cell), list(species), positions, coords_are_cartesian=True)


def evaluate_structures(
    model: CHGNet,
    structures: Sequence[Structure],
    *,
    max_batch_atoms: int = 2048,
    stress: bool = True,
) -> list[Evaluation]:
    """Energy, forces and stress of many structures with batched CHGNet forward passes.

    Parameters
    ----------
    model
        A loaded CHGNet.
    structures
        The structures; each is converted to a CrystalGraph, then the graphs go through one
        batched CHGNet pass per chunk of at most ``max_batch_atoms`` atoms (the same model as
        ``model.forward(graphs, task="efs")``, with a single first-order gradient).
    max_batch_atoms
        Largest number of atoms in one forward pass (memory bound).
    stress
        Whether to compute the stress as well as energy and forces.

    Returns
    -------
    list of Evaluation
        Energy in eV (total), forces in eV/Å, stress in eV/Å^3 (ASE sign convention). A
        structure whose graph cannot be built (e.g. an isolated atom) gets ``error`` set.
    """
    results: list[Evaluation] = [Evaluation() for _ in structures]
    graphs = []
    graph_index = []
    for i, structure in enumerate(structures):
        try:
            graphs.append(model.graph_converter(structure, graph_id=str(i)))
            graph_index.append(i)
        except Exception as exc:
            results[i] = Evaluation(error=f"CHGNet graph construction failed: {exc}")
    chunk: list[int] = []
    chunk_atoms = 0

    def run(chunk: list[int]) -> None:
        batch = [graphs[k] for k in chunk]
        energies, forces, stresses = _energy_forces_stress(model, batch, stress=stress)
        for j, k in enumerate(chunk):
            i = graph_index[k]
            results[i] = Evaluation(
                energy=float(energies[j]),
                forces=forces[j],
                stress=None if stresses is None else stresses[j],
            )

    for k in range(len(graphs)):
        n = len(structures[graph_index[k]])
        if chunk and chunk_atoms + n > max_batch_atoms:
            run(chunk)
            chunk, chunk_atoms = [], 0
        chunk.append(k)
        chunk_atoms += n
    if chunk:
        run(chunk)
    return results


def _energy_forces_stress(
    model: CHGNet, graphs: Sequence[Any], *, stress: bool
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray] | None]:
    """One CHGNet pass over ``graphs``: total energies (eV), forces (eV/Å), stress (eV/Å^3).

    ``CHGNet.forward(task="efs")`` takes forces and stress by two ``autograd.grad`` calls with
    ``create_graph=True`` (it is written for training). For relaxation one first-order gradient
    with respect to positions and strains together is enough (about 1.4x cheaper per evaluation
    on this CPU, docs/benchmarks.md). Same model, same numbers (float32 round-off aside).
    """
    import torch
    from chgnet.model.model import BatchedGraph

    with torch.enable_grad():
        g = BatchedGraph.from_graphs(
            graphs,
            bond_basis_expansion=model.bond_basis_expansion,
            angle_basis_expansion=model.angle_basis_expansion,
            compute_stress=stress,
        )
        pred = model._compute(g)
        n_atoms = torch.bincount(g.atom_owners).to(pred["e"].dtype)
        per_atom = pred["e"] if model.is_intensive else pred["e"] / n_atoms
        total = per_atom * n_atoms
        inputs = [*g.atom_positions, *(g.strains if stress else [])]
        grads = torch.autograd.grad(total.sum(), inputs)
    composition = (
        model.composition_model(graphs).detach() if model.composition_model is not None else 0.0
    )
    # the composition model is in the units of ``pred["e"]`` (per atom when intensive)
    scale = n_atoms if model.is_intensive else torch.ones_like(n_atoms)
    energies = (total.detach() + composition * scale).cpu().numpy().astype(float)
    n = len(graphs)
    forces = [-grads[i].detach().cpu().numpy().astype(float) for i in range(n)]
    stresses = None
    if stress:
        volumes = g.volumes.detach().cpu().numpy().astype(float)
        stresses = [
            grads[n + i].detach().cpu().numpy().astype(float) / volumes[i] for i in range(n)
        ]
    return energies, forces, stresses
