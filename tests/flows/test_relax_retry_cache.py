"""retry_failed bypasses Prefect's task cache: a cached failed chunk is computed again.

Under a Prefect test harness with the real task cache and real CHGNet: a chunk whose relaxation
failed is cached by Prefect and stored as ``failed``; a rerun skips it (store); a rerun with
``retry_failed=True`` computes it again (ledger line, new stored document). Without
``refresh_cache`` the same rerun gets the cached failure back and computes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from pymatgen.core import Lattice, Structure

from flows import relax_stage, tasks
from flows.hashing import structure_hash
from flows.store import Provenance, ResultStore
from flows.tasks import describe_relaxer

from .conftest import TINY_CHGNET

DIAMOND = Structure.from_spacegroup(
    "Fd-3m", Lattice.cubic(3.567), ["C"], [[0, 0, 0]]
).get_primitive_structure()
"""2-atom primitive cell of diamond (CHGNet 0.4: -9.064 eV/atom relaxed)."""


@flow
def _relax_diamond(home: str, retry_failed: bool) -> dict[str, Any]:
    summary = relax_stage.run_relax_stage(
        [("d", DIAMOND, structure_hash(DIAMOND))],
        "chgnet",
        TINY_CHGNET,
        Provenance(model="dataset"),
        home=home,
        cluster_kwargs={"processes": False},  # Dask threads of this process: patches apply
        retry_failed=retry_failed,
    )
    return summary.as_dict()


def _ledger(home: Path) -> list[str]:
    path = home / "ledger" / "relaxations.jsonl"
    return [json.loads(line)["status"] for line in path.read_text().splitlines()]


def _stored(home: Path) -> dict[str, Any]:
    settings_hash = describe_relaxer("chgnet", TINY_CHGNET)["settings_hash"]
    with ResultStore(home=home) as store:
        docs = store.get_relaxations([structure_hash(DIAMOND)], settings_hash)
    return docs[structure_hash(DIAMOND)]


def test_retry_failed_computes_a_cached_failure_again(
    harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relax import RelaxResult

    with monkeypatch.context() as patch:  # the first computation fails (a killed pw.x, say)
        patch.setattr(
            tasks,
            "relax_per_item",
            lambda relaxer, pairs: [
                RelaxResult.failure(sid, relaxer, "process killed", structure=s) for sid, s in pairs
            ],
        )
        first = _relax_diamond(str(tmp_path), retry_failed=False)
    assert first["n_submitted"] == 1 and first["n_errors"] == 1
    assert _ledger(tmp_path) == ["failed"]
    failed = _stored(tmp_path)
    assert failed["status"] == "failed" and "process killed" in failed["error"]

    # a plain rerun: the store has the failure, nothing is submitted
    again = _relax_diamond(str(tmp_path), retry_failed=False)
    assert again["n_skipped"] == 1 and again["n_submitted"] == 0
    assert _ledger(tmp_path) == ["failed"]

    # the control: without refresh_cache, Prefect's cache hands the failure back
    chunk_task = relax_stage.relax_chunk
    with monkeypatch.context() as patch:
        patch.setattr(chunk_task, "with_options", lambda **_: chunk_task)
        replayed = _relax_diamond(str(tmp_path), retry_failed=True)
    assert replayed["n_submitted"] == 1 and replayed["n_errors"] == 1
    assert _ledger(tmp_path) == ["failed"]  # nothing computed

    # retry_failed: computed again with the real CHGNet, stored over the failure
    retried = _relax_diamond(str(tmp_path), retry_failed=True)
    assert retried["n_submitted"] == 1 and retried["n_errors"] == 0, retried
    ledger = _ledger(tmp_path)
    assert len(ledger) == 2 and ledger[1] in ("ok", "not_converged")
    done = _stored(tmp_path)
    assert done["status"] == ledger[1] and done["error"] is None
    assert len(DIAMOND) == 2
    assert done["final_energy_per_atom_eV"] == pytest.approx(-9.064, abs=0.02)
