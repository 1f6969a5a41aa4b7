"""The one result type of every metric: a value that carries its own definition.

Each metric function in :mod:`analysis` returns :class:`MetricResult` objects. The definition
dict holds everything needed to interpret or reproduce the number (tolerances, cutoffs, sample
counts, dataset, SMACT oxidation-state set, protocol) and the counts dict holds the integer
tallies behind it (how many were valid, matched, failed...). Per-item problems (a malformed CIF,
a NaN coordinate) are listed in ``errors`` with the item id and reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FORMAT = "dftloop-metrics/1"
"""Format tag written at the top of a ``metrics.json`` file."""


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths, tuples and non-finite floats to plain JSON values.

    Parameters
    ----------
    obj
        Any nested structure of dicts, lists, numbers and strings.

    Returns
    -------
    Any
        The same structure with numpy types converted and NaN/inf written as ``None``.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


@dataclass
class MetricResult:
    """A metric value together with its definition and the counts behind it.

    Parameters
    ----------
    name
        Short identifier, e.g. ``"match_rate"`` or ``"cov_recall"``.
    value
        The number (a fraction in [0, 1] for rates), or ``None`` when it is undefined
        (e.g. an RMSE with no matched pairs).
    definition
        How the number was computed: tolerances, cutoffs, protocol, dataset, sample sizes.
    counts
        Integer tallies behind the value (``n_total``, ``n_valid``, ``n_matched``...).
    description
        One human-readable sentence saying what the metric measures.
    errors
        Per-item problems, each ``{"id": ..., "reason": ...}``.
    """

    name: str
    value: float | None
    definition: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    description: str = ""
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of this result.

        Returns
        -------
        dict
            Keys ``name``, ``value``, ``description``, ``definition``, ``counts``, ``errors``.
        """
        return to_jsonable(
            {
                "name": self.name,
                "value": self.value,
                "description": self.description,
                "definition": self.definition,
                "counts": self.counts,
                "errors": self.errors,
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise to JSON text.

        Parameters
        ----------
        indent
            Indentation passed to :func:`json.dumps`.

        Returns
        -------
        str
            The JSON document of :meth:`to_dict`.
        """
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricResult:
        """Rebuild a result from :meth:`to_dict` output.

        Parameters
        ----------
        data
            A dict as written by :meth:`to_dict`.

        Returns
        -------
        MetricResult
            The equivalent result.
        """
        return cls(
            name=str(data["name"]),
            value=data.get("value"),
            definition=dict(data.get("definition", {})),
            counts=dict(data.get("counts", {})),
            description=str(data.get("description", "")),
            errors=list(data.get("errors", [])),
        )


def write_metrics_json(
    results: Mapping[str, MetricResult],
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a set of metric results to ``metrics.json``.

    Parameters
    ----------
    results
        Metric key -> result.
    path
        Output file; parent directories are created.
    metadata
        Extra top-level information (dataset, sample directory, timings...).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": METRICS_FORMAT,
        "metadata": to_jsonable(dict(metadata or {})),
        "metrics": {key: result.to_dict() for key, result in results.items()},
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_metrics_json(path: str | Path) -> dict[str, MetricResult]:
    """Read a ``metrics.json`` written by :func:`write_metrics_json`.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    dict[str, MetricResult]
        Metric key -> result.
    """
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != METRICS_FORMAT:
        raise ValueError(f"{path}: not a {METRICS_FORMAT} file (format={doc.get('format')!r})")
    return {key: MetricResult.from_dict(value) for key, value in doc["metrics"].items()}
