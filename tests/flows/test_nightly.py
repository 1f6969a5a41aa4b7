"""nightly-benchmark under a Prefect test harness: every model stays in the table, stage failures
are notes, the ours/paper table goes to the artifacts and replaces its block in a docs file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_nightly_table_artifacts_and_docs_block(
    harness: None, no_shipped_models: None, tmp_path: Path
) -> None:
    from flows.nightly import GENERATORS, nightly_benchmark

    from .conftest import run_artifacts

    start, end = (
        "<!-- nightly:perov_5:cpu-small:start -->",
        "<!-- nightly:perov_5:cpu-small:end -->",
    )
    other = (
        "<!-- nightly:carbon_24:cpu-small:start -->\nKEEP\n<!-- nightly:carbon_24:cpu-small:end -->"
    )
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\n{start}\nOLD TABLE\n{end}\n\n{other}\n\n## Later\n")
    broken = tmp_path / "broken.pt"
    broken.write_text("not a checkpoint")
    state = nightly_benchmark(
        dataset="perov_5",
        scale="cpu-small",
        n=2,
        checkpoints={"cdvae": str(broken), "diffcsp": str(broken)},
        home=str(tmp_path),
        write_docs=True,
        docs_path=str(docs),
        docs_note=["command: test"],
        return_state=True,
    )
    rows = state.result()
    by_model = {r["model"]: r for r in rows}
    assert list(by_model) == list(GENERATORS)
    for model in ("dpcdvae", "continuousp"):
        where = tmp_path / "checkpoints" / model / "perov_5" / "cpu-small"
        assert by_model[model]["status"] == (
            f"no checkpoint in {where} (run train-generator or pass train_missing=true)"
        )
    # a checkpoint that does not load: each stage fails on its own and says so, nothing relaxed
    cdvae = by_model["cdvae"]
    assert cdvae["status"] == "partial: reconstruct, generation failed; relax not run", cdvae
    assert cdvae["notes"]["reconstruct"].startswith("failed: ")
    assert cdvae["notes"]["generation"].startswith("failed: ")
    assert cdvae["notes"]["relax"] == "not run: no samples to relax"
    assert cdvae.get("match_rate") is None and cdvae["checkpoint"] == str(broken)
    # DiffCSP's generation needs its own (DiffCSP-C) checkpoint: without one the stage did not
    # run, and the row is not "ok" even where the CSP stage would have worked
    diffcsp = by_model["diffcsp"]
    assert diffcsp["status"] == "partial: csp failed; generation, relax not run", diffcsp
    generate_dir = tmp_path / "checkpoints" / "diffcsp" / "perov_5" / "cpu-small-generate"
    assert diffcsp["notes"]["generation"] == (
        f"not run: no checkpoint in {generate_dir} (run train-generator or pass train_missing=true)"
    )
    [report] = (tmp_path / "reports" / "nightly").glob("perov_5-cpu-small-*.json")
    assert [r["model"] for r in json.loads(report.read_text())] == list(GENERATORS)

    # the docs block was replaced in place; the other block and the text around are kept
    text = docs.read_text()
    assert "OLD TABLE" not in text and text.count(start) == 1 and text.count(end) == 1
    assert text.startswith(f"# Benchmarks\n\n{start}\n### Nightly benchmark: perov_5, cpu-small")
    assert f"{end}\n\n{other}\n\n## Later\n" in text
    assert "command: test" in text
    # paper numbers beside our empty cells: DiffCSP k=1 CSP, CDVAE reconstruction
    assert "| diffcsp | partial | – | – / 52.02 | – / 0.0760 |" in text  # n "–": nothing ran
    assert "– / 97.52 | – / 0.0156 |" in text
    assert "- diffcsp: partial: csp failed; generation, relax not run; csp: failed: " in text
    # DP-CDVAE, ContinuouSP: the papers' numbers are not in dftloop, and the cells say so
    lines = {ln.split(" | ")[0]: ln for ln in text.splitlines() if ln.startswith("| ")}
    assert lines["| dpcdvae"].count("– / unknown") == 8
    assert lines["| continuousp"].count("– / unknown") == 2

    artifacts = run_artifacts(str(state.state_details.flow_run_id))
    table = artifacts["nightly-perov-5-cpu-small"]
    markdown = artifacts["nightly-perov-5-cpu-small-markdown"]
    assert set(artifacts) == {table.key, markdown.key}
    assert table.type == "table" and "match_rate_paper" in str(table.data)
    assert "52.02" in str(table.data) and "no checkpoint" in str(table.data)
    assert markdown.type == "markdown" and "| – / 52.02 | – / 0.0760 |" in str(markdown.data)


def test_relaxing_nightly_appends_the_test_split_row_with_the_models_settings(
    harness: None, tmp_path: Path
) -> None:
    """relax=True: the models' samples and as many random test-split structures are relaxed with
    one relaxer setting (protocol included, one settings hash), and the ``test split`` row is in
    the table beside the model's, its ΔH by hand from the stored relaxations.

    Real throughout: the shipped DiffCSP perov_5 CSP checkpoint (50 sampling steps, 2 targets),
    CHGNet with a few steps, the 10 GPa protocol given as an override so that the hash and the
    enthalpies are tested (~20 s in the flow on the 2-core box).
    """
    from statistics import mean

    from pymatgen.core import Structure

    from analysis.enthalpy import EV_PER_GPA_A3
    from flows.floor import floor_structures
    from flows.hashing import structure_hash
    from flows.nightly import nightly_benchmark
    from flows.protocol_settings import stage_settings
    from flows.store import ResultStore
    from flows.tasks import describe_relaxer

    from .conftest import TINY_CHGNET

    p_gpa = 10.0
    rows = nightly_benchmark(
        dataset="perov_5",
        scale="cpu-small",
        n=2,
        models=["diffcsp"],
        generate=False,
        eval_limit=2,
        eval_coverage=False,
        sample_steps=50,
        relaxer_settings=TINY_CHGNET,
        protocol={"pressure_gpa": p_gpa},
        cluster_kwargs={"processes": False},
        home=str(tmp_path),
    )
    assert [r["model"] for r in rows] == ["diffcsp", "test split"]
    model, floor = rows
    assert model["checkpoint"] == "diffcsp-perov5-csp" and model["relaxed_samples"] == "csp"
    assert model["n_relaxed"] == 2 and floor["n_relaxed"] == 2 and floor["status"] == "ok"
    assert floor["relaxer"] == model["relaxer"] == "chgnet"

    # one settings hash, that of the models' stage at 10 GPa (not the dataset's 0 GPa one)
    [settings] = stage_settings("perov_5", {"pressure_gpa": p_gpa}, TINY_CHGNET)
    [at_zero] = stage_settings("perov_5", None, TINY_CHGNET)
    expected = describe_relaxer("chgnet", settings)["settings_hash"]
    assert expected != describe_relaxer("chgnet", at_zero)["settings_hash"]
    assert model["settings_hash"] == floor["settings_hash"] == expected

    # the floor's mean ΔH by hand: E/N + p V/N of the test structures as given and as relaxed,
    # from the documents stored under that hash
    items = floor_structures("perov_5", 2, split="test", selection="random", seed=0)
    with ResultStore(home=str(tmp_path)) as store:
        docs = store.get_relaxations([structure_hash(s) for _, s in items], expected)
    by_hand = []
    for _, structure in items:
        doc = docs[structure_hash(structure)]
        final = Structure.from_dict(doc["final_structure"])
        pv0 = p_gpa * EV_PER_GPA_A3 * structure.volume / len(structure)
        pv1 = p_gpa * EV_PER_GPA_A3 * final.volume / len(final)
        h0, h1 = doc["initial_energy_per_atom_eV"] + pv0, doc["final_energy_per_atom_eV"] + pv1
        by_hand.append(1000 * (h0 - h1))
    assert floor["energy_quantity"] == model["energy_quantity"] == "H"
    assert floor["mean_delta_e_mev_per_atom"] == pytest.approx(mean(by_hand), rel=1e-6)

    # the markdown table (report file): the test split row with its ΔH, under a ΔH header
    [report] = (tmp_path / "reports" / "nightly").glob("perov_5-cpu-small-*.md")
    lines = report.read_text().splitlines()
    header = [c.strip() for c in next(ln for ln in lines if ln.startswith("| model")).split("|")]
    cells = [
        c.strip() for c in next(ln for ln in lines if ln.startswith("| test split |")).split("|")
    ]
    assert cells[header.index("status")] == "ok" and cells[header.index("n")] == "2"
    assert cells[header.index("ΔH meV/atom")] == f"{mean(by_hand):.1f}"
    assert any(ln.startswith("- test split: relax: 2 random perov_5 test-split") for ln in lines)
    [saved] = (tmp_path / "reports" / "nightly").glob("perov_5-cpu-small-*.json")
    hashes = {r["model"]: r.get("settings_hash") for r in json.loads(saved.read_text())}
    assert hashes == {"diffcsp": expected, "test split": expected}


def test_row_status_and_the_relaxed_sample_set() -> None:
    from flows.nightly import relaxed_set_note, row_status

    assert row_status({}) == "ok"
    assert row_status({"generation": "off (generate=false)", "relax": "off (relax=false)"}) == "ok"
    assert row_status({"generation": "not run: no checkpoint in x"}) == (
        "partial: generation not run"
    )
    assert row_status({"csp": "failed: E", "generation": "failed: E", "relax": "not run: y"}) == (
        "partial: csp, generation failed; relax not run"
    )
    # a relax note that reports failed relaxations is not a failed stage
    assert row_status({"relax": "6 of 8 relaxed; 2 failed (x)"}) == "ok"
    assert relaxed_set_note("diffcsp", "generated", None) is None
    assert relaxed_set_note(
        "continuousp", "csp", "continuousp is a CSP-only model (no ab initio generation)"
    ) == (
        "ΔE and RMSD are of the CSP samples (structures predicted for the test compositions), "
        "not of generated crystals (generation: continuousp is a CSP-only model (no ab initio "
        "generation))"
    )
    assert relaxed_set_note("cdvae", "reconstruct", "failed: E") == (
        "ΔE and RMSD are of the reconstructed test structures, not of generated crystals "
        "(generation: failed: E)"
    )


def _overlapping_samples(path: Path, gaps: list[float]) -> str:
    """A sample directory of 4 Å cubic NaCl cells whose two atoms are ``gaps`` Å apart, and one
    sample the sampler could not build."""
    from pymatgen.core import Lattice, Structure

    from dftloop_io.samples import SampleRecord, write_chunk, write_index

    records = [
        SampleRecord(
            f"s{i}", Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [gap / 4, 0, 0]])
        )
        for i, gap in enumerate(gaps)
    ]
    records.append(SampleRecord("s-nan", None, error="sampler produced NaN coordinates"))
    chunk = write_chunk(path, 0, records)
    write_index(
        path,
        {
            "model": "diffcsp",
            "dataset": "perov_5",
            "mode": "generate",
            "chunks": [chunk],
            "total": len(records),
        },
    )
    return str(path)


def test_zero_relaxed_samples_are_a_note_with_the_reasons(tmp_path: Path) -> None:
    """Every generated crystal rejected by the relaxer's input check: the relax note counts them
    by reason instead of leaving the ΔE / RMSD cells empty without a word."""
    from dataclasses import asdict

    from analysis.benchmark_table import render_markdown
    from analysis.stability import summarize_stability
    from flows.hashing import structure_hash
    from flows.nightly import add_relax_outcome
    from flows.relax_stage import samples_provenance
    from flows.store import Provenance, ResultStore
    from flows.tasks import analyze_task, describe_relaxer, load_sample_items, relax_chunk

    from .conftest import TINY_CHGNET

    sample_dir = _overlapping_samples(tmp_path / "samples", [0.01, 0.04, 0.02])
    items, errors = load_sample_items(sample_dir)
    assert len(items) == 3 and len(errors) == 1
    # the real CHGNet relaxer (its input check rejects all three before any model is loaded)
    results = relax_chunk.fn("chgnet", TINY_CHGNET, [(sid, s.as_dict()) for sid, s in items])
    assert [r["status"] for r in results] == ["invalid_input"] * 3
    info = describe_relaxer("chgnet", TINY_CHGNET)
    prov = samples_provenance(sample_dir, {})
    prov = Provenance(**{**asdict(prov), "relaxer": "chgnet", "relaxer_settings": info["settings"]})
    home = str(tmp_path / "home")
    with ResultStore(home=home) as store:
        store.put_relaxations(
            [(structure_hash(s), r) for (_, s), r in zip(items, results, strict=True)], prov
        )
    rows = analyze_task.fn(sample_dir, info["settings_hash"], home, prov.__dict__, None)
    analysis = {"metrics": [m.to_dict() for m in summarize_stability(rows)], "rows": rows}

    row = {"model": "diffcsp", "dataset": "perov_5", "scale": "t", "status": "ok", "notes": {}}
    add_relax_outcome(row, analysis)
    assert row["n_relaxed"] == 0 and row.get("mean_delta_e_mev_per_atom") is None
    assert row["notes"]["relax"] == (
        "0 of 4 relaxed; 3 rejected as invalid input (atoms overlap: closest distance "
        "0.010–0.040 Å is below the threshold 0.500 Å); 1 could not be built from the sample "
        "(sampler produced NaN coordinates)"
    )
    markdown = render_markdown([row], "perov_5", "t")
    assert (
        "- diffcsp: relax: 0 of 4 relaxed; 3 rejected as invalid input (atoms overlap" in markdown
    )

    # one sample compared with its relaxed structure: the note says the figures cover 1 of 4
    first = next(i for i, r in enumerate(rows) if r["status"] == "invalid_input")
    relaxed = [
        {**r, "status": "not_converged", "error": None} if i == first else r
        for i, r in enumerate(rows)
    ]
    row = {"model": "diffcsp", "notes": {}}
    add_relax_outcome(row, {"metrics": [], "rows": relaxed})
    assert row["n_relaxed"] == 1
    assert row["notes"]["relax"].startswith(
        "1 of 4 relaxed; 2 rejected as invalid input (atoms overlap"
    ), row["notes"]["relax"]
    assert row["notes"]["relax"].endswith(
        "1 could not be built from the sample (sampler produced NaN coordinates)"
    )

    # every sample compared: the stage speaks through its numbers alone
    every = [{**r, "status": "not_converged", "error": None} for r in rows]
    row = {"model": "diffcsp", "notes": {}}
    add_relax_outcome(row, {"metrics": [], "rows": every})
    assert row["n_relaxed"] == 4 and "relax" not in row["notes"]


def test_reasons_are_grouped_by_kind_with_their_numbers_as_ranges() -> None:
    from flows.nightly import summarize_reasons

    reasons = [
        "atoms overlap: closest distance 0.012 Å is below the threshold 0.500 Å",
        "cell volume is zero or negative (-3.2 Å^3)",
        "atoms overlap: closest distance 0.300 Å is below the threshold 0.500 Å",
        "atoms overlap: closest distance 0.150 Å is below the threshold 0.500 Å",
        "element(s) not supported by this relaxer: Xe",
    ]
    assert summarize_reasons(reasons) == (
        "3× atoms overlap: closest distance 0.012–0.300 Å is below the threshold 0.500 Å; "
        "1× cell volume is zero or negative (-3.2 Å^3); "
        "1× element(s) not supported by this relaxer: Xe"
    )
    assert summarize_reasons(["x" * 300]) == "x" * 159 + "…"


@pytest.mark.slow
def test_sun_stage_on_relaxed_carbon(harness: None, tmp_path: Path) -> None:
    """The S.U.N. glue: samples relaxed with CHGNet under carbon_24's protocol (10 GPa: ΔH and
    H_hull), a hull of 4 relaxed training structures, novelty against a (small, prebuilt)
    training reference; thresholds written beside it.

    Slow: 314 s (call) under `nice -n 10` at load average ~13 on the 2-core box (7 CHGNet
    relaxations of carbon_24 cells in the flow process).
    """
    from prefect import flow

    from analysis.sun import NoveltyReference
    from flows.nightly import _relax_and_analyze, _sun_stage
    from flows.protocol_settings import stage_settings
    from flows.smoke_model import sample_from_dataset
    from generators.data import load_split

    from .conftest import TINY_CHGNET

    sample_dir = str(sample_from_dataset("carbon_24", 3, tmp_path / "samples", seed=1))
    train = load_split("carbon_24", "train", limit=30, progress=False).records
    cache = {
        "carbon_24": NoveltyReference(
            [r.structure for r in train], ids=[r.material_id for r in train]
        )
    }
    [settings] = stage_settings("carbon_24", None, TINY_CHGNET)  # 10 GPa, D3(BJ), as the flow
    spec = ("chgnet", settings, {"processes": False})

    @flow
    def run() -> dict:
        row = {"model": "dataset", "dataset": "carbon_24", "scale": "t", "notes": {}}
        row["relaxed_samples"] = "generated"
        _relax_and_analyze(row, sample_dir, spec, str(tmp_path), 3)
        _sun_stage(row, sample_dir, spec, str(tmp_path), 4, cache)
        return row

    row = run()
    assert row["n_relaxed"] == 3 and row["mean_delta_e_mev_per_atom"] > 0  # rattled: downhill
    assert row["sun"]["n"] == 3 and row["sun"]["n_errors"] == 0
    assert row["sun_rate"] == row["sun"]["n_sun"] / 3
    # val structures are not in the first 30 training structures; rattled copies differ
    assert row["sun"]["n_novel"] == 3 and row["sun"]["n_unique"] == 3
    note = row["notes"]["sun_rate"]
    assert row["energy_quantity"] == row["sun_energy_quantity"] == "H"
    assert (
        "stable H_hull < 0.1 eV/atom (enthalpy H = E + pV per atom at 10 GPa) against 4 "
        "carbon_24 training structures" in note
    )
    assert "relaxed with chgnet" in note and "novel against 30 training structures" in note
