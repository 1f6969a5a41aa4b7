"""The ``dftloop`` command line.

Each command group lives in its own module under :mod:`flows.commands`; this file only
assembles them. The CLI is orchestration: it calls the library (``generators``, ``relax``,
``analysis``) and the store, and imports Prefect only inside the commands that need it.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dftloop",
    help="DFT-in-the-loop pipeline for generative crystal-structure models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# --- command registration: one line per command module -------------------------------
# (modules add themselves here; keep the list sorted by the order a user meets them)
__import__("flows.commands.data", fromlist=["register"]).register(app)
__import__("flows.commands.train", fromlist=["register"]).register(app)
__import__("flows.commands.sample", fromlist=["register"]).register(app)
__import__("flows.commands.evaluate", fromlist=["register"]).register(app)
__import__("flows.commands.relax", fromlist=["register"]).register(app)
__import__("flows.commands.results", fromlist=["register"]).register(app)
# --------------------------------------------------------------------------------------


def main() -> None:
    """Run the ``dftloop`` application."""
    app()


if __name__ == "__main__":
    main()
