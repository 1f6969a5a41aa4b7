"""The dftloop result store: a jobflow ``JobStore`` holding samples, relaxations and analyses.

Default: an embedded MontyStore (montydb, SQLite storage) under the project directory
``DFTLOOP_HOME`` (default ``./dftloop-runs``) at ``<home>/store``, with a ``data`` additional store
for large blobs (forces, per-stage results). Set ``JOBFLOW_CONFIG_FILE`` to a jobflow settings file
(for example ``deploy/jobflow.yaml``, a MongoStore) to use another store; jobflow's own settings
loader reads it. The store is built by :mod:`dftloop_io.job_store`, which the VASP relaxer uses too.

Documents live in the ``docs_store`` with a ``kind`` field:

``sample``
    One generated structure. ``doc_id = "sample:<sample set>:<sample_id>"``; the *sample set* is
    a hash of the provenance (model, checkpoint hash, dataset, config, ...).
``relaxation``
    One relaxation. ``doc_id = "relaxation:<structure hash>:<relaxer settings hash>"``, so a
    structure relaxed once with given settings is never relaxed again
    (:meth:`ResultStore.pending_relaxations`).
``analysis``
    A sample compared with its relaxed ground state
    (``doc_id = "analysis:<structure hash>:<settings hash>"``).

Each document carries ``provenance`` (model, checkpoint hash, dataset, config, code version,
relaxer name + settings) and ``created_at``. Writes go in batches: montydb's per-document upsert
costs ~30 ms, so new documents are inserted with one ``insert_many`` per batch.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from jobflow import JobStore
from maggma.core import Store
from monty.json import jsanitize

from dftloop_io.job_store import (
    default_job_store,  # noqa: F401 - part of this module's interface
    dftloop_home,
    load_job_store,
)
from flows.hashing import dict_hash, structure_hash

Kind = Literal["sample", "relaxation", "analysis"]
KINDS: tuple[str, ...] = ("sample", "relaxation", "analysis")

BATCH_SIZE = 500
"""Documents per write / per ``$in`` query."""

DONE_STATUSES = frozenset({"ok", "not_converged", "invalid_input", "failed"})
"""Relaxation statuses that count as finished; ``unavailable`` (the code was missing) and
``interrupted`` (the DFT code was stopped from outside) are relaxed again by the next run."""

RELAXATION_BLOB_FIELDS = ("forces", "stages")
"""Relaxation fields moved to the ``data`` additional store."""

BLOB_FIELDS: dict[str, tuple[str, ...]] = {
    "relaxation": RELAXATION_BLOB_FIELDS,
    "property_optimization": ("rows",),
}
"""Fields of each document kind kept in the ``data`` additional store."""


def code_version() -> str:
    """Return the code version: ``git describe`` of the checkout, else the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"dftloop {version('dftloop')}"
        except PackageNotFoundError:
            return "unknown"


