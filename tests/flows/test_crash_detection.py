"""The crash-detection automation and the environment the scripts give Prefect (no server).

The automation's effect on a real server (a killed run becomes Crashed) is tested in
test_services.py (``slow``); here: its definition, and that deploy/env.sh sets the settings the
installed Prefect reads under the names it reads them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from .conftest import DEPLOY, ROOT


def test_the_automation_crashes_a_run_silent_for_three_heartbeats() -> None:
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    from flows.crash_detection import AUTOMATION_NAME, crash_detection_automation

    automation = crash_detection_automation(30)
    assert automation.name == AUTOMATION_NAME and automation.enabled
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger)
    # proactive: fires when the expected event does NOT come
    assert trigger.posture == Posture.Proactive and trigger.threshold == 1
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert trigger.expect == {"prefect.flow-run.*"}  # a heartbeat or any state change
    assert trigger.for_each == {"prefect.resource.id"}  # each flow run on its own
    assert trigger.match.get("prefect.resource.id") == ["prefect.flow-run.*"]
    assert trigger.within == timedelta(seconds=90)
    [action] = automation.actions
    assert isinstance(action, ChangeFlowRunState) and action.state == StateType.CRASHED
    assert action.message.startswith("No heartbeat for 90 s")
    assert crash_detection_automation(60, missed=5).trigger.within == timedelta(seconds=300)
    # the JSON the server receives
    sent = json.loads(automation.model_dump_json())
    assert sent["trigger"]["posture"] == "Proactive" and sent["trigger"]["within"] == 90.0
    assert sent["actions"][0]["type"] == "change-flow-run-state"


def test_a_window_that_would_crash_healthy_runs_is_refused() -> None:
    from flows.crash_detection import crash_detection_automation

    with pytest.raises(ValueError, match="at most one heartbeat every 30 s"):
        crash_detection_automation(10)
    with pytest.raises(ValueError, match="at least 2 missed heartbeats"):
        crash_detection_automation(60, missed=1)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DFTLOOP_"))}
    return {**env, **extra}


def test_env_sh_settings_are_read_by_the_installed_prefect(tmp_path: Path) -> None:
    """Heartbeats on (60 s), the trainer's logger routed to the run logs, the API URL from
    the port: as Prefect's own settings object reads them after ``source deploy/env.sh``."""
    probe = (
        "import json; from prefect.settings import get_current_settings as g; s = g(); "
        "print(json.dumps({'heartbeat': s.flows.heartbeat_frequency, "
        "'extra': s.logging.extra_loggers, 'api': s.api.url}))"
    )
    proc = subprocess.run(
        ["bash", "-c", f'source deploy/env.sh && "$PYTHON" -c "{probe}"'],
        cwd=ROOT,
        env=_clean_env(DFTLOOP_HOME=str(tmp_path), PREFECT_SERVER_API_PORT="4711"),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["heartbeat"] == 60
    assert "generators.trainer" in seen["extra"]
    assert seen["api"] == "http://127.0.0.1:4711/api"


def test_env_sh_run_as_a_script_prints_the_exports(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(DEPLOY / "env.sh")],
        env=_clean_env(DFTLOOP_HOME=str(tmp_path), PREFECT_SERVER_API_PORT="4711"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "export PREFECT_API_URL=http://127.0.0.1:4711/api\n" in proc.stdout
    assert f"export PREFECT_HOME={tmp_path / 'prefect'}\n" in proc.stdout


def test_no_hard_coded_port_in_scripts_and_orchestration_docs() -> None:
    """URLs follow PREFECT_SERVER_API_PORT: 4200 appears only as env.sh's default."""
    url_with_port = re.compile(r"https?://[^\s`'\"]*:4200")
    files = [ROOT / "docs" / "orchestration.md", *sorted(DEPLOY.glob("**/*.sh"))]
    for path in files:
        assert not url_with_port.findall(path.read_text()), path
    code = [
        line
        for line in (DEPLOY / "env.sh").read_text().splitlines()
        if "4200" in line and not line.lstrip().startswith("#")
    ]
    assert code == ["export PREFECT_SERVER_API_PORT=${PREFECT_SERVER_API_PORT:-4200}"]
