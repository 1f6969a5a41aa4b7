"""Relaxer names -> classes, imported lazily (``relax.vasp`` and CHGNet load only when asked).

Single relaxers are ``"module:Class"`` strings; two-stage names ``"pre+final"`` combine two of
them in :class:`relax.two_stage.TwoStageRelaxer`.
"""

from __future__ import annotations

import importlib
from typing import Any

from relax.base import Relaxer

RELAXERS: dict[str, str] = {
    "chgnet": "relax.chgnet_relaxer:CHGNetRelaxer",
    "espresso": "relax.espresso_relaxer:EspressoRelaxer",
    "vasp": "relax.vasp:VaspRelaxer",
}
"""Single-stage relaxers. ``relax.vasp`` must define ``VaspRelaxer(Relaxer)``."""

TWO_STAGE: dict[str, tuple[str, str]] = {
    "chgnet+espresso": ("chgnet", "espresso"),
    "chgnet+vasp": ("chgnet", "vasp"),
}
"""Two-stage relaxers: a (batched) force-field pre-relax, then a DFT final relax."""

DEFAULT_RELAXER = "chgnet+espresso"


def available_relaxers() -> list[str]:
    """Return every registered relaxer name."""
    return [*RELAXERS, *TWO_STAGE]


def relaxer_class(name: str) -> type[Relaxer]:
    """Import and return the class of a single-stage relaxer.

    Parameters
    ----------
    name
        A key of :data:`RELAXERS`.

    Returns
    -------
    type[Relaxer]
        The relaxer class.

    Raises
    ------
    ValueError
        If the name is unknown.
    ImportError
        If the relaxer's module cannot be imported (the message names it).
    """
    if name not in RELAXERS:
        raise ValueError(f"unknown relaxer {name!r}; choose one of {available_relaxers()}")
    module_name, _, class_name = RELAXERS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"relaxer {name!r}: cannot import {module_name}: {exc}") from exc
    try:
        cls = getattr(module, class_name)
    except AttributeError as exc:
        raise ImportError(f"relaxer {name!r}: {module_name} has no {class_name}") from exc
    return cls


def get_relaxer(name: str = DEFAULT_RELAXER, **settings: Any) -> Relaxer:
    """Build a relaxer by name.

    Parameters
    ----------
    name
        ``"chgnet"``, ``"espresso"``, ``"vasp"``, ``"chgnet+espresso"`` (default) or
        ``"chgnet+vasp"``.
    **settings
        Keyword settings of the relaxer class. For a two-stage name, the settings of each stage
        go in a dict under the stage's name (``chgnet={"fmax": 0.1}, espresso={...}``); other
        keywords go to :class:`relax.two_stage.TwoStageRelaxer`, except ``protocol`` (a
        dataset name, a dict of fields or a :class:`relax.protocol.RelaxProtocol`), which
        goes to both stages unless a stage's dict has its own.

    Returns
    -------
    Relaxer
        The configured relaxer.

    Examples
    --------
    >>> relaxer = get_relaxer("chgnet", fmax=0.05, max_steps=300)  # doctest: +SKIP
    >>> relaxer = get_relaxer("chgnet+espresso", protocol="carbon_24")  # doctest: +SKIP
    >>> results = relaxer.relax([("diamond", structure)])  # doctest: +SKIP
    """
    key = name.strip().lower()
    if key in TWO_STAGE:
        from relax.two_stage import TwoStageRelaxer

        pre_name, final_name = TWO_STAGE[key]
        pre_settings = dict(settings.pop(pre_name, None) or {})
        final_settings = dict(settings.pop(final_name, None) or {})
        if "protocol" in settings:
            protocol = settings.pop("protocol")
            pre_settings.setdefault("protocol", protocol)
            final_settings.setdefault("protocol", protocol)
        if final_name == "espresso":
            # the two-stage relaxer computes the initial energy itself (of the structure as
            # given, before the force field); pw.x need not repeat it for the pre-relaxed one
            final_settings.setdefault("initial_single_point", False)
        pre = relaxer_class(pre_name)(**pre_settings)
        final = relaxer_class(final_name)(**final_settings)
        return TwoStageRelaxer(pre, final, **settings)
    return relaxer_class(key)(**settings)