@dataclass
class Provenance:
    """Where a document comes from.

    Attributes
    ----------
    model
        Generator name (``"diffcsp"``, ...; ``"dataset"`` for the smoke-test pseudo-model).
    checkpoint_sha256
        sha256 of the checkpoint file (``None`` when none was used).
    dataset
        Dataset name.
    config
        The resolved configuration (model config, sampling parameters).
    code_version
        See :func:`code_version`.
    relaxer
        Relaxer name (relaxation and analysis documents).
    relaxer_settings
        The relaxer's settings dict.
    flow_run_id
        The Prefect flow run that wrote the document, if any.
    extra
        Anything else worth recording.
    """

    model: str | None = None
    checkpoint_sha256: str | None = None
    dataset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    code_version: str = field(default_factory=code_version)
    relaxer: str | None = None
    relaxer_settings: dict[str, Any] | None = None
    flow_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the provenance as a JSON-serialisable dict."""
        return jsanitize(asdict(self), strict=False)

    def sample_set(self) -> str:
        """Return a short hash of the fields that define a set of samples.

        A ``sample_dir`` in the config enters by its name only (``<model>-<dataset>-<hash>``,
        itself a hash of what was sampled), so the same samples in another project directory
        or on another machine keep their document ids.
        """
        config = dict(self.config)
        if config.get("sample_dir"):
            config["sample_dir"] = Path(str(config["sample_dir"])).name
        key = {
            "model": self.model,
            "checkpoint_sha256": self.checkpoint_sha256,
            "dataset": self.dataset,
            "config": config,
        }
        return dict_hash(key)[:16]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _chunks(items: Sequence[Any], size: int = BATCH_SIZE) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def relaxation_doc_id(struct_hash: str, settings_hash: str) -> str:
    """Return the ``doc_id`` of the relaxation of one structure with one relaxer setting."""
    return f"relaxation:{struct_hash}:{settings_hash}"


def analysis_doc_id(struct_hash: str, settings_hash: str) -> str:
    """Return the ``doc_id`` of the analysis of one structure against its relaxation."""
    return f"analysis:{struct_hash}:{settings_hash}"


def upsert_many(store: Store, docs: Sequence[dict[str, Any]], key: str) -> int:
    """Insert or replace ``docs`` (unique by ``key``) in batches.

    Each batch is one ``insert_many``; the documents of the batch whose key already exists are
    removed first by one ``delete_many`` (a rerun rewrites its samples and analyses: replaced one
    at a time, each a scan of the collection in montydb, 256 analyses took 15.2 s in a store of
    768 documents, against 1.7 s this way). A crash between the two loses only old versions of
    documents that were being replaced. Stores without a ``_collection`` (non-Mongo-like maggma
    stores) fall back to ``Store.update``.

    Parameters
    ----------
    store
        A connected maggma store.
    docs
        Documents, each with ``key`` set.
    key
        The unique field.

    Returns
    -------
    int
        Number of documents written.
    """
    docs = [jsanitize(d, allow_bson=True) for d in docs]
    collection = getattr(store, "_collection", None)
    if collection is None or not hasattr(collection, "insert_many"):
        for batch in _chunks(docs):
            store.update(list(batch), key=key)
        return len(docs)
    for batch in _chunks(docs):
        ids = [d[key] for d in batch]
        existing = sorted({d[key] for d in collection.find({key: {"$in": ids}}, {key: 1})})
        if existing:
            collection.delete_many({key: {"$in": existing}})
        if batch:
            collection.insert_many([dict(d) for d in batch])
    return len(docs)


class ResultStore:
    """Samples, relaxations and analyses in a jobflow ``JobStore``.

    Parameters
    ----------
    job_store
        The store to use; default :func:`load_job_store` (``JOBFLOW_CONFIG_FILE`` or the
        embedded MontyStore under ``home``).
    home
        Project directory for the default store.

    Examples
    --------
    >>> with ResultStore(home=tmp) as store:  # doctest: +SKIP
    ...     store.put_samples(records, Provenance(model="diffcsp", dataset="perov_5"))
    """

    def __init__(
        self, job_store: JobStore | None = None, *, home: str | os.PathLike[str] | None = None
    ) -> None:
        self.home = dftloop_home(home) if job_store is None else None
        self.job_store = job_store if job_store is not None else load_job_store(home)
        self._connected = False

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> ResultStore:
        """Connect the docs and blob stores (idempotent)."""
        if not self._connected:
            self.job_store.connect()
            self._connected = True
        return self

    def close(self) -> None:
        """Close the connections."""
        if self._connected:
            self.job_store.close()
            self._connected = False

    def __enter__(self) -> ResultStore:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def docs(self) -> Store:
        """The maggma store of the documents."""
        return self.job_store.docs_store

    @property
    def blobs(self) -> Store:
        """The maggma store of large blobs (the ``data`` additional store)."""
        return self.job_store.additional_stores["data"]

    def describe(self) -> dict[str, Any]:
        """Return where the documents are (store type, path or host, collections, counts)."""
        info: dict[str, Any] = {}
        for role, store in (("docs", self.docs), ("data", self.blobs)):
            entry = {"type": type(store).__name__, "collection": store.collection_name}
            for attr in ("database_path", "database_name", "host", "port", "database"):
                value = getattr(store, attr, None)
                if value is not None:
                    entry[attr] = str(value)
            info[role] = entry
        if self._connected:
            info["counts"] = {kind: self.count(kind) for kind in KINDS}
        return info

    # -- generic -------------------------------------------------------------------------
    def _put(
        self, kind: str, docs: list[dict[str, Any]], blob_fields: Sequence[str] = ()
    ) -> list[str]:
        self.connect()
        blobs: list[dict[str, Any]] = []
        for doc in docs:
            doc["kind"] = kind
            doc.setdefault("created_at", _now())
            for name in blob_fields:
                value = doc.get(name)
                if value is None or value == []:
                    continue
                blob_uuid = str(uuid.uuid4())
                blobs.append(
                    {"blob_uuid": blob_uuid, "doc_id": doc["doc_id"], "field": name, "data": value}
                )
                doc[name] = {"@class": "", "@module": "", "blob_uuid": blob_uuid, "store": "data"}
        if blobs:  # blobs first: a document never points at a blob that is not written yet
            upsert_many(self.blobs, blobs, "blob_uuid")
        upsert_many(self.docs, docs, "doc_id")
        return [d["doc_id"] for d in docs]

    def query(
        self,
        kind: Kind | str,
        criteria: dict[str, Any] | None = None,
        *,
        properties: list[str] | None = None,
        load_blobs: bool = False,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        """Return documents of one kind.

        Parameters
        ----------
        kind
            ``"sample"``, ``"relaxation"`` or ``"analysis"``.
        criteria
            Further Mongo-style criteria.
        properties
            Fields to return (all by default).
        load_blobs
            Replace blob references with their data from the ``data`` store.
        limit
            Maximum number of documents (0: all).

        Returns
        -------
        list of dict
            Without Mongo's ``_id``.
        """
        self.connect()
        crit = {"kind": kind, **(criteria or {})}
        out = []
        for doc in self.docs.query(criteria=crit, properties=properties, limit=limit):
            doc.pop("_id", None)
            if load_blobs:
                self._load_blobs(doc)
            out.append(doc)
        return out

    def _load_blobs(self, doc: dict[str, Any]) -> None:
        for name, value in list(doc.items()):
            if isinstance(value, dict) and value.get("store") == "data" and "blob_uuid" in value:
                blob = self.blobs.query_one({"blob_uuid": value["blob_uuid"]})
                doc[name] = None if blob is None else blob["data"]

    def count(self, kind: Kind | str, criteria: dict[str, Any] | None = None) -> int:
        """Return the number of documents of one kind matching ``criteria``."""
        self.connect()
        return self.docs.count({"kind": kind, **(criteria or {})})

    def get_many(self, doc_ids: Sequence[str], **kwargs: Any) -> dict[str, dict[str, Any]]:
        """Return the documents with these ids (any kind), keyed by ``doc_id``."""
        self.connect()
        found: dict[str, dict[str, Any]] = {}
        for batch in _chunks(list(doc_ids)):
            for doc in self.docs.query({"doc_id": {"$in": list(batch)}}, **kwargs):
                doc.pop("_id", None)
                found[doc["doc_id"]] = doc
        return found

    # -- samples ---------------------------------------------------------------------------
    def put_samples(self, samples: Iterable[Any], provenance: Provenance) -> list[str]:
        """Store generated samples.

        Parameters
        ----------
        samples
            ``generators.sampler.SampleRecord`` objects or dicts with ``sample_id``,
            ``structure`` (a ``Structure``, its dict, or ``None``), optional ``target_id``,
            ``candidate`` and ``error``.
        provenance
            Model, checkpoint, dataset, config.

        Returns
        -------
        list of str
            The ``doc_id`` of each sample, in order.
        """
        from pymatgen.core import Structure

        prov = provenance.as_dict()
        sample_set = provenance.sample_set()
        docs = []
        for sample in samples:
            rec = sample if isinstance(sample, dict) else vars(sample)
            structure = rec.get("structure")
            if isinstance(structure, dict):
                structure = Structure.from_dict(structure)
            error = rec.get("error")
            s_hash = None
            if structure is not None:
                try:
                    s_hash = structure_hash(structure)
                except ValueError as exc:
                    error = error or f"{rec['sample_id']}: {exc}"
            docs.append(
                {
                    "doc_id": f"sample:{sample_set}:{rec['sample_id']}",
                    "sample_id": str(rec["sample_id"]),
                    "sample_set": sample_set,
                    "target_id": rec.get("target_id"),
                    "candidate": rec.get("candidate", 0),
                    "structure": structure.as_dict() if structure is not None else None,
                    "structure_hash": s_hash,
                    "formula": structure.composition.reduced_formula if structure else None,
                    "n_sites": len(structure) if structure is not None else None,
                    "error": error,
                    "provenance": prov,
                }
            )
        return self._put("sample", docs)

    # -- relaxations -----------------------------------------------------------------------
    def relaxation_status(self, struct_hashes: Sequence[str], settings_hash: str) -> dict[str, str]:
        """Return ``{structure hash: status}`` for those hashes already relaxed."""
        ids = {relaxation_doc_id(h, settings_hash): h for h in struct_hashes}
        found = self.get_many(list(ids), properties=["doc_id", "status"])
        return {ids[i]: d.get("status", "ok") for i, d in found.items()}

    def unfinished_hashes(
        self, struct_hashes: Sequence[str], settings_hash: str, *, retry_failed: bool = False
    ) -> set[str]:
        """The structure hashes without a finished relaxation with these settings.

        Finished: :data:`DONE_STATUSES`; with ``retry_failed``, ``failed`` counts as unfinished.
        """
        done = self.relaxation_status(struct_hashes, settings_hash)
        finished = DONE_STATUSES - ({"failed"} if retry_failed else set())
        return {h for h in struct_hashes if done.get(h) not in finished}

    def pending_relaxations(
        self,
        items: Sequence[tuple[str, Any]],
        settings_hash: str,
        *,
        retry_failed: bool = False,
    ) -> list[tuple[str, Any]]:
        """Return the items whose relaxation with these settings is not finished yet.

        Parameters
        ----------
        items
            ``(structure_id, Structure)`` pairs.
        settings_hash
            The relaxer's ``settings_hash``.
        retry_failed
            Also return structures whose relaxation ended with status ``failed``.

        Returns
        -------
        list of (str, Structure)
            In the given order, one per distinct structure hash; items whose structure cannot
            be hashed are returned too (the relaxer reports them as invalid).
        """
        hashes = []
        for sid, structure in items:
            try:
                hashes.append(structure_hash(structure))
            except (ValueError, AttributeError, TypeError):
                hashes.append(f"unhashable:{sid}")
        todo = self.unfinished_hashes(hashes, settings_hash, retry_failed=retry_failed)
        pending, seen = [], set()
        for (sid, structure), h in zip(items, hashes, strict=True):
            if h in seen or h not in todo:
                continue
            seen.add(h)
            pending.append((sid, structure))
        return pending

    def put_relaxations(
        self,
        entries: Iterable[tuple[str, Any]],
        provenance: Provenance,
    ) -> list[str]:
        """Store relaxation results keyed by (input structure hash, relaxer settings hash).

        Parameters
        ----------
        entries
            ``(input structure hash, RelaxResult or its dict)`` pairs.
        provenance
            With ``relaxer`` and ``relaxer_settings`` set.

        Returns
        -------
        list of str
            The ``doc_id`` of each relaxation.
        """
        prov = provenance.as_dict()
        docs = []
        for s_hash, result in entries:
            rec = result if isinstance(result, dict) else result.model_dump(mode="json")
            rec = dict(rec)
            settings_h = rec.get("settings_hash") or dict_hash(rec.get("settings") or {})
            rec["settings_hash"] = settings_h
            rec.update(
                {
                    "doc_id": relaxation_doc_id(s_hash, settings_h),
                    "structure_hash": s_hash,
                    "provenance": prov,
                }
            )
            docs.append(rec)
        return self._put("relaxation", docs, RELAXATION_BLOB_FIELDS)

    def get_relaxations(
        self, struct_hashes: Sequence[str], settings_hash: str, *, load_blobs: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Return ``{structure hash: relaxation document}`` for those that exist."""
        ids = {relaxation_doc_id(h, settings_hash): h for h in struct_hashes}
        found = self.get_many(list(ids))
        out = {}
        for doc_id, doc in found.items():
            if load_blobs:
                self._load_blobs(doc)
            out[ids[doc_id]] = doc
        return out

    # -- moving documents between stores --------------------------------------------------
    def export_documents(
        self, kind: Kind | str, criteria: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Return documents of one kind with their blobs inlined, sorted by ``doc_id``.

        The output is what :meth:`import_documents` takes, in this store or another one.

        Parameters
        ----------
        kind
            Document kind.
        criteria
            Further Mongo-style criteria.

        Returns
        -------
        list of dict
        """
        docs = self.query(kind, criteria, load_blobs=True)
        return sorted(docs, key=lambda d: d["doc_id"])

    def import_documents(self, docs: Iterable[dict[str, Any]]) -> dict[str, int]:
        """Add exported documents, never losing what this store holds.

        A document whose ``doc_id`` is new is added (its blob fields go to the ``data`` store
        again). One whose ``doc_id`` exists is kept as it is, except a relaxation that is not
        finished here (``interrupted``, ``unavailable``) while the imported one is finished
        (:data:`DONE_STATUSES`): that one is replaced.

        Parameters
        ----------
        docs
            Documents of :meth:`export_documents`, each with ``doc_id`` and ``kind``.

        Returns
        -------
        dict
            Counts ``added``, ``replaced`` and ``kept``.

        Raises
        ------
        ValueError
            When a document has no ``doc_id`` or no ``kind``.
        """
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            if not doc.get("doc_id") or not doc.get("kind"):
                raise ValueError(f"not a store document (no doc_id or kind): {str(doc)[:120]}")
            by_kind.setdefault(doc["kind"], []).append(dict(doc))
        counts = {"added": 0, "replaced": 0, "kept": 0}
        for kind, group in by_kind.items():
            existing = self.get_many([d["doc_id"] for d in group], properties=["doc_id", "status"])
            todo = []
            for doc in group:
                old = existing.get(doc["doc_id"])
                if old is None:
                    counts["added"] += 1
                elif (
                    kind == "relaxation"
                    and old.get("status") not in DONE_STATUSES
                    and doc.get("status") in DONE_STATUSES
                ):
                    counts["replaced"] += 1
                else:
                    counts["kept"] += 1
                    continue
                doc.pop("_id", None)
                todo.append(doc)
            if todo:
                self._put(kind, todo, BLOB_FIELDS.get(kind, ()))
        return counts

    # -- property optimisation -------------------------------------------------------------
    def put_property_optimization(self, doc: dict[str, Any], provenance: Provenance) -> str:
        """Store one property-optimisation run (``kind="property_optimization"``).

        Parameters
        ----------
        doc
            With ``doc_id``; its ``rows`` (one per decoded crystal) go to the ``data`` store.
        provenance
            Model, checkpoint, dataset, optimisation settings.

        Returns
        -------
        str
            The ``doc_id``.
        """
        d = jsanitize({**doc, "provenance": provenance.as_dict()}, strict=False)
        return self._put("property_optimization", [d], BLOB_FIELDS["property_optimization"])[0]

    # -- analyses --------------------------------------------------------------------------
    def put_analyses(self, docs: Iterable[dict[str, Any]], provenance: Provenance) -> list[str]:
        """Store analysis documents.

        Parameters
        ----------
        docs
            Dicts with ``structure_hash`` and ``settings_hash`` (of the relaxation compared
            against) plus the measured quantities.
        provenance
            Model, dataset, relaxer.

        Returns
        -------
        list of str
            The ``doc_id`` of each analysis.
        """
        prov = provenance.as_dict()
        out = []
        for doc in docs:
            d = dict(doc)
            d["doc_id"] = analysis_doc_id(d["structure_hash"], d["settings_hash"])
            d["provenance"] = prov
            out.append(d)
        return self._put("analysis", out)
