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

DEFAULT_MAX_BATCH_ATOMS = 2048
"""Largest number of atoms in one CHGNet forward pass (see :func:`evaluate_graphs`)."""

CHGNET_MAX_Z = 94
"""CHGNet's atom embedding covers atomic numbers 1..94."""


@functools.cache
def supported_elements() -> frozenset[str]:
    """Return the element symbols CHGNet can embed (Z = 1..94)."""
    return frozenset(Element.from_Z(z).symbol for z in range(1, CHGNET_MAX_Z + 1))


def resolve_device(device: str | None = None) -> str:
    """The torch device CHGNet runs on: ``device`` if given, else CHGNet's own choice.

    Parameters
    ----------
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...; ``None`` asks
        ``chgnet.utils.determine_device`` (the ``CHGNET_DEVICE`` environment variable, else MPS
        or CUDA when present, else the CPU).

    Returns
    -------
    str
        A device name ``torch.device`` accepts.

    Raises
    ------
    ValueError
        If ``device`` is not a torch device name.
    """
    import torch
    from chgnet.utils import determine_device

    name = determine_device(use_device=device)
    try:
        torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"CHGNet device {name!r} is not a torch device name: {exc}") from None
    return name


@functools.cache
def load_chgnet(model_name: str = "0.3.0", device: str = "cpu") -> CHGNet:
    """Load a pretrained CHGNet (weights ship in the wheel; no network) and cache it.

    Parameters
    ----------
    model_name
        CHGNet model version (``"0.3.0"``, ``"0.2.0"`` or ``"r2scan"``).
    device
        Torch device of the model (see :func:`resolve_device`); one cached model per device.

    Returns
    -------
    CHGNet
        The model in evaluation mode on ``device``.
    """
    from chgnet.model import CHGNet

    model = CHGNet.load(model_name=model_name, use_device=device, verbose=False)
    model.eval()
    return model


def make_structure(species: Sequence[str], positions: np.ndarray, cell: np.ndarray) -> Structure:
    """Build a pymatgen structure from species, Cartesian positions and a cell."""
    return Structure(Lattice(cell), list(species), positions, coords_are_cartesian=True)


def evaluate_structures(
    model: CHGNet,
    structures: Sequence[Structure],
    *,
    max_batch_atoms: int = DEFAULT_MAX_BATCH_ATOMS,
    stress: bool = True,
) -> list[Evaluation]:
    """Energy, forces and stress of many structures with batched CHGNet forward passes.

    Parameters
    ----------
    model
        A loaded CHGNet.
    structures
        The structures; each is converted to a CrystalGraph by CHGNet's own converter, then the
        graphs go through :func:`evaluate_graphs`.
    max_batch_atoms
        Largest number of atoms in one forward pass.
    stress
        Whether to compute the stress as well as energy and forces.

    Returns
    -------
    list of Evaluation
        Energy in eV (total), forces in eV/Å, stress in eV/Å^3 (ASE sign convention). A
        structure whose graph cannot be built (e.g. an isolated atom) gets ``error`` set.
    """
    graphs: list[Any] = []
    for i, structure in enumerate(structures):
        try:
            graphs.append(model.graph_converter(structure, graph_id=str(i)))
        except Exception as exc:
            graphs.append(exc)
    return evaluate_graphs(model, graphs, max_batch_atoms=max_batch_atoms, stress=stress)


def evaluate_graphs(
    model: CHGNet,
    graphs: Sequence[Any],
    *,
    max_batch_atoms: int = DEFAULT_MAX_BATCH_ATOMS,
    stress: bool = True,
) -> list[Evaluation]:
    """Energy, forces and stress of CHGNet crystal graphs, in passes of at most N atoms.

    Parameters
    ----------
    model
        A loaded CHGNet.
    graphs
        ``CrystalGraph`` objects; an exception in place of a graph gives an error evaluation
        (``"CHGNet graph construction failed: ..."``).
    max_batch_atoms
        Largest number of atoms in one forward pass. On a CPU small passes are faster per atom
        than large ones (the 64-wide features of ~10^5 angles no longer fit in cache), see
        docs/benchmarks.md; a structure larger than the limit gets a pass of its own.
    stress
        Whether to compute the stress as well as energy and forces.

    Returns
    -------
    list of Evaluation
        One per graph, in order.
    """
    results: list[Evaluation] = [Evaluation() for _ in graphs]
    chunk: list[int] = []
    chunk_atoms = 0

    def run(chunk: list[int]) -> None:
        batch = [graphs[k] for k in chunk]
        energies, forces, stresses = _energy_forces_stress(model, batch, stress=stress)
        for j, k in enumerate(chunk):
            results[k] = Evaluation(
                energy=float(energies[j]),
                forces=forces[j],
                stress=None if stresses is None else stresses[j],
            )

    for k, graph in enumerate(graphs):
        if isinstance(graph, BaseException):
            results[k] = Evaluation(error=f"CHGNet graph construction failed: {graph}")
            continue
        n = int(graph.atomic_number.shape[0])
        if chunk and chunk_atoms + n > max_batch_atoms:
            run(chunk)
            chunk, chunk_atoms = [], 0
        chunk.append(k)
        chunk_atoms += n
    if chunk:
        run(chunk)
    return results


