"""Sampler: chunked writing, resume without regeneration, per-chunk seeds, bad items."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from dftloop_io.samples import atomic_write_json, read_index
from generators.crystal import structures_to_batch
from generators.models.base import CrystalGenerator
from generators.models.diffcsp import DiffCSP
from generators.sampler import (
    MAX_VOLUME_PER_ATOM,
    SamplingSummary,
    chunk_seed,
    count_oversized,
    load_samples,
    plan_items,
    run_sampling,
    sample,
)
from generators.trainer import fit, load_checkpoint

from .conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, perov_val_data) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("ckpt")
    config = tiny_config(max_epochs=1)
    torch.manual_seed(0)
    fit(DiffCSP(config["model"]), config, perov_val_data[:8], [], out, dataset="perov_5")
    return out / "last.pt"


class _Interrupt(Exception):
    pass


def _counting(model: CrystalGenerator) -> list[int]:
    calls: list[int] = []
    original = model.sample_csp

    def counted(template: Batch, generator: torch.Generator | None = None) -> Batch:
        calls.append(int(template.num_graphs))
        return original(template, generator)

    model.sample_csp = counted  # type: ignore[method-assign]
    return calls


def _structures(directory: Path) -> list[tuple[Any, ...]]:
    return [
        (
            r.sample_id,
            r.target_id,
            r.candidate,
            r.structure.lattice.abc,
            r.structure.frac_coords.sum(),
        )
        for r in load_samples(directory)
    ]


def test_csp_resume_skips_finished_chunks(
    tmp_path: Path, tiny_checkpoint, perov_val_records
) -> None:
    items = plan_items("csp", records=perov_val_records[:5], k=2)  # 10 samples, chunks of 4
    kwargs: dict[str, Any] = {
        "dataset": "perov_5",
        "checkpoint_sha256": "abc",
        "chunk_size": 4,
        "seed": 3,
        "steps": 4,
        "k": 2,
        "split": "val",
        "progress": False,
    }

    def interrupt(chunk: int, _records: list) -> None:
        if chunk == 1:
            raise _Interrupt

    model, _ = load_checkpoint(tiny_checkpoint)
    calls = _counting(model)
    with pytest.raises(_Interrupt):
        run_sampling(model, tmp_path / "s", "csp", items, on_chunk=interrupt, **kwargs)
    assert calls == [4, 4]
    assert read_index(tmp_path / "s")["chunks"] == ["chunk_00000.json", "chunk_00001.json"]

    model, _ = load_checkpoint(tiny_checkpoint)
    calls = _counting(model)
    summary = run_sampling(model, tmp_path / "s", "csp", items, **kwargs)
    assert calls == [2]  # only the last chunk was sampled again
    assert (summary.chunks_written, summary.chunks_skipped) == (1, 2)

    model, _ = load_checkpoint(tiny_checkpoint)
    run_sampling(model, tmp_path / "full", "csp", items, **kwargs)
    assert _structures(tmp_path / "s") == _structures(tmp_path / "full")

    records = load_samples(tmp_path / "s")
    assert len(records) == 10
    assert [(r.target_id, r.candidate) for r in records[:4]] == [
        (perov_val_records[0].material_id, 0),
        (perov_val_records[0].material_id, 1),
        (perov_val_records[1].material_id, 0),
        (perov_val_records[1].material_id, 1),
    ]
    for record, target in zip(records[::2], perov_val_records[:5], strict=True):
        assert record.structure.composition == target.structure.composition
    index = read_index(tmp_path / "s")
    expected = {"model": "diffcsp", "mode": "csp", "total": 10, "chunk_size": 4, "k": 2}
    assert {key: index[key] for key in expected} == expected

    # another seed in the same directory is refused instead of mixing two runs
    model, _ = load_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match=r"different run.*seed"):
        run_sampling(model, tmp_path / "s", "csp", items, **{**kwargs, "seed": 4})


def test_chunk_seeds_are_distinct_and_stable() -> None:
    seeds = {chunk_seed(0, c) for c in range(1000)}
    assert len(seeds) == 1000
    assert chunk_seed(7, 3) == chunk_seed(7, 3) != chunk_seed(8, 3)


def test_sample_from_checkpoint_end_to_end(tmp_path: Path, tiny_checkpoint, data_dir) -> None:
    summary = sample(
        tiny_checkpoint,
        tmp_path / "out",
        "csp",
        split="val",
        k=1,
        limit=3,
        batch_size=2,
        steps=3,
        data_dir=data_dir,
        progress=False,
    )
    assert summary.total == 3 and summary.chunks_written == 2
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert len(index["checkpoint_sha256"]) == 64 and index["split"] == "val"
    with pytest.raises(ValueError, match="does not support 'reconstruct'"):
        sample(tiny_checkpoint, tmp_path / "r", "reconstruct", limit=2, data_dir=data_dir)


def test_generate_mode_with_generation_model(tmp_path: Path, perov_val_data) -> None:
    config = tiny_config(max_epochs=1)
    config["model"]["mode"] = "generate"
    torch.manual_seed(0)
    result = fit(
        DiffCSP(config["model"]), config, perov_val_data[:8], [], tmp_path / "m", dataset="perov_5"
    )
    model = result.model.eval()
    items = plan_items("generate", n=5)
    run_sampling(
        model,
        tmp_path / "g",
        "generate",
        items,
        dataset="perov_5",
        checkpoint_sha256="x",
        chunk_size=2,
        steps=3,
        progress=False,
    )
    records = load_samples(tmp_path / "g")
    assert len(records) == 5
    assert all(r.target_id is None for r in records)
    built = [r for r in records if r.structure is not None]
    assert all(len(r.structure) == 5 for r in built)  # perov_5: always 5 atoms
    with pytest.raises(ValueError, match="does not support 'csp'"):
        run_sampling(model, tmp_path / "c", "csp", items, dataset="perov_5", checkpoint_sha256="x")


class HalfBroken(CrystalGenerator):
    """Returns the template with the lattice of every other crystal set to NaN."""

    name: ClassVar[str] = "half-broken"
    supports: ClassVar[frozenset[str]] = frozenset({"csp"})

    def sample_csp(self, template: Batch, generator: torch.Generator | None = None) -> Batch:
        out = template.clone()
        out.lattice[::2] = float("nan")
        return out


def _run_stub(model: CrystalGenerator, out: Path, items: list) -> SamplingSummary:
    """CSP sampling of perov_5 ``items`` with a stand-in model, one chunk, no progress bar."""
    return run_sampling(
        model,
        out,
        "csp",
        items,
        dataset="perov_5",
        checkpoint_sha256="x",
        chunk_size=10,
        progress=False,
    )


def test_bad_items_become_error_records(tmp_path: Path, perov_val_records) -> None:
    disordered = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])

    class Record:
        material_id = "disordered-1"
        structure = disordered

    records = [Record(), *perov_val_records[:3]]
    items = plan_items("csp", records=records, k=1)
    summary = _run_stub(HalfBroken({}), tmp_path, items)
    samples = load_samples(tmp_path)
    assert len(samples) == 4 and summary.failed == 3
    assert samples[0].structure is None and "disordered" in samples[0].error
    assert samples[1].structure is None and "non-finite" in samples[1].error
    assert samples[2].structure is not None and samples[2].error is None
    assert samples[3].structure is None
    assert structures_to_batch([samples[2].structure]).num_atoms.item() == 5


class Blown(CrystalGenerator):
    """Returns the template with the first crystal's lattice vectors 20 times longer."""

    name: ClassVar[str] = "blown"
    supports: ClassVar[frozenset[str]] = frozenset({"csp"})

    def sample_csp(self, template: Batch, generator: torch.Generator | None = None) -> Batch:
        out = template.clone()
        out.lattice[0] = out.lattice[0] * 20.0
        return out


