"""Shared machinery of the speed benchmarks against an earlier commit (speed_diffcsp_*.py).

The parent process (this tree's code) writes the inputs once — the perov_5 training crystals as
flat tensors and the weights of one perov_5 paper DiffCSP (4 × 256, 128 frequencies) — then
runs the old and the new code alternately, each round in two fresh subprocesses (the order
swapped every round), and prints the per-round times, the old/new ratio, min and median, and the
load average. The old code is a git worktree of the reference commit in a temporary directory
with CSPNet's self-edges switched on by a one-line patch (the reference commit predates the
setting); its lattice head has a bias the current model does not have (9 parameters), which
the old side sets to zero, so both sides compute the same function and their outputs are
compared as well.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REFERENCE_COMMIT = "d3e0318"
SELF_EDGE_PATCH = (
    "fully_connected_edges(num_atoms)",
    "fully_connected_edges(num_atoms, self_loops=True)",
)
REPO = Path(__file__).resolve().parents[1]


@contextmanager
def detached_worktree(commit: str) -> Iterator[Path]:
    """A temporary detached git worktree of ``commit``, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="dftloop-speed-"))
    tree = tmp / commit
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit],
        check=True,
        capture_output=True,
    )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def reference_worktree(commit: str = REFERENCE_COMMIT) -> Iterator[Path]:
    """A detached worktree of ``commit`` with self-edges patched on, removed afterwards."""
    with detached_worktree(commit) as tree:
        cspnet = tree / "generators" / "models" / "cspnet.py"
        text = cspnet.read_text()
        old, new = SELF_EDGE_PATCH
        if text.count(old) != 1:
            raise RuntimeError(f"{commit}: expected one {old!r} in {cspnet.name}")
        cspnet.write_text(text.replace(old, new))
        yield tree


def write_inputs(workdir: Path, n_crystals: int, config: str = "paper", seed: int = 0) -> None:
    """The first ``n_crystals`` perov_5 training crystals and one ``config`` net's weights."""
    import torch

    from generators.configs import load_config
    from generators.crystal import data_list_to_batch
    from generators.data import load_split
    from generators.models.diffcsp import DiffCSP
    from generators.trainer import structures_to_data_list

    records = load_split("perov_5", "train", limit=n_crystals, progress=False).records
    data, errors = structures_to_data_list(records)
    if errors or len(data) != n_crystals:
        raise RuntimeError(f"perov_5: {len(data)} crystals converted, errors {errors}")
    batch = data_list_to_batch(data)
    torch.save(
        {
            "frac_coords": batch.frac_coords,
            "atom_types": batch.atom_types,
            "lattice": batch.lattice,
            "num_atoms": batch.num_atoms,
        },
        workdir / "crystals.pt",
    )
    torch.manual_seed(seed)
    model = DiffCSP(load_config("diffcsp", config, "perov_5")["model"])
    model.fit_statistics(batch)
    torch.save(model.state_dict(), workdir / "weights.pt")


def worker_setup(tree: str, threads: int) -> None:
    """Import ``generators`` from ``tree`` and pin the threads (call first in a worker)."""
    sys.path.insert(0, tree)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    import generators

    if Path(generators.__file__).resolve().parents[1] != Path(tree).resolve():
        raise RuntimeError(f"imported generators from {generators.__file__}, not {tree}")


def worker_model_and_batches(
    workdir: Path, batch_size: int, config: str = "paper"
) -> tuple[Any, list[Any]]:
    """The perov_5 DiffCSP of ``config`` with the shared weights, and the crystals in batches."""
    import torch
    from torch_geometric.data import Batch, Data

    from generators.configs import load_config
    from generators.models.diffcsp import DiffCSP

    model = DiffCSP(load_config("diffcsp", config, "perov_5")["model"])
    state = torch.load(workdir / "weights.pt", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"denoiser.lattice_head.bias"}:
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    if missing:  # the reference commit's lattice head has a bias: zero and frozen, it is the
        # same function with the same trainable parameters
        with torch.no_grad():
            model.denoiser.lattice_head.bias.zero_()
        model.denoiser.lattice_head.bias.requires_grad_(False)
    flat = torch.load(workdir / "crystals.pt", weights_only=True)
    data, start = [], 0
    for b, n in enumerate(flat["num_atoms"].tolist()):
        data.append(
            Data(
                frac_coords=flat["frac_coords"][start : start + n],
                atom_types=flat["atom_types"][start : start + n],
                lattice=flat["lattice"][b : b + 1],
                num_atoms=torch.tensor([n]),
                num_nodes=n,
                material_id=f"perov-{b}",
            )
        )
        start += n
    batches = [
        Batch.from_data_list(data[i : i + batch_size]) for i in range(0, len(data), batch_size)
    ]
    return model, batches


def run_rounds(
    script: Path,
    tree_args: dict[str, Path],
    worker_args: list[str],
    rounds: int,
) -> dict[str, list[dict[str, Any]]]:
    """Alternate the workers of ``tree_args`` (name → tree) for ``rounds`` rounds.

    Each worker prints one JSON line as its last output; the order of the trees is swapped
    every round so neither side always runs first.
    """
    names = list(tree_args)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            load_before = os.getloadavg()[0]
            cmd = [sys.executable, str(script), "--worker", str(tree_args[name]), *worker_args]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["load"] = (load_before + os.getloadavg()[0]) / 2
            results[name].append(row)
            print(f"round {r + 1} {name}: {json.dumps(row)}", flush=True)
    return results


def summarise(
    results: dict[str, list[dict[str, Any]]], key: str, label: str, fmt: Callable[[float], str]
) -> str:
    """Markdown rows: min and median of ``key`` per side and of the per-round old/new ratio."""
    old, new = results["old"], results["new"]
    ratios = [o[key] / n[key] for o, n in zip(old, new, strict=True)]
    lines = [
        f"| {label} | {fmt(min(r[key] for r in old))} | {fmt(min(r[key] for r in new))} "
        f"| {min(ratios):.2f} | {statistics.median(ratios):.2f} "
        f"| {fmt(statistics.median(r[key] for r in old))} "
        f"| {fmt(statistics.median(r[key] for r in new))} |"
    ]
    return "\n".join(lines)


TABLE_HEADER = (
    "| measure | old min | new min | ratio min | ratio median | old median | new median |\n"
    "|---|---|---|---|---|---|---|"
)


def load_line(results: dict[str, list[dict[str, Any]]]) -> str:
    """The load average (1 min) seen by the rounds: min, median, max."""
    loads = [r["load"] for rows in results.values() for r in rows]
    return (
        f"load average (1 min) during the rounds: min {min(loads):.1f}, "
        f"median {statistics.median(loads):.1f}, max {max(loads):.1f} "
        f"on {os.cpu_count()} CPUs"
    )