def model_energy(model: CHGNet, g: Any) -> Any:
    """CHGNet's energy prediction ``model._compute(g)["e"]`` without its dead computation.

    In ``CHGNet._compute`` the angle update of the last message-passing block produces angle
    features that nothing reads afterwards (only bond features feed the final atom
    convolution), so it is skipped here. The result is the same tensor, computed with one
    angle-layer forward pass fewer (checked in ``tests/relax/test_chgnet_graphs.py``).

    Parameters
    ----------
    model
        A loaded CHGNet.
    g
        A ``chgnet.model.model.BatchedGraph``.

    Returns
    -------
    torch.Tensor
        Shape ``(n_graphs,)``: energy per atom if ``model.is_intensive`` else total, without
        the composition (AtomRef) part, as ``_compute`` returns it.
    """
    import torch

    atoms_per_graph = torch.bincount(g.atom_owners)
    atom_feas = model.atom_embedding(g.atomic_numbers - 1)
    bond_feas = model.bond_embedding(g.bond_bases_ag)
    bond_weights_ag = model.bond_weights_ag(g.bond_bases_ag)
    bond_weights_bg = model.bond_weights_bg(g.bond_bases_bg)
    has_angles = len(g.angle_bases) != 0
    angle_feas = model.angle_embedding(g.angle_bases) if has_angles else None
    n_blocks = model.n_conv - 1
    for idx, (atom_layer, bond_layer, angle_layer) in enumerate(
        zip(model.atom_conv_layers[:-1], model.bond_conv_layers, model.angle_layers, strict=False)
    ):
        atom_feas = atom_layer(
            atom_feas=atom_feas,
            bond_feas=bond_feas,
            bond_weights=bond_weights_ag,
            atom_graph=g.batched_atom_graph,
            directed2undirected=g.directed2undirected,
        )
        if has_angles and bond_layer is not None:
            bond_feas = bond_layer(
                atom_feas=atom_feas,
                bond_feas=bond_feas,
                bond_weights=bond_weights_bg,
                angle_feas=angle_feas,
                bond_graph=g.batched_bond_graph,
            )
            # the last block's angle features would never be read: skip that update
            if angle_layer is not None and idx < n_blocks - 1:
                angle_feas = angle_layer(
                    atom_feas=atom_feas,
                    bond_feas=bond_feas,
                    angle_feas=angle_feas,
                    bond_graph=g.batched_bond_graph,
                )
    atom_feas = model.atom_conv_layers[-1](
        atom_feas=atom_feas,
        bond_feas=bond_feas,
        bond_weights=bond_weights_ag,
        atom_graph=g.batched_atom_graph,
        directed2undirected=g.directed2undirected,
    )
    if model.readout_norm is not None:
        atom_feas = model.readout_norm(atom_feas)
    if model.mlp_first:
        energy = model.pooling(model.mlp(atom_feas), g.atom_owners).view(-1)
    else:
        energy = model.mlp(model.pooling(atom_feas, g.atom_owners)).view(-1) * atoms_per_graph
    if model.is_intensive:
        energy = energy / atoms_per_graph
    return energy


def _energy_forces_stress(
    model: CHGNet, graphs: Sequence[Any], *, stress: bool
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray] | None]:
    """One CHGNet pass over ``graphs``: total energies (eV), forces (eV/Å), stress (eV/Å^3).

    ``CHGNet.forward(task="efs")`` takes forces and stress by two ``autograd.grad`` calls with
    ``create_graph=True`` (it is written for training). For relaxation one first-order gradient
    with respect to positions and strains together is enough, and :func:`model_energy` skips
    the model's unused last angle update. Same model, same numbers (float32 round-off aside).
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
        energy = model_energy(model, g)
        n_atoms = torch.bincount(g.atom_owners).to(energy.dtype)
        total = energy * n_atoms if model.is_intensive else energy
        inputs = [*g.atom_positions, *(g.strains if stress else [])]
        grads = torch.autograd.grad(total.sum(), inputs)
    with torch.inference_mode():
        composition = (
            model.composition_model(graphs) if model.composition_model is not None else 0.0
        )
    # the composition model is in the units of the model energy (per atom when intensive)
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
