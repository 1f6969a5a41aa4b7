"""Mark flow runs whose process died as Crashed: heartbeats plus a server automation.

A self-hosted Prefect server does not notice by itself that a flow-run process was killed (a
machine crash, ``kill -9``, an out-of-memory kill): the run stays ``Running``. Every flow run
(subflows included) sends a ``prefect.flow-run.heartbeat`` event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds from a background thread. The automation built here
is Prefect's documented answer ("detect zombie flows"): a *proactive* event trigger that, after
each heartbeat of a flow run, expects another event of the same flow run (a heartbeat or a state
change) within ``missed × heartbeat`` seconds, and otherwise sets that run to ``CRASHED``.

``deploy/deploy.sh`` runs ``python -m flows.crash_detection``, which creates the automation or
updates the one of the same name (rerunning it never duplicates it).
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from uuid import UUID

from prefect.automations import AutomationCore
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

AUTOMATION_NAME = "dftloop: mark unresponsive flow runs crashed"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
MIN_HEARTBEAT_SECONDS = 30
"""Prefect sends heartbeats at most every 30 s (``flows.heartbeat_frequency`` is ≥ 30)."""


def crash_message(window: timedelta) -> str:
    """The state message of a run marked Crashed by the automation."""
    seconds = int(window.total_seconds())
    return (
        f"No heartbeat for {seconds} s: the flow-run process died (killed, out of memory, "
        "machine down). Rerun it: finished samples, checkpoints and stored relaxations are reused."
    )


def crash_detection_automation(heartbeat_seconds: int, missed: int = 3) -> AutomationCore:
    """Return the automation that marks a flow run Crashed after ``missed`` lost heartbeats.

    Parameters
    ----------
    heartbeat_seconds
        The flow runs' heartbeat period (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, ≥ 30 s).
    missed
        Heartbeats a run may miss before it is marked Crashed (≥ 2: a single late beat on a
        loaded machine must not crash a healthy run).

    Returns
    -------
    prefect.automations.AutomationCore
        Not yet on a server (:func:`ensure_crash_detection` creates it).

    Raises
    ------
    ValueError
        For a heartbeat below 30 s or fewer than 2 missed beats.
    """
    if heartbeat_seconds < MIN_HEARTBEAT_SECONDS:
        raise ValueError(
            f"heartbeat period {heartbeat_seconds} s: Prefect sends at most one heartbeat "
            f"every {MIN_HEARTBEAT_SECONDS} s"
        )
    if missed < 2:
        raise ValueError(f"missed={missed}: allow at least 2 missed heartbeats")
    window = timedelta(seconds=heartbeat_seconds * missed)
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(
            f"A flow run without any event for {int(window.total_seconds())} s after a "
            f"heartbeat ({missed} heartbeats of {heartbeat_seconds} s) is set to Crashed."
        ),
        trigger=EventTrigger(
            after={HEARTBEAT_EVENT},
            # any event of the same run: a heartbeat, or a state change (Completed, Failed,
            # Cancelled, Crashed and custom state names alike)
            expect={"prefect.flow-run.*"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=crash_message(window))],
    )


def heartbeat_frequency() -> int | None:
    """The heartbeat period of the installed Prefect's settings (``None``: heartbeats off)."""
    from prefect.settings import get_current_settings

    return get_current_settings().flows.heartbeat_frequency


def ensure_crash_detection(heartbeat_seconds: int | None = None, missed: int = 3) -> UUID:
    """Create the crash-detection automation on the server of ``PREFECT_API_URL``, or update it.

    Parameters
    ----------
    heartbeat_seconds
        Heartbeat period of the flow runs (default: this process's
        ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``; the workers must run with the same value).
    missed
        Heartbeats a run may miss before it is marked Crashed.

    Returns
    -------
    uuid.UUID
        The automation's id.

    Raises
    ------
    ValueError
        When heartbeats are off (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` unset in an old Prefect).
    """
    from prefect.client.orchestration import get_client

    heartbeat_seconds = heartbeat_seconds or heartbeat_frequency()
    if heartbeat_seconds is None:
        raise ValueError(
            "flow-run heartbeats are off: set PREFECT_FLOWS_HEARTBEAT_FREQUENCY (source "
            "deploy/env.sh) for the workers and this command"
        )
    automation = crash_detection_automation(int(heartbeat_seconds), missed)
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(AUTOMATION_NAME)
        if not found:
            return client.create_automation(automation)
        first, *others = found
        client.update_automation(first.id, automation)
        for other in others:  # duplicates left by hand: one automation is enough
            client.delete_automation(other.id)
        return first.id


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.crash_detection [--heartbeat S] [--missed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heartbeat", type=int, default=None, help="seconds (default: setting)")
    parser.add_argument("--missed", type=int, default=3, help="missed heartbeats (default 3)")
    args = parser.parse_args(argv)
    heartbeat = args.heartbeat or heartbeat_frequency()
    automation_id = ensure_crash_detection(heartbeat, args.missed)
    print(
        f"automation {AUTOMATION_NAME!r} ({automation_id}): a flow run silent for "
        f"{(heartbeat or 0) * args.missed} s after a heartbeat is marked Crashed"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
