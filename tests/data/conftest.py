"""Fixtures of the data tests: private caches, a static file server and a fake MP API server.

Both servers listen on 127.0.0.1 only. The MP server answers ``/heartbeat`` and
``/materials/summary/`` the way the public service does (``{"data": [...], "meta":
{"total_doc": n, ...}}``, ``_skip``/``_limit`` pagination, ``_fields`` projection, range
filters ``<field>_min``/``<field>_max``), so ``mp_api.client.MPRester`` runs unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
from pymatgen.core import Structure

TEST_KEY = "dftloopTESTkey0123456789abcdefXY"  # 32 characters, as the client requires
assert len(TEST_KEY) == 32


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own preprocessed-split cache and no MP key from the environment."""
    monkeypatch.setenv("DFTLOOP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("MP_API_KEY", raising=False)
    monkeypatch.setenv("DFTLOOP_DATA_WORKERS", "1")


@dataclass
class StaticServer:
    """A file server on 127.0.0.1 serving ``root``; ``requests`` lists the paths asked for."""

    root: Path
    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[StaticServer]:
    root = tmp_path / "www"
    root.mkdir()
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            seen.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StaticServer(root, f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


def summary_docs(data_dir: Path) -> list[dict]:
    """Summary documents built from the first rows of the MP-20 pilot val split."""
    frame = pd.read_csv(
        data_dir / "mp_20" / "wyckofftransformer_mp_20_pilot" / "val.csv.gz", index_col=0, nrows=12
    )
    docs = []
    for _, row in frame.iterrows():
        structure = Structure.from_str(row["cif"], fmt="cif")
        docs.append(
            {
                "material_id": row["material_id"],
                "structure": structure.as_dict(),
                "formation_energy_per_atom": float(row["formation_energy_per_atom"]),
                "band_gap": float(row["band_gap"]),
                "formula_pretty": row["pretty_formula"],
                "energy_above_hull": float(row["e_above_hull"]),
                "elements": sorted({el.symbol for el in structure.composition.elements}),
                "symmetry": {"number": int(row["spacegroup.number"]), "version": "2.5.0"},
                "nsites": len(structure),
                "theoretical": False,
                "deprecated": False,
            }
        )
    # one document the criteria must exclude (far above the hull)
    bad = dict(docs[0], material_id="mp-999999999", energy_above_hull=0.5)
    # and one that passes the filters but carries a broken structure (reported, not written)
    broken = dict(docs[1], material_id="mp-888888888", structure={"lattice": "garbage"})
    docs += [bad, broken]
    return docs


@dataclass
class FakeMP:
    """State of the fake Materials Project server."""

    url: str
    docs: list[dict]
    mode: str = "ok"  # ok | 401 | 429 | 500 | 503-once
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)


def _matches(doc: dict, query: dict[str, str]) -> bool:
    for key, value in query.items():
        if key.endswith("_min") or key.endswith("_max"):
            name = key[:-4]
            if name not in doc:
                continue
            bound = float(value)
            if key.endswith("_min") and doc[name] < bound:
                return False
            if key.endswith("_max") and doc[name] > bound:
                return False
        elif key == "exclude_elements":
            if set(value.split(",")) & set(doc["elements"]):
                return False
        elif key == "elements":
            if not set(value.split(",")) <= set(doc["elements"]):
                return False
        elif key == "chemsys":
            if "-".join(sorted(doc["elements"])) not in {
                "-".join(sorted(c.split("-"))) for c in value.split(",")
            }:
                return False
        elif key in ("theoretical", "deprecated") and str(doc[key]).lower() != value.lower():
            return False
    return True


@pytest.fixture(scope="session")
def mp_docs(data_dir: Path) -> list[dict]:
    return summary_docs(data_dir)


@pytest.fixture
def fake_mp(mp_docs: list[dict]) -> Iterator[FakeMP]:
    state = FakeMP(url="", docs=[dict(d) for d in mp_docs])
    from emmet.core import __version__ as emmet_version

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict, extra: dict | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):
            parsed = urlparse(self.path)
            if parsed.path.rstrip("/") == "/heartbeat":
                return self._send(
                    200,
                    {
                        "status": "OK",
                        "version": emmet_version,
                        "db_version": "2025.09.25",
                        "access_controlled_batch_ids": [],
                    },
                )
            if parsed.path.rstrip("/") != "/materials/summary":
                return self._send(404, {"detail": "Not Found"})
            query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
            state.requests.append(query)
            state.headers.append(dict(self.headers))
            if self.headers.get("x-api-key") != TEST_KEY or state.mode == "401":
                return self._send(401, {"detail": "Invalid API key"})
            if state.mode == "429":
                return self._send(429, {"detail": "Too many requests"}, {"Retry-After": "0"})
            if state.mode == "500":
                return self._send(500, {"detail": "Internal Server Error"})
            if state.mode == "503-once":
                state.mode = "ok"
                return self._send(503, {"detail": "Service Unavailable"})
            hits = [d for d in state.docs if _matches(d, query)]
            skip = int(query.get("_skip", 0))
            limit = int(query.get("_limit", 1000))
            page = hits[skip : skip + limit]
            fields = query.get("_fields")
            if fields:
                keep = fields.split(",")
                page = [{k: d[k] for k in keep if k in d} for d in page]
            return self._send(
                200,
                {"data": page, "meta": {"total_doc": len(hits), "max_limit": 1000}},
            )

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
