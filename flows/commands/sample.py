"""``dftloop sample``: sample a trained generator into a (resumable) sample directory.

::

    dftloop sample --checkpoint runs/x/best.pt --n 1000                  # ab-initio generation
    dftloop sample --checkpoint runs/x/best.pt --csp-split test --k 20    # CSP, 20 candidates
    dftloop sample --checkpoint runs/x/best.pt --reconstruct test         # VAE reconstruction

Rerunning the same command continues an interrupted run. ``--evaluate`` then prints the
foundation metrics (``flows.evaluation.evaluate_samples``; ``dftloop evaluate`` does more).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sample(
    checkpoint: Annotated[
        str,
        typer.Option(
            help="Trainer checkpoint (best.pt / last.pt) or a registered model name "
            "(`dftloop models list`)."
        ),
    ],
    n: Annotated[int | None, typer.Option(help="Generate N crystals ab initio.")] = None,
    csp_split: Annotated[
        str | None, typer.Option(help="CSP for the compositions of this split.")
    ] = None,
    k: Annotated[int, typer.Option(help="CSP candidates per composition.")] = 1,
    reconstruct: Annotated[
        str | None, typer.Option(help="Reconstruct the structures of this split.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N target structures.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Sample directory (default: beside a checkpoint file; "
            "$DFTLOOP_HOME/samples/<name>/ for a registered model)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Crystals per model call and per chunk file.")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Sampling steps (default: the model's, 1000 for DiffCSP).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Base seed of the per-chunk generators.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda ... (default: auto).")] = None,
    evaluate: Annotated[
        bool, typer.Option(help="Print match rate / validity after sampling.")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory override.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Sample crystals from a checkpoint; exactly one of --n, --csp-split, --reconstruct."""
    from rich.console import Console

    from generators.sampler import MAX_VOLUME_PER_ATOM
    from generators.sampler import sample as run_sampling

    console = Console(stderr=True)
    chosen = [x is not None for x in (n, csp_split, reconstruct)]
    if sum(chosen) != 1:
        raise typer.BadParameter("give exactly one of --n, --csp-split, --reconstruct")
    mode = "generate" if n is not None else "csp" if csp_split is not None else "reconstruct"
    split = csp_split or reconstruct or "test"
    name = f"samples-{mode}" + (f"-{split}" if mode != "generate" else "")
    if out is not None:
        out_dir = out
    elif Path(checkpoint).is_file():
        out_dir = Path(checkpoint).parent / name
    else:
        from flows.store import dftloop_home

        out_dir = dftloop_home(None) / "samples" / checkpoint / name
    try:
        summary = run_sampling(
            checkpoint,
            out_dir,
            mode,
            n=n,
            split=split,
            k=k if mode == "csp" else 1,
            limit=limit,
            batch_size=batch_size,
            steps=steps,
            seed=seed,
            device=device,
            data_dir=data_dir,
            progress=progress,
        )
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
    console.print(
        f"{summary.total} samples in {summary.out_dir} ({summary.chunks_written} chunks written, "
        f"{summary.chunks_skipped} resumed, {summary.failed} unbuildable, "
        f"{summary.seconds:.1f} s)"
    )
    if summary.oversized:
        console.print(
            f"[yellow]warning:[/yellow] {summary.oversized} samples of this run have more than "
            f"{MAX_VOLUME_PER_ATOM:g} Å³ per atom: the model did not bring their lattice back "
            "from noise (an undertrained checkpoint?); they are kept as sampled"
        )
    if evaluate:
        from dftloop_io.samples import read_index
        from flows.evaluation import evaluate_samples

        dataset = read_index(out_dir)["dataset"]
        results = evaluate_samples(
            out_dir,
            dataset,
            gt_split=split,
            data_dir=data_dir,
            limit=limit,
            with_coverage=False,
            progress=progress,
            n_jobs=1,
        )
        for key, result in results.items():
            value = "n/a" if result.value is None else f"{result.value:.4g}"
            typer.echo(f"{key}: {value}")


def register(app: typer.Typer) -> None:
    """Add the ``sample`` command to the ``dftloop`` application.

    Parameters
    ----------
    app
        The typer application of :mod:`flows.cli`.
    """
    app.command("sample")(sample)
