"""An MP-20-style dataset from the Materials Project (``mp_api.client.MPRester``).

The query follows the MP-20 definition (metrics.md §7): at most 20 sites, energy above hull
≤ 0.08 eV/atom, formation energy < 2 eV/atom, ICSD-sourced (``theoretical=False``), with
configurable element exclusions and an optional chemical system or element list. Results are
written in the mp_20 CSV schema (``,material_id,formation_energy_per_atom,band_gap,
pretty_formula,e_above_hull,elements,cif,spacegroup.number``), split 60/20/20 by a seeded hash
of the material id, and the query is saved beside them as ``query.json``.

The API key comes from ``MP_API_KEY`` (or the ``api_key`` argument). It is never written to a
file, a log record or an error message: every message that leaves this module is redacted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field, field_validator, model_validator
from pymatgen.core import Element, Structure
from pymatgen.io.cif import CifWriter

log = logging.getLogger(__name__)

NOBLE_GASES = ("He", "Ne", "Ar", "Kr", "Xe", "Rn")
RADIOACTIVE = (
    "Tc", "Pm", "Po", "At", "Fr", "Ra", "Ac", "Pa", "Np", "Pu", "Am", "Cm", "Bk", "Cf",
    "Es", "Fm", "Md", "No", "Lr",
)  # fmt: skip
MP20_COLUMNS = (
    "material_id",
    "formation_energy_per_atom",
    "band_gap",
    "pretty_formula",
    "e_above_hull",
    "elements",
    "cif",
    "spacegroup.number",
)
SUMMARY_FIELDS = [
    "material_id",
    "structure",
    "formation_energy_per_atom",
    "band_gap",
    "formula_pretty",
    "energy_above_hull",
    "elements",
    "symmetry",
    "nsites",
]


class MPError(RuntimeError):
    """Base class of the Materials Project errors raised here (messages are key-free)."""


class MPAPIKeyMissingError(MPError):
    """No API key: neither ``MP_API_KEY`` nor an ``api_key`` argument."""


class MPAuthError(MPError):
    """The service rejected the key (HTTP 401/403) or the key is malformed."""


class MPRateLimitError(MPError):
    """HTTP 429 persisted through the retries."""


class MPServerError(MPError):
    """HTTP 5xx persisted through the retries."""


class MPConnectionError(MPError):
    """The service could not be reached or answered something unreadable."""


class MPQueryCriteria(BaseModel):
    """MP-20-style query criteria.

    Attributes
    ----------
    max_sites, min_sites
        Site-count range of the cell (MP-20: at most 20).
    energy_above_hull_max
        Upper bound of the energy above the convex hull, eV/atom (MP-20: 0.08).
    formation_energy_max
        Strict upper bound of the formation energy, eV/atom (MP-20: < 2).
    exclude_elements
        Elements whose compounds are skipped (default: noble gases and radioactive elements;
        our choice, not a published MP-20 list).
    elements
        Only materials containing all of these elements (optional).
    chemsys
        Only this chemical system, e.g. ``"Li-Fe-O"`` (optional).
    experimental_only
        Only ICSD-sourced materials (``theoretical=False``), as MP-20.
    split_seed
        Seed of the material-id hash that assigns splits.
    split_fractions
        Train/val/test fractions (60/20/20 as CDVAE).
    """

    max_sites: int = Field(20, ge=1)
    min_sites: int = Field(1, ge=1)
    energy_above_hull_max: float = Field(0.08, ge=0.0)
    formation_energy_max: float = 2.0
    exclude_elements: list[str] = Field(default_factory=lambda: [*NOBLE_GASES, *RADIOACTIVE])
    elements: list[str] | None = None
    chemsys: str | None = None
    experimental_only: bool = True
    split_seed: int = 42
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)

    @field_validator("exclude_elements", "elements")
    @classmethod
    def _known_elements(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for symbol in value:
            try:
                Element(symbol)
            except ValueError:
                raise ValueError(f"unknown element symbol {symbol!r}") from None
        return list(value)

    @field_validator("chemsys")
    @classmethod
    def _known_chemsys(cls, value: str | None) -> str | None:
        if value:
            cls._known_elements(value.split("-"))
        return value or None

    @model_validator(mode="after")
    def _consistent(self) -> MPQueryCriteria:
        if self.min_sites > self.max_sites:
            raise ValueError(f"min_sites {self.min_sites} > max_sites {self.max_sites}")
        fractions = self.split_fractions
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
            raise ValueError(f"split_fractions must be >= 0 and sum to 1, got {fractions}")
        return self

    def search_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments of ``MPRester.materials.summary.search``."""
        kwargs: dict[str, Any] = {
            "num_sites": (self.min_sites, self.max_sites),
            "energy_above_hull": (0.0, self.energy_above_hull_max),
            "formation_energy": (None, self.formation_energy_max),
            "deprecated": False,
        }
        if self.exclude_elements:
            kwargs["exclude_elements"] = list(self.exclude_elements)
        if self.elements:
            kwargs["elements"] = list(self.elements)
        if self.chemsys:
            kwargs["chemsys"] = self.chemsys
        if self.experimental_only:
            kwargs["theoretical"] = False
        return kwargs

    def accepts(self, doc: dict[str, Any], structure: Structure) -> str | None:
        """Check a returned document client-side; return the reason it fails, else ``None``."""
        n = len(structure)
        if not self.min_sites <= n <= self.max_sites:
            return f"{n} sites outside [{self.min_sites}, {self.max_sites}]"
        e_hull = _float(doc.get("energy_above_hull"))
        if not e_hull <= self.energy_above_hull_max:
            return f"energy_above_hull {e_hull} > {self.energy_above_hull_max}"
        e_form = _float(doc.get("formation_energy_per_atom"))
        if not e_form < self.formation_energy_max:
            return f"formation_energy_per_atom {e_form} >= {self.formation_energy_max}"
        symbols = {el.symbol for el in structure.composition.elements}
        banned = symbols & set(self.exclude_elements)
        if banned:
            return f"contains excluded element(s) {sorted(banned)}"
        return None


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def split_of(material_ids: list[str], seed: int, fractions: tuple[float, float, float]) -> dict:
    """Assign material ids to train/val/test deterministically.

    Ids are ordered by ``sha256(f"{seed}:{material_id}")``; the first ``round(f_train * n)``
    go to train, the next ``round(f_val * n)`` to val, the rest to test.

    Parameters
    ----------
    material_ids
        Unique ids.
    seed
        Hash seed.
    fractions
        Train/val/test fractions.

    Returns
    -------
    dict[str, str]
        ``material_id -> split``.
    """
    order = sorted(material_ids, key=lambda m: hashlib.sha256(f"{seed}:{m}".encode()).hexdigest())
    n = len(order)
    n_train = round(fractions[0] * n)
    n_val = min(n - n_train, round(fractions[1] * n))
    out: dict[str, str] = {}
    for i, mid in enumerate(order):
        out[mid] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


