"""What the stability experiment knows about the scope of its numbers, as plain dicts.

The report's "Limitations" section (:mod:`analysis.stability_limitations`) states the
checkpoints and their training budget, the DFT subset of every row and the protocol as run.
The analysis package may not read model cards or configurations (it imports neither
``generators`` nor ``flows``), so the flow collects them here and puts plain dicts into the
summary:

- :func:`describe_checkpoint`: a model's checkpoint (registered name, file, trained by the flow)
  with its model card's training budget and the paper configuration's scale;
- :func:`dft_subset_record`: how many of a row's structures were DFT candidates, eligible under
  the cell-size cap, and chosen;
- :func:`protocol_record`: the relaxers' resolved protocol fields, the DFT code and its
  pseudopotentials.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PAPER_CONFIG = "paper"
"""Name of the configuration with the published hyperparameters (``generators/configs``)."""


def _widths(config: Mapping[str, Any]) -> dict[str, Any]:
    model = config.get("model") or {}
    return {k: model[k] for k in ("latent_dim", "hidden_dim") if model.get(k) is not None}


def paper_scale(model: str, dataset: str, card_training: Mapping[str, Any] | None = None) -> dict:
    """The paper's training scale of ``model`` on ``dataset``, for contrast with a checkpoint.

    Parameters
    ----------
    model, dataset
        Generator and dataset names.
    card_training
        A model card's ``training``; its ``paper_scale`` dict, when present, is taken as given.

    Returns
    -------
    dict
        ``max_epochs``, ``batch_size``, ``early_stopping_patience``, ``latent_dim``,
        ``hidden_dim`` (those known) and ``source``; empty when neither the card nor a
        ``paper`` configuration of the model has them.
    """
    given = (card_training or {}).get("paper_scale")
    if isinstance(given, Mapping) and given:
        return {"source": "the model card", **given}
    from generators.configs import load_config

    try:
        config = load_config(model, PAPER_CONFIG, dataset)
    except Exception:  # no paper configuration of this model (or of this dataset)
        return {}
    train = config.get("train") or {}
    out: dict[str, Any] = {
        k: train[k]
        for k in ("max_epochs", "batch_size", "early_stopping_patience")
        if train.get(k) is not None
    }
    out.update(_widths(config))
    if out:
        out["source"] = "the `paper` configuration: the published hyperparameters"
    return out


def _card_for(checkpoint: str) -> Any:
    """The model card a checkpoint names or whose shipped file it is, else ``None``."""
    from generators.model_zoo import get_card, list_models

    path = Path(checkpoint)
    if path.is_file():
        resolved = path.resolve()
        for card in list_models():
            local = card.local_file()
            if local is not None and local.resolve() == resolved:
                return card
        return None
    try:
        return get_card(checkpoint)
    except KeyError:
        return None


def _trained_epochs(checkpoint: str) -> int | None:
    """The last epoch in ``metrics.jsonl`` beside a checkpoint trained by the flow."""
    log = Path(checkpoint).parent / "metrics.jsonl"
    try:
        epochs = [json.loads(line).get("epoch") for line in log.read_text().splitlines() if line]
    except (OSError, ValueError):
        return None
    epochs = [e for e in epochs if isinstance(e, int)]
    return max(epochs) if epochs else None


def _run_config(checkpoint: str) -> dict[str, Any] | None:
    """The resolved configuration (``config.json``) of the run a checkpoint was trained in."""
    try:
        config = json.loads((Path(checkpoint).parent / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def describe_checkpoint(
    model: str,
    checkpoint: str | None,
    dataset: str,
    given: bool,
    train: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A model's checkpoint for the report: where it came from and how it was trained.

    Parameters
    ----------
    model
        Generator name.
    checkpoint
        The checkpoint path or registered name the model sampled from (``None``: the smoke
        model, which needs none).
    dataset
        Dataset of the experiment (the paper configuration's section).
    given
        ``True`` when the user gave the checkpoint, ``False`` when the flow trained it.
    train
        The flow's training parameters (``config``, ``max_minutes``, ``overrides``).

    Returns
    -------
    dict
        ``source`` (``"registered"``, ``"file"``, ``"trained"`` or ``"none"``), ``checkpoint``,
        ``training`` (registered: the card's ``config_name``, ``epochs``, ``cpu_minutes``,
        ``wall_minutes``, ``device`` and network widths; trained: ``config_name``,
        ``overrides``, the ``max_minutes`` of the run's ``config.json`` (the budget the
        checkpoint was trained with, which can differ from this run's when a finished
        checkpoint is reused) and the ``epochs`` of its ``metrics.jsonl``),
        ``paper_scale`` (:func:`paper_scale`) and ``note``.
    """
    from flows.smoke_model import SMOKE_MODEL

    if checkpoint is None:
        note = (
            "the smoke-test pseudo-model: rattled dataset structures, not a trained generator"
            if model == SMOKE_MODEL
            else "none recorded"
        )
        return {
            "source": "none",
            "checkpoint": None,
            "training": {},
            "paper_scale": {},
            "note": note,
        }
    if given:
        card = _card_for(checkpoint)
        if card is None:
            return {"source": "file", "checkpoint": checkpoint, "training": {}, "paper_scale": {}}
        t = card.training or {}
        training = {
            k: t[k]
            for k in (
                "config_name",
                "epochs",
                "cpu_minutes",
                "cpu_minutes_recorded",
                "epoch_minutes",
                "wall_minutes",
                "device",
            )
            if t.get(k) is not None
        }
        training.update(_widths(t.get("config") or {}))
        return {
            "source": "registered",
            "checkpoint": card.name,
            "card": {"model": card.model, "dataset": card.dataset, "task": card.task},
            "training": training,
            "paper_scale": paper_scale(card.model, card.dataset, t),
        }
    train = train or {}
    training = {
        "config_name": train.get("config"),
        "max_minutes": train.get("max_minutes"),
        "overrides": train.get("overrides"),
    }
    epochs = _trained_epochs(checkpoint)
    if epochs is not None:
        training["epochs"] = epochs
    config = _run_config(checkpoint)
    if config is not None:  # the budget the checkpoint was trained with, not this run's
        training["max_minutes"] = (config.get("train") or {}).get("max_minutes")
        training.update(_widths(config))
    else:
        try:
            from generators.configs import load_config

            config = load_config(model, str(train.get("config")), dataset, train.get("overrides"))
            training.update(_widths(config))
        except Exception:  # an unknown configuration leaves the widths out
            pass
    return {
        "source": "trained",
        "checkpoint": checkpoint,
        "training": training,
        "paper_scale": paper_scale(model, dataset),
    }