def test_oversized_cells_are_counted_and_reported(
    tmp_path: Path, perov_val_records, caplog: pytest.LogCaptureFixture
) -> None:
    """A cell of 8000 times the volume (perov_5: ~10^5 Å³ per atom) is counted and logged, the
    unchanged ones (~12 Å³ per atom) are not; the samples are kept as sampled."""
    records = perov_val_records[:3]
    per_atom = [r.structure.volume / len(r.structure) for r in records]
    assert max(per_atom) < 100 and min(per_atom) * 8000 > MAX_VOLUME_PER_ATOM
    items = plan_items("csp", records=records, k=1)
    with caplog.at_level("WARNING", logger="generators.sampler"):
        summary = _run_stub(Blown({}), tmp_path, items)
    assert summary.oversized == 1 and summary.failed == 0
    assert "1 of 3 samples have more than 1000" in caplog.text
    samples = load_samples(tmp_path)
    assert samples[0].structure.volume == pytest.approx(8000 * records[0].structure.volume)
    assert count_oversized(samples) == 1
    assert count_oversized(samples, limit=per_atom[0] * 0.5) == 3


def test_plan_items_rejects_bad_requests() -> None:
    with pytest.raises(ValueError, match="positive number of crystals"):
        plan_items("generate", n=0)
    with pytest.raises(ValueError, match="split is empty"):
        plan_items("csp", records=[], k=1)
    with pytest.raises(ValueError, match="unknown sampling mode"):
        plan_items("dream", n=3)


@pytest.mark.parametrize(("model_name", "bar"), [("cdvae", "Langevin"), ("dpcdvae", "DDPM")])
def test_progress_option_reaches_the_models_chain_bar(
    model_name: str, bar: str, tmp_path: Path, capsys, make_vae_config
) -> None:  # type: ignore[no-untyped-def]
    """``dftloop sample --no-progress`` silences the chain's own bar even when the checkpoint's
    config asks for one (the trainer's configs do); ``progress=True`` shows it."""
    from generators.registry import build_model

    torch.manual_seed(0)
    model = build_model(model_name, make_vae_config(model_name, progress=True)["model"]).eval()
    items = plan_items("generate", n=1)
    kwargs: dict[str, Any] = {"dataset": "perov_5", "checkpoint_sha256": "abc", "steps": 50}
    run_sampling(model, tmp_path / "quiet", "generate", items, progress=False, **kwargs)
    assert bar not in capsys.readouterr().err
    run_sampling(model, tmp_path / "loud", "generate", items, progress=True, **kwargs)
    assert f"{model_name} {bar}" in capsys.readouterr().err


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """A sample index or the model registry is never half-written: a payload that cannot be
    serialised leaves the previous content and no temporary file behind."""
    path = tmp_path / "index.json"
    atomic_write_json(path, {"chunks": ["chunk_00000.json"]})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"chunks": [object()]})
    assert json.loads(path.read_text()) == {"chunks": ["chunk_00000.json"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
