"""Build and evaluate the registry cards of the shipped checkpoints (generators/zoo/registry.json).

Two steps, each recorded in the card with its command:

    # 1. export the run's checkpoint (EMA weights) into the package and write its training record
    .venv/bin/python benchmarks/zoo_card.py card --name diffcsp-perov5-csp --run RUN_DIR \\
        --task csp --description "DiffCSP CSP on perov_5, CPU budget"

    # 2. sample the test split with the shipped file and evaluate it with the papers' protocol
    .venv/bin/python benchmarks/zoo_card.py evaluate --name diffcsp-perov5-csp --limit 512

RUN_DIR is a trainer run directory (config.json, metrics.jsonl, best.pt/last.pt). When it was
trained with the background driver, ``driver.log`` (start/end stamps of each resumed segment)
and ``time.log`` (GNU time -v of each segment) give the wall and CPU time; otherwise the sum
of the epochs' seconds is used and the CPU time is left out.

``evaluate`` runs ``dftloop sample --checkpoint NAME --csp-split SPLIT --limit N`` and
``dftloop evaluate SAMPLE_DIR --protocol diffcsp --no-coverage``, times the sampling (wall and
CPU of the child process) and replaces the card's metric rows of that protocol, k and split.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's code and registry, also from a git worktree

from analysis.paper_numbers import GENERATION_METRICS  # noqa: E402
from dftloop_io.samples import atomic_write_text  # noqa: E402
from generators.model_zoo import export_checkpoint  # noqa: E402

ZOO_DIR = REPO / "generators" / "zoo"
REGISTRY_FILE = ZOO_DIR / "registry.json"
DFTLOOP = [sys.executable, "-m", "flows.cli"]


def _registry() -> dict[str, Any]:
    return json.loads(REGISTRY_FILE.read_text())


def _save(registry: dict[str, Any]) -> None:
    registry["models"].sort(key=lambda c: c["name"])
    # atomic, so that a process reading the registry never sees half a file
    atomic_write_text(REGISTRY_FILE, json.dumps(registry, indent=1, ensure_ascii=False) + "\n")


def _split_hash(dataset: str, splits: tuple[str, ...] = ("train", "val")) -> str:
    """sha256 over the material ids of the splits, in order (what the model was trained on)."""
    from generators.data import load_split

    digest = hashlib.sha256()
    for split in splits:
        records = load_split(dataset, split, progress=False).records
        digest.update(f"{split}:{len(records)}\n".encode())
        for record in records:
            digest.update(f"{record.material_id}\n".encode())
    return digest.hexdigest()


def _times(run: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall and CPU minutes of a run, saying where they are incomplete.

    ``epoch_minutes``: the sum of the epochs' own times (``metrics.jsonl``). With a
    ``driver.log`` whose every segment has its end stamp, ``wall_minutes`` is the sum of the
    segments; otherwise (a segment was stopped without one) the epoch sum. ``cpu_minutes`` is
    GNU time's user + system over all segments when ``time.log`` has a record of each;
    otherwise it is ``None`` and ``cpu_minutes_recorded`` holds the recorded part (a lower
    bound; a one-thread training uses at most ``epoch_minutes`` of CPU in its epochs).
    """
    epoch_minutes = round(sum(float(r.get("seconds") or 0) for r in records) / 60, 1)
    out: dict[str, Any] = {"epoch_minutes": epoch_minutes, "wall_minutes": epoch_minutes}
    driver, timing = run / "driver.log", run / "time.log"
    segments = 1
    if driver.is_file():
        stamps = re.findall(r"^(start|end) (\S+)", driver.read_text(), flags=re.M)
        wall, started, ended = 0.0, None, 0
        for kind, stamp in stamps:
            moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            if kind == "start":
                started = moment
            elif started is not None:
                wall += (moment - started).total_seconds()
                started, ended = None, ended + 1
        segments = sum(1 for kind, _ in stamps if kind == "start")
        out["segments"] = segments
        if ended == segments:
            out["wall_minutes"] = round(wall / 60, 1)
        else:
            out["wall_source"] = (
                f"sum of the epochs' times: {segments - ended} of {segments} segments were "
                "stopped without an end stamp"
            )
    if timing.is_file():
        text = timing.read_text()
        users = re.findall(r"User time \(seconds\): (\S+)", text)
        cpu = sum(float(x) for x in users)
        cpu += sum(float(x) for x in re.findall(r"System time \(seconds\): (\S+)", text))
        if len(users) >= segments:
            out["cpu_minutes"] = round(cpu / 60, 1)
        else:
            out["cpu_minutes"] = None
            out["cpu_minutes_recorded"] = round(cpu / 60, 1)
            out["cpu_note"] = (
                f"GNU time recorded {len(users)} of {segments} segments (the others were "
                f"stopped before it could): at least {cpu / 60:.1f} CPU min; one thread uses "
                f"at most the epochs' {epoch_minutes} min"
            )
    return out


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every non-dict value of a nested dict."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def train_command(model: str, dataset: str, config: dict[str, Any]) -> str:
    """The ``dftloop train`` command that rebuilds ``config`` (a run's resolved configuration).

    Every model or train value that differs from the named configuration becomes a
    ``--set section.key=value`` (JSON values, which ``--set`` reads as YAML).
    """
    from generators.configs import load_config

    name = config.get("name")
    base = load_config(model, name, dataset)
    wanted = _leaves({"model": config["model"], "train": config["train"]})
    named = _leaves({"model": base["model"], "train": base["train"]})
    sets = [
        "--set " + shlex.quote(f"{key}={json.dumps(value, separators=(',', ':'))}")
        for key, value in sorted(wanted.items())
        if key not in named or named[key] != value
    ]
    words = ["dftloop train", f"--model {model}", f"--dataset {dataset}", f"--config {name}"]
    return " ".join([*words, *sets, "--out RUN_DIR"])


