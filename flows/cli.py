"""The ``dftloop`` command line.

Each command group lives in its own module under :mod:`flows.commands`; this file only
assembles them. The CLI is orchestration: it calls the library (``generators``, ``relax``,
``analysis``) and the store, and imports Prefect only inside the commands that need it.
"""

from __future__ import annotations

import typer

from flows.commands import (
    data,
    dft,
    evaluate,
    experiment,
    models,
    optimize,
    relax,
    results,
    sample,
    train,
)

app = typer.Typer(
    name="dftloop",
    help="DFT-in-the-loop pipeline for generative crystal-structure models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# One module per command group, registered in the order a user meets them.
for _commands in (
    data,
    models,
    train,
    sample,
    optimize,
    evaluate,
    relax,
    dft,
    results,
    experiment,
):
    _commands.register(app)


def main() -> None:
    """Run the ``dftloop`` application."""
    app()


if __name__ == "__main__":
    main()
