"""Generation metrics on a cold start: an earlier commit against this tree, alternating rounds.

The parent writes, per dataset, a sample directory of ``--n`` "generated" crystals: the first
``--n`` test structures rattled by a Gaussian of 0.05 Å per Cartesian component (seed 0). Each
run is ``flows.evaluation.evaluate_with_split`` on that directory (validity, COV with its
CrystalNN/magpie fingerprints, Wasserstein distances) in a fresh subprocess with a fresh SQLite
fingerprint cache, so the generated crystals' fingerprints are always computed. With
``--gt-rows n`` (default) the run passes ``limit=n`` and the ground truth is the first ``n``
test rows; with ``--gt-rows all`` it passes no limit, so the ground truth is the whole test split
(as ``dftloop evaluate SAMPLE_DIR --dataset D`` runs by default) and the samples are the
directory's ``n`` crystals. The old side is a git worktree of the reference commit
(``--old-tree``, or a temporary one of ``--old-commit``), which computes the ground truth's
fingerprints in every run; the new side reads them from the file beside the dataset cache, which
one extra run builds before the rounds (its cost is printed as the one-off build).
Both sides read the same preprocessed split cache (copied into a private cache directory).

Old and new runs alternate, the order swapped every round. Printed per dataset: wall and CPU
seconds (the subprocess and its pool workers) per side, min and median, the old/new ratio per
round, the load average, and whether both sides gave the same metric values::

    .venv/bin/python benchmarks/speed_generation_metrics.py --old-tree ../worktrees/73365c3 \\
        --rounds 5 --n 300 --jobs 2
    .venv/bin/python benchmarks/speed_generation_metrics.py --old-tree ../worktrees/73365c3 \\
        --datasets perov_5 --rounds 3 --n 300 --jobs 2 --gt-rows all
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_common import TABLE_HEADER, detached_worktree, load_line, summarise

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "73365c3"
DATASETS = ("perov_5", "carbon_24")


# ----------------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> None:
    """One evaluation with the code of ``args.worker`` (a tree); prints one JSON line."""
    tree = Path(args.worker).resolve()
    sys.path.insert(0, str(tree))
    t0 = time.perf_counter()
    import analysis
    from flows.evaluation import evaluate_with_split

    if Path(analysis.__file__).resolve().parents[1] != tree:
        raise RuntimeError(f"imported analysis from {analysis.__file__}, not {tree}")
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluation = evaluate_with_split(
        args.samples,
        args.dataset,
        limit=None if args.gt_rows == "all" else args.n,
        n_jobs=args.jobs,
        fingerprint_cache=args.fp_cache,
        progress=False,
        out=args.out,
    )
    evaluate_s = time.perf_counter() - t0
    values = {key: result.value for key, result in evaluation.metrics.items()}
    timings = json.loads(Path(args.out).read_text())["metadata"]["timings_s"]
    print(
        json.dumps(
            {"import_s": import_s, "evaluate_s": evaluate_s, "stages": timings, "values": values}
        )
    )


# ----------------------------------------------------------------------------------- parent
@contextmanager
def old_tree(given: Path | None, commit: str):
    """The old side: the given worktree, or a temporary detached worktree of ``commit``."""
    if given is not None:
        yield given.resolve()
        return
    with detached_worktree(commit) as tree:
        yield tree


def write_samples(dataset: str, n: int, directory: Path) -> int:
    """The first ``n`` test structures, rattled (0.05 Å, seed 0), as a sample directory."""
    import numpy as np

    from dftloop_io.samples import SampleRecord, write_chunk, write_index
    from generators.data import load_split

    records = load_split(dataset, "test", limit=n, progress=False).records
    rng = np.random.default_rng(0)
    samples = []
    for k, record in enumerate(records):
        moved = record.structure.copy()
        for i, step in enumerate(rng.normal(0.0, 0.05, (len(moved), 3))):
            moved.translate_sites([i], step, frac_coords=False, to_unit_cell=True)
        samples.append(SampleRecord(f"rattled-{k}", moved))
    name = write_chunk(directory, 0, samples)
    index = {"model": "rattled test structures", "dataset": dataset, "mode": "generate"}
    write_index(directory, {**index, "chunk_size": n, "total": n, "chunks": [name]})
    return sum(len(s.structure) for s in samples)  # type: ignore[arg-type]


def prepare_split_cache(dataset: str, cache: Path) -> None:
    """Copy the preprocessed test split into the private cache (or build it there)."""
    from generators.data import load_split
    from generators.data.locations import cache_dir

    for entry in cache_dir().glob(f"{dataset}-test-*.json.gz"):
        shutil.copy2(entry, cache / entry.name)
    os.environ["DFTLOOP_CACHE_DIR"] = str(cache)
    if not load_split(dataset, "test", limit=1, progress=False).from_cache:
        load_split(dataset, "test", progress=False)  # writes the whole split's cache


def run_one(
    tree: Path,
    dataset: str,
    samples: Path,
    n: int,
    jobs: int,
    fp_cache: Path,
    out: Path,
    gt_rows: str = "n",
) -> dict[str, Any]:
    """One worker subprocess; wall and CPU time (with its pool workers) measured from here.

    ``gt_rows="n"`` passes ``limit=n`` (the ground truth is the first ``n`` test rows);
    ``"all"`` passes no limit, so the ground truth is the whole test split and the samples are
    all ``n`` structures of the sample directory.
    """
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", str(tree),
        "--dataset", dataset, "--samples", str(samples), "--n", str(n), "--jobs", str(jobs),
        "--fp-cache", str(fp_cache), "--out", str(out), "--gt-rows", gt_rows,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["wall_s"] = wall
    row["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row["load"] = (load_before + os.getloadavg()[0]) / 2
    return row


def brief(row: dict[str, Any]) -> str:
    """One line of a run: wall, CPU, the fingerprint stage, the load."""
    fp = row["stages"].get("fingerprints_s", float("nan"))
    return (
        f"wall {row['wall_s']:.1f} s, CPU {row['cpu_s']:.1f} s, "
        f"fingerprints {fp:.1f} s, load {row['load']:.1f}"
    )


def same_values(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal metric values (NaN equal to NaN)."""
    if a.keys() != b.keys():
        return False
    return all(x == y or (x != x and y != y) for x, y in ((a[k], b[k]) for k in a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old-tree", type=Path, default=None, help="worktree of the old commit")
    parser.add_argument("--old-commit", default=OLD_COMMIT, help="used without --old-tree")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=300, help="generated structures (and GT rows)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes on both sides")
    parser.add_argument(
        "--gt-rows",
        choices=("n", "all"),
        default="n",
        help="ground truth: the first --n test rows (n) or the whole test split (all)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write all runs as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--samples", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fp-cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from generators.data import load_split

    report: dict[str, Any] = {"command": " ".join(sys.argv), "cpus": os.cpu_count()}
    with (
        tempfile.TemporaryDirectory(prefix="dftloop-metrics-") as tmp,
        old_tree(args.old_tree, args.old_commit) as old,
    ):
        work = Path(tmp)
        cache = work / "cache"
        cache.mkdir()
        trees = {"old": old, "new": REPO}
        for dataset in args.datasets:
            prepare_split_cache(dataset, cache)
            samples = work / f"samples-{dataset}"
            n_sites = write_samples(dataset, args.n, samples)
            n_gt = len(load_split(dataset, "test", progress=False).records)
            n_gt = n_gt if args.gt_rows == "all" else min(args.n, n_gt)
            print(
                f"\n## {dataset}: {args.n} rattled test structures ({n_sites} sites) against "
                f"{n_gt} test rows, --jobs {args.jobs}",
                flush=True,
            )

            def run(side: str, tag: str, ds: str = dataset, s: Path = samples) -> dict[str, Any]:
                return run_one(
                    trees[side], ds, s, args.n, args.jobs,
                    work / f"fp-{ds}-{tag}-{side}.sqlite", work / f"m-{ds}-{tag}-{side}.json",
                    args.gt_rows,
                )  # fmt: skip

            build = run("new", "build")
            print(f"one-off build (new, empty ground-truth store): {brief(build)}", flush=True)
            results: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
            for r in range(args.rounds):
                for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    row = run(side, f"r{r}")
                    results[side].append(row)
                    print(f"round {r + 1} {side}: {brief(row)}", flush=True)
                    report[dataset] = {"build": build, "rounds": results, "complete": False}
                    write_report(args.json, report)
            identical = all(
                same_values(row["values"], build["values"])
                for rows in results.values()
                for row in rows
            )
            print(f"\nmetric values identical on both sides and in every run: {identical}")
            print(TABLE_HEADER)
            print(summarise(results, "wall_s", "wall s", lambda v: f"{v:.1f}"))
            print(summarise(results, "cpu_s", "CPU s", lambda v: f"{v:.1f}"))
            print(load_line(results))
            print(
                f"one-off build of the ground-truth store: wall {build['wall_s']:.1f} s, "
                f"CPU {build['cpu_s']:.1f} s (a new-side run that also computes the "
                f"{n_gt} ground-truth fingerprints)"
            )
            medians = {
                side: {
                    stage: statistics.median(row["stages"].get(stage, 0.0) for row in rows)
                    for stage in rows[0]["stages"]
                }
                for side, rows in results.items()
            }
            print(f"median stage times (s): {json.dumps(medians)}")
            report[dataset] = {
                "build": build,
                "rounds": results,
                "identical_values": identical,
                "n_sites": n_sites,
                "n_gt": n_gt,
                "complete": True,
            }
    write_report(args.json, report)


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    """Write the runs so far as JSON (after every run, so an interrupted benchmark keeps them)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