def card_command(args: argparse.Namespace) -> None:
    """Export the checkpoint into generators/zoo and write the card's training record."""
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    source = run / f"{args.weights}.pt"
    file_name = f"{args.name}.pt"
    info = export_checkpoint(source, ZOO_DIR / file_name, dtype=args.dtype)
    last = records[-1]
    best = min((r for r in records if "val" in r), key=lambda r: r["val"]["loss"], default=None)
    training = {
        "config_name": config.get("name"),
        "config": {"model": config["model"], "train": config["train"]},
        "data_split_sha256": _split_hash(config["dataset"]),
        "epochs": last["epoch"],
        "checkpoint": f"{args.weights}.pt ({info['weights']} weights, epoch {info['epoch']})",
        "final_train_loss": round(last["train"]["loss"], 5),
        "final_val_loss": round(last["val"]["loss"], 5) if "val" in last else None,
        "best_val_loss": round(best["val"]["loss"], 5) if best else None,
        "dtype": args.dtype,
        "device": "cpu, 1 thread",
        "command": train_command(args.model, config["dataset"], config),
        "resume_command": train_command(args.model, config["dataset"], config)
        + " --resume RUN_DIR/last.pt",
        **_times(run, records),
    }
    registry = _registry()
    old = next((c for c in registry["models"] if c["name"] == args.name), {})
    card = {
        "name": args.name,
        "model": args.model,
        "dataset": config["dataset"],
        "task": args.task,
        "file": file_name,
        "sha256": info["sha256"],
        "size_bytes": info["size_bytes"],
        "description": args.description or old.get("description", ""),
        "training": training,
        # metrics measured with other weights are stale
        "metrics": old.get("metrics", []) if old.get("sha256") == info["sha256"] else [],
    }
    registry["models"] = [c for c in registry["models"] if c["name"] != args.name] + [card]
    _save(registry)
    print(json.dumps(card, indent=1))


# composition metrics have no meaning on a one-element dataset (the papers print "–" there)
COMPOSITION_METRICS = ("comp_validity", "wdist_num_elems")
ONE_ELEMENT_DATASETS = ("carbon_24",)

# the card's task -> (the papers' task name, the metrics recorded, what `dftloop sample` draws)
TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "csp": ("csp", ("match_rate", "rmse")),
    "reconstruction": ("reconstruction", ("match_rate", "rmse")),
    "generate": ("generation", GENERATION_METRICS),
}


def _paper(model: str, dataset: str, task: str, metric: str, k: int) -> tuple[Any, str | None]:
    from analysis.paper_numbers import paper_for_model

    try:
        entry = paper_for_model(model, dataset, task, metric)
    except Exception:
        return None, None
    if entry is None or (task == "csp" and entry.k is not None and entry.k != k):
        return None, None
    value = entry.as_fraction()
    return (None if value is None else round(value, 6)), entry.source


def _task(card: dict[str, Any], args: argparse.Namespace) -> str:
    """The task evaluated: ``--task`` when given (a VAE both reconstructs and generates), else
    the card's own."""
    return args.task or card.get("task", "csp")


def _sample_command(card: dict[str, Any], args: argparse.Namespace, out: Path) -> list[str]:
    """``dftloop sample`` for the task: CSP of a split, reconstruction, or N draws."""
    task = _task(card, args)
    if task == "csp":
        what = ["--csp-split", args.split, "--k", str(args.k), "--limit", str(args.limit)]
    elif task == "reconstruction":
        what = ["--reconstruct", args.split, "--limit", str(args.limit)]
    elif task == "generate":
        what = ["--n", str(args.limit)]
    else:
        raise SystemExit(f"card {card['name']!r}: unknown task {task!r} (one of {sorted(TASKS)})")
    return [
        *DFTLOOP,
        "sample",
        "--checkpoint",
        card["name"],
        *what,
        "--out",
        str(out),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
        "--no-progress",
    ]