def dft_subset_record(
    candidates: Sequence[Mapping[str, Any]], chosen: Sequence[str], max_sites: int | None
) -> dict[str, int]:
    """How one row's DFT subset was drawn: candidates, eligible under the cap, chosen.

    Parameters
    ----------
    candidates
        :func:`analysis.stability_experiment.dft_candidates` of the row.
    chosen
        The chosen structure ids.
    max_sites
        The cell-size cap (``None``: none).

    Returns
    -------
    dict
        ``n_candidates``, ``n_eligible`` (at most ``max_sites`` atoms) and ``n_chosen``.
    """
    eligible = [
        c for c in candidates if max_sites is None or int(c.get("n_sites") or 0) <= max_sites
    ]
    return {"n_candidates": len(candidates), "n_eligible": len(eligible), "n_chosen": len(chosen)}


def _protocol_of(settings: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, Any]:
    """The resolved protocol dict inside a relaxer's settings (two-stage: its DFT stage)."""
    if not settings:
        return None, None
    final = settings.get("final") if isinstance(settings.get("final"), Mapping) else settings
    return final.get("protocol"), final


def protocol_record(
    spec: Any, ff_info: Mapping[str, Any] | None, dft_info: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The protocol as the relaxers ran it, for the report's Limitations section.

    Parameters
    ----------
    spec
        The run's protocol specification (:func:`flows.protocol_settings.protocol_spec`).
    ff_info, dft_info
        :func:`flows.tasks.describe_relaxer` of the force field and of the DFT relaxer
        (``None``: no DFT).

    Returns
    -------
    dict
        ``name`` (the dataset whose defaults apply), ``source`` (the convergence file of the
        k-spacing and cutoffs, when the DFT stage is pw.x and uses its values; VASP takes its
        input set's k-points and ENCUT), ``force_field`` and ``dft``
        (resolved protocol fields), ``dft_code`` and ``pseudopotentials``.
    """
    from relax.protocol import dataset_protocol, resolve_protocol

    ff_protocol, _ = _protocol_of((ff_info or {}).get("settings"))
    dft_protocol, final = _protocol_of((dft_info or {}).get("settings"))
    out: dict[str, Any] = {
        "name": None,
        "source": None,
        "force_field": ff_protocol,
        "dft": dft_protocol,
        "dft_code": (final or {}).get("code"),
        "pseudopotentials": (final or {}).get("pseudopotentials"),
    }
    try:
        resolved = resolve_protocol(spec)
        out["name"] = resolved.name
        defaults = dataset_protocol(resolved.name) if resolved.name != "default" else None
    except ValueError:
        return out
    uses_cutoffs = "pw.x" in str(out["dft_code"] or "")  # VASP takes its input set's
    if defaults is not None and defaults.source and dft_protocol and uses_cutoffs:
        same = all(
            dft_protocol.get(k) == getattr(defaults, k) for k in ("kspacing", "ecutwfc", "ecutrho")
        )
        out["source"] = defaults.source if same else None
    return out
