"""deploy/prefect.yaml against the flows it deploys: every parameter a deployment or one of its
schedules passes is a parameter of the flow, with a value the flow accepts; the nightly schedule
asks for the full table (every stage, S.U.N., the docs block)."""

from __future__ import annotations

import copy
import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml

PREFECT_YAML = Path(__file__).resolve().parents[2] / "deploy" / "prefect.yaml"


def _load() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


def _flow(entrypoint: str) -> Any:
    """The flow object named by ``path/to/module.py:function``."""
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def _problems(config: dict[str, Any]) -> list[str]:
    """Every parameter of a deployment or schedule that its flow would not accept.

    Names against the flow's signature; values against its parameter schema, the way the Prefect
    server checks a flow run's parameters (required ones may be given at run time).
    """
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    found = []
    for deployment in config["deployments"]:
        flow = _flow(deployment["entrypoint"])
        where = f"{deployment['name']} ({deployment['entrypoint']})"
        accepted = set(inspect.signature(flow.fn).parameters)
        schema = parameter_schema(flow).model_dump_for_openapi()
        base = deployment.get("parameters") or {}
        sets = [("parameters", base)]
        for i, schedule in enumerate(deployment.get("schedules") or []):
            sets.append((f"schedules[{i}].parameters", schedule.get("parameters") or {}))
        for label, params in sets:
            for key in sorted(set(params) - accepted):
                found.append(f"{where}: {label}: {key!r} is not a parameter of {flow.name}")
            merged = {**base, **params}  # what a run gets: the schedule's over the deployment's
            for error in validate(merged, schema, ignore_required=True):
                found.append(f"{where}: {label}: {'.'.join(map(str, error.path))}: {error.message}")
    return found


def test_every_deployment_parameter_is_a_flow_parameter() -> None:
    assert _problems(_load()) == []


def _missing_protocol(config: dict[str, Any]) -> list[str]:
    """Deployments whose flow takes ``protocol`` but whose parameters do not state it."""
    return [
        f"{d['name']} ({d['entrypoint']})"
        for d in config["deployments"]
        if "protocol" in inspect.signature(_flow(d["entrypoint"]).fn).parameters
        and "protocol" not in (d.get("parameters") or {})
    ]


def test_every_relaxing_deployment_states_its_protocol() -> None:
    """A deployment whose flow relaxes under a protocol shows ``protocol`` in its parameters
    (``null``: the dataset's), so that the UI and ``prefect deployment inspect`` show the knob;
    the check fires when one is dropped."""
    config = _load()
    assert _missing_protocol(config) == []
    stated = [d for d in config["deployments"] if "protocol" in (d.get("parameters") or {})]
    names = {f"{d['entrypoint'].split(':')[1]}/{d['name']}" for d in stated}
    assert {
        "generate_and_relax/local",
        "generate_and_relax/slurm",
        "nightly_benchmark/nightly",
        "nightly_benchmark/smoke",
        "stability_experiment/carbon-cpu",
        "optimize_property_flow/local",
        "relax_structures/local",
    } <= names
    assert all(d["parameters"]["protocol"] is None for d in stated)  # the dataset's
    dropped = copy.deepcopy(config)
    smoke = next(d for d in dropped["deployments"] if d["name"] == "smoke")
    del smoke["parameters"]["protocol"]
    assert _missing_protocol(dropped) == ["smoke (flows/nightly.py:nightly_benchmark)"]


def test_a_wrong_name_or_value_is_reported() -> None:
    config = _load()
    nightly = next(d for d in config["deployments"] if d["name"] == "nightly")
    misspelt = copy.deepcopy(config)
    schedule = next(d for d in misspelt["deployments"] if d["name"] == "nightly")["schedules"][0]
    schedule["parameters"]["sun_references"] = 8
    assert _problems(misspelt) == [
        "nightly (flows/nightly.py:nightly_benchmark): schedules[0].parameters: "
        "'sun_references' is not a parameter of nightly-benchmark"
    ]
    wrong_type = copy.deepcopy(config)
    next(d for d in wrong_type["deployments"] if d["name"] == "nightly")["parameters"]["n"] = "x"
    where = "nightly (flows/nightly.py:nightly_benchmark): "
    problems = _problems(wrong_type)  # the hand-started run and the scheduled one
    assert [p.split(": n: ")[0] for p in problems] == [
        f"{where}parameters",
        f"{where}schedules[0].parameters",
    ], problems
    assert all("'x' is not of type 'integer'" in p for p in problems), problems
    assert nightly["parameters"]["n"] != "x"


def test_the_nightly_schedule_asks_for_the_full_table() -> None:
    """The scheduled run: checkpoints trained when missing, all three stages, the relaxed
    training structures as the S.U.N. hull, the evaluation capped, the docs block written."""
    nightly = next(d for d in _load()["deployments"] if d["name"] == "nightly")
    flow = _flow(nightly["entrypoint"])
    defaults = {
        k: p.default for k, p in inspect.signature(flow.fn).parameters.items() if k != "return"
    }
    [schedule] = nightly["schedules"]
    assert schedule["active"] is True and schedule["cron"] == "0 2 * * *"
    run = {**defaults, **nightly["parameters"], **schedule["parameters"]}
    assert run["models"] is None  # all four generators
    assert run["train_missing"] is True and run["train_max_minutes"] > 0
    assert run["relax"] is True and run["generate"] is True
    assert run["sun_reference"] > 0
    assert run["eval_limit"] is not None and run["eval_limit"] >= run["n"]
    assert run["write_docs"] is True and run["docs_note"]
    # a run started by hand computes the same table but leaves docs/benchmarks.md alone
    assert nightly["parameters"].get("write_docs", defaults["write_docs"]) is False


def test_the_smoke_nightly_is_small_and_apart() -> None:
    """nightly-benchmark/smoke: every stage of the nightly chain, minutes not hours, and a
    project directory of its own so that its 1-minute checkpoints are never the nightly's."""
    deployments = _load()["deployments"]
    nightly = next(d for d in deployments if d["name"] == "nightly")
    smoke = next(d for d in deployments if d["name"] == "smoke")
    assert smoke["entrypoint"] == nightly["entrypoint"]
    assert not smoke.get("schedules")  # started by hand only
    run = smoke["parameters"]
    assert run["train_missing"] is True and run["train_max_minutes"] <= 1
    assert run["generate"] is True and run["relax"] is True
    assert run["n"] <= 2 and run["eval_limit"] <= 2 and run["eval_coverage"] is False
    assert run["relaxer_settings"]["max_steps"] <= 50
    assert max(run["sample_steps"].values()) <= 500  # the CDVAE family's chains shortened
    assert run["home"] == "{{ $DFTLOOP_HOME }}/nightly-smoke"
    assert not run.get("write_docs")
    assert smoke["work_pool"]["name"] == "local"