def _evaluate_command(
    card: dict[str, Any], args: argparse.Namespace, out: Path, metrics_file: Path
) -> list[str]:
    """``dftloop evaluate`` with the papers' protocol for the task."""
    if _task(card, args) == "generate":
        protocol = []  # validity, COV (CrystalNN fingerprints) and the Wasserstein distances
    else:
        protocol = ["--protocol", args.protocol, "--no-coverage"]
    return [
        *DFTLOOP,
        "evaluate",
        str(out),
        "--dataset",
        card["dataset"],
        "--gt-split",
        args.split,
        *protocol,
        "--out",
        str(metrics_file),
        "--jobs",
        str(args.jobs),
    ]


def evaluate_command(args: argparse.Namespace) -> None:
    """Sample with the shipped checkpoint, evaluate, and record the metric rows."""
    registry = _registry()
    card = next(c for c in registry["models"] if c["name"] == args.name)
    task = _task(card, args)
    paper_task, metrics = TASKS[task]
    out = Path(args.out or REPO / "dftloop-runs" / "zoo-eval" / f"{args.name}-{task}-{args.split}")
    sample = _sample_command(card, args, out)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    subprocess.run(sample, check=True, cwd=REPO)
    wall = time.perf_counter() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    metrics_file = out / "metrics.json"
    evaluate = _evaluate_command(card, args, out, metrics_file)
    subprocess.run(evaluate, check=True, cwd=REPO)
    found = json.loads(metrics_file.read_text())["metrics"]
    protocol = args.protocol if task != "generate" else "generation"
    k = args.k if task == "csp" else None

    def shown(cmd: list[str]) -> str:
        """The command as a user types it, paths relative to the checkout."""
        words = [x.replace(f"{REPO}/", "") for x in ["dftloop", *cmd[3:]]]
        return " ".join(shlex.quote(x) for x in words)

    rows = []
    for metric in metrics:
        if card["dataset"] in ONE_ELEMENT_DATASETS and metric in COMPOSITION_METRICS:
            continue
        entry = found.get(f"{args.protocol}.{metric}") or found.get(metric)
        if entry is None or entry.get("value") is None:
            continue
        value = entry["value"]
        paper, source = _paper(card["model"], card["dataset"], paper_task, metric, args.k)
        label = f"csp {metric} (k={args.k})" if task == "csp" else f"{paper_task} {metric}"
        rows.append(
            {
                "name": label,
                "metric": metric,
                "value": round(float(value), 4),
                "protocol": protocol,
                "k": k,
                "split": args.split,
                "n": args.limit,
                "paper": paper,
                "paper_source": source,
                "sampling_wall_minutes": round(wall / 60, 1),
                "sampling_cpu_minutes": round(cpu / 60, 1),
                "command": f"{shown(sample)} && {shown(evaluate)}",
                "measured": dt.date.today().isoformat(),
            }
        )
    # the registry as it is now: other cards (or this card's training record) may have been
    # written while this evaluation ran
    registry = _registry()
    card = next(c for c in registry["models"] if c["name"] == args.name)
    keep = [
        r
        for r in card.get("metrics", [])
        if (r.get("protocol"), r.get("k"), r.get("split")) != (protocol, k, args.split)
    ]
    card["metrics"] = rows + keep
    _save(registry)
    print(json.dumps(rows, indent=1))


def main() -> None:
    """Parse the command line and run ``card`` or ``evaluate``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    card = sub.add_parser("card", help="export a run's checkpoint and write its card")
    card.add_argument("--name", required=True)
    card.add_argument("--run", required=True)
    card.add_argument("--model", default="diffcsp")
    card.add_argument("--task", default="csp")
    card.add_argument("--weights", default="best", choices=("best", "last"))
    card.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    card.add_argument("--description", default="")
    ev = sub.add_parser("evaluate", help="sample the test split and record the metrics")
    ev.add_argument("--name", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument(
        "--limit", type=int, default=512, help="targets (CSP, reconstruction) or draws (generate)"
    )
    ev.add_argument("--task", default=None, choices=sorted(TASKS), help="default: the card's task")
    ev.add_argument("--k", type=int, default=1)
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--protocol", default="diffcsp")
    ev.add_argument("--jobs", type=int, default=1)
    ev.add_argument("--out", default=None)
    args = parser.parse_args()
    (card_command if args.command == "card" else evaluate_command)(args)


if __name__ == "__main__":
    main()
