"""The relaxation protocol a flow hands to its relaxers: the dataset's, with the user's overrides.

Every flow that relaxes (``generate-and-relax``, ``relax-structures``, ``analyze``,
``nightly-benchmark``, ``stability-experiment``, the main job's floor) resolves its relaxers'
``protocol`` here, so that the dataset's protocol (:func:`relax.protocol.dataset_protocol`:
carbon_24 at 10 GPa with DFT-D3(BJ) and its converged k-spacing and cutoffs) is the single
default, and a user overrides any field with the flow's ``protocol`` parameter (or a
``protocol`` inside one relaxer's settings, or a relaxer keyword such as ``kspacing``).
"""

from __future__ import annotations

from typing import Any

ProtocolParameter = dict[str, Any] | str | None
"""A flow's ``protocol`` parameter: ``None`` (the dataset's), a dataset name, or a dict of
protocol fields that override the dataset's defaults (its own ``"dataset"`` key picks other
defaults)."""


def protocol_spec(dataset: str | None, protocol: ProtocolParameter) -> Any:
    """The relaxation protocol of a run on ``dataset``: the dataset's, with the user's overrides.

    Parameters
    ----------
    dataset
        The run's dataset (its defaults, e.g. carbon_24 at 10 GPa with D3(BJ)); ``None`` or a
        dataset without defaults: the ``"default"`` protocol (0 GPa, no dispersion).
    protocol
        ``None`` (the dataset's defaults), a dataset name, or a dict of protocol fields that
        override the dataset's defaults (its own ``"dataset"`` key picks other defaults).

    Returns
    -------
    str or dict or None
        A ``protocol=`` value of the relaxers (``None`` for a dataset without defaults).
    """
    from relax.protocol import DATASET_PROTOCOLS

    if isinstance(protocol, str):
        return protocol
    base = dataset if dataset in DATASET_PROTOCOLS else None
    if protocol is None:
        return base
    fields = dict(protocol)
    if base is not None and "dataset" not in fields and "name" not in fields:
        fields["dataset"] = base
    return fields


def with_protocol(settings: dict[str, Any] | None, spec: Any) -> dict[str, Any]:
    """Relaxer settings with ``protocol`` set to ``spec`` (a ``protocol`` given there wins).

    Parameters
    ----------
    settings
        A relaxer's settings as the user gave them (``None``: none).
    spec
        What :func:`protocol_spec` returned.

    Returns
    -------
    dict
        A new dict; unchanged when ``spec`` is ``None`` or the settings name a protocol.
    """
    out = dict(settings or {})
    if spec is not None:
        out.setdefault("protocol", spec)
    return out


def check_protocol(spec: Any) -> None:
    """Raise before anything runs when a protocol cannot be built.

    Raises
    ------
    ValueError
        For an unknown dataset, field or value (the message names it).
    """
    from relax.protocol import resolve_protocol

    resolve_protocol(spec)


def stage_settings(
    dataset: str | None,
    protocol: ProtocolParameter,
    *settings: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Each relaxer's settings with the run's protocol (:func:`protocol_spec`) filled in.

    Parameters
    ----------
    dataset
        The run's dataset.
    protocol
        The flow's ``protocol`` parameter.
    *settings
        The settings of each relaxer (force field, DFT, ...).

    Returns
    -------
    list of dict
        The settings in the same order, each with ``"protocol"`` unless it named one.

    Raises
    ------
    ValueError
        For an unknown protocol field or value.
    """
    spec = protocol_spec(dataset, protocol)
    check_protocol(spec)
    return [with_protocol(s, spec) for s in settings]