def redact(text: str, secret: str | None) -> str:
    """Replace every occurrence of ``secret`` in ``text`` by ``***``."""
    return text.replace(secret, "***") if secret else text


def resolve_api_key(api_key: str | None = None) -> str:
    """Return the API key from the argument or ``MP_API_KEY``.

    Raises
    ------
    MPAPIKeyMissingError
        When neither is set.
    """
    key = (api_key or os.environ.get("MP_API_KEY") or "").strip()
    if not key:
        raise MPAPIKeyMissingError(
            "No Materials Project API key: set the MP_API_KEY environment variable "
            "(get a key at https://next-gen.materialsproject.org/api)."
        )
    return key


_STATUS_RE = re.compile(r"status code (\d{3})|too many (\d{3}) error responses")


def classify_error(exc: BaseException, key: str) -> MPError:
    """Map an mp_api / requests exception to one of our error types, with a redacted message.

    Parameters
    ----------
    exc
        The exception raised by the client.
    key
        The API key (redacted from the message).

    Returns
    -------
    MPError
        ``MPAuthError`` (401/403 or malformed key), ``MPRateLimitError`` (429),
        ``MPServerError`` (5xx) or ``MPConnectionError`` (anything else).
    """
    text = redact(str(exc), key)
    match = _STATUS_RE.search(text)
    status = int(match.group(1) or match.group(2)) if match else None
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if status in (401, 403) or "Valid API keys are 32 characters" in text:
        return MPAuthError(
            f"Materials Project rejected the API key (HTTP {status or 'n/a'}): check MP_API_KEY. "
            f"Detail: {first_line}"
        )
    if status == 429:
        return MPRateLimitError(
            f"Materials Project rate limit (HTTP 429) persisted through the retries: "
            f"wait and run again, or narrow the query. Detail: {first_line}"
        )
    if status is not None and 500 <= status < 600:
        return MPServerError(
            f"Materials Project server error (HTTP {status}) persisted through the retries: "
            f"try again later. Detail: {first_line}"
        )
    return MPConnectionError(f"Materials Project query failed: {type(exc).__name__}: {first_line}")


