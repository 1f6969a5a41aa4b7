"""The relaxation fan-out's Dask task runner: worker threads or processes, and their Prefect API."""

from __future__ import annotations

import pytest

from flows.runners import build_task_runner, local_processes, worker_api_environment


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, False),
        ({"n_workers": 1}, False),
        ({"n_workers": 2}, True),
        ({"processes": True}, True),
        ({"n_workers": 3, "processes": False}, False),
    ],
)
def test_local_workers_are_threads_unless_several_or_asked(kwargs: dict, expected: bool) -> None:
    assert local_processes(kwargs) is expected


def test_local_runner_settings() -> None:
    """One worker thread by default; worker processes get an ``env`` (empty outside a run)."""
    default = build_task_runner("local").cluster_kwargs
    assert default["processes"] is False and default["n_workers"] == 1 and "env" not in default
    several = build_task_runner("local", {"n_workers": 2, "env": {"A": "1"}}).cluster_kwargs
    assert several["processes"] is True and several["env"] == {"A": "1"}
    with pytest.raises(ValueError, match="unknown cluster"):
        build_task_runner("cloud")


def test_worker_processes_get_the_flow_runs_api_when_none_is_configured(harness: None) -> None:
    """Without PREFECT_API_URL (the ephemeral API of a script), the worker processes are given
    the URL the flow run talks to; with it configured they inherit it and get nothing."""
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow
    def probe() -> tuple[dict[str, str], dict[str, str], str]:
        configured = worker_api_environment()
        url = str(PREFECT_API_URL.value())
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            assert not PREFECT_API_URL.value()
            unconfigured = worker_api_environment()
        return configured, unconfigured, url

    configured, unconfigured, url = probe()
    assert configured == {}
    assert unconfigured["PREFECT_API_URL"].rstrip("/") == url.rstrip("/")
    assert worker_api_environment() == {}  # outside a flow run