def query_summary(
    criteria: MPQueryCriteria,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    retries: int = 4,
    backoff_s: float = 2.0,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], str]:
    """Run the summary search through ``MPRester``, retrying 429/5xx with exponential backoff.

    Parameters
    ----------
    criteria
        The query.
    api_key
        Key (default ``MP_API_KEY``).
    endpoint
        Service address (default: the public Materials Project API).
    retries
        Attempts for 429 and 5xx (the client also retries 429/502/504 itself).
    backoff_s
        First delay; doubles after each failed attempt.
    progress
        Show the client's progress bar.

    Returns
    -------
    tuple[list[dict], str]
        The summary documents (plain dicts) and the database version reported by the service.

    Raises
    ------
    MPError
        A subclass naming the problem; the message never contains the key.
    """
    key = resolve_api_key(api_key)
    from mp_api.client import MPRester

    for attempt in range(1, retries + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with MPRester(
                    api_key=key,
                    endpoint=endpoint,
                    use_document_model=False,
                    mute_progress_bars=not progress,
                ) as mpr:
                    docs = mpr.materials.summary.search(
                        **criteria.search_kwargs(), fields=list(SUMMARY_FIELDS)
                    )
                    return list(docs), str(mpr.db_version or "")
        except Exception as exc:  # mp_api raises MPRestError, requests errors, JSON errors
            error = classify_error(exc, key)
        retryable = isinstance(error, MPRateLimitError | MPServerError | MPConnectionError)
        if not retryable or attempt == retries:
            raise error from None
        delay = backoff_s * 2 ** (attempt - 1)
        log.warning("Materials Project attempt %d/%d failed: %s; retrying in %.1f s",
                    attempt, retries, error, delay)  # fmt: skip
        time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class MPFetchResult:
    """Outcome of :func:`fetch_mp_dataset`.

    Attributes
    ----------
    out_dir
        Folder holding ``train.csv``, ``val.csv``, ``test.csv`` and ``query.json``.
    counts
        Rows per split.
    n_documents
        Documents the service returned.
    rejected
        ``(material_id, reason)`` of documents not written (bad structure, fails criteria).
    """

    out_dir: Path
    counts: dict[str, int]
    n_documents: int
    rejected: list[tuple[str, str]] = field(default_factory=list)


def _row_from_doc(doc: dict[str, Any]) -> tuple[dict[str, Any], Structure]:
    raw = doc.get("structure")
    if raw is None:
        raise ValueError("document has no structure")
    structure = raw if isinstance(raw, Structure) else Structure.from_dict(raw)
    symmetry = doc.get("symmetry") or {}
    number = symmetry.get("number") if isinstance(symmetry, dict) else None
    elements = sorted({str(getattr(e, "symbol", e)) for e in doc.get("elements") or []})
    if not elements:
        elements = sorted({el.symbol for el in structure.composition.elements})
    row = {
        "material_id": str(doc["material_id"]),
        "formation_energy_per_atom": _float(doc.get("formation_energy_per_atom")),
        "band_gap": _float(doc.get("band_gap")),
        "pretty_formula": doc.get("formula_pretty") or structure.composition.reduced_formula,
        "e_above_hull": _float(doc.get("energy_above_hull")),
        "elements": str(elements),
        "cif": str(CifWriter(structure)),
        "spacegroup.number": int(number) if number is not None else -1,
    }
    return row, structure


def fetch_mp_dataset(
    out_dir: str | os.PathLike[str],
    criteria: MPQueryCriteria | None = None,
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    retries: int = 4,
    backoff_s: float = 2.0,
    progress: bool = True,
) -> MPFetchResult:
    """Query the Materials Project and write an MP-20-style dataset.

    Parameters
    ----------
    out_dir
        Destination folder (created).
    criteria
        The query (default: MP-20 criteria).
    api_key, endpoint, retries, backoff_s, progress
        See :func:`query_summary`.

    Returns
    -------
    MPFetchResult
        Counts and rejected documents. ``query.json`` records the criteria, the endpoint,
        the database version, client versions, the split rule and the rejected ids.
    """
    criteria = criteria or MPQueryCriteria()
    key = resolve_api_key(api_key)
    docs, db_version = query_summary(
        criteria, api_key=key, endpoint=endpoint, retries=retries, backoff_s=backoff_s,
        progress=progress,
    )  # fmt: skip
    rows: dict[str, dict[str, Any]] = {}
    rejected: list[tuple[str, str]] = []
    for doc in docs:
        mid = str(doc.get("material_id", "?"))
        try:
            row, structure = _row_from_doc(doc)
        except Exception as exc:
            rejected.append((mid, redact(f"{type(exc).__name__}: {exc}", key)))
            continue
        reason = criteria.accepts(doc, structure)
        if reason is not None:
            rejected.append((mid, reason))
        elif mid in rows:
            rejected.append((mid, "duplicate material_id"))
        else:
            rows[mid] = row
    for mid, reason in rejected:
        log.warning("Materials Project document %s not written: %s", mid, reason)

    assignment = split_of(list(rows), criteria.split_seed, criteria.split_fractions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    ordered = sorted(rows)
    index = {mid: i for i, mid in enumerate(ordered)}
    for split in ("train", "val", "test"):
        ids = [m for m in ordered if assignment[m] == split]
        frame = pd.DataFrame([rows[m] for m in ids], columns=list(MP20_COLUMNS))
        frame.index = [index[m] for m in ids]
        frame.to_csv(out / f"{split}.csv")
        counts[split] = len(ids)

    from mp_api.client import __version__ as mp_api_version

    record = {
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "endpoint": endpoint or "https://api.materialsproject.org/",
        "database_version": db_version,
        "client": f"mp-api {mp_api_version}",
        "criteria": criteria.model_dump(mode="json"),
        "search_kwargs": criteria.search_kwargs(),
        "split_rule": (
            f"ids ordered by sha256('{criteria.split_seed}:' + material_id); first "
            f"round({criteria.split_fractions[0]} n) train, next "
            f"round({criteria.split_fractions[1]} n) val, rest test"
        ),
        "counts": counts,
        "n_documents": len(docs),
        "rejected": [{"material_id": m, "reason": r} for m, r in rejected],
        "columns": ["", *MP20_COLUMNS],
    }
    (out / "query.json").write_text(redact(json.dumps(record, indent=2), key) + "\n")
    return MPFetchResult(out, counts, len(docs), rejected)
