"""Coalescing and retries on the local cloud: the real user-data, trainer and train function.

LOCALCLOUD_TRAINER_CMD puts a stand-in in front of ``python -m trainer``: it waits (the instance
booting and pulling its image, minutes on AWS) or makes the first attempt's scan fail as an
unreachable endpoint would, then runs the real trainer in its place.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lambdas.core import registry
from localcloud.cloud import LocalCloud
from tests.support.clouds import narrator, print_function_log
from tests.support.retrain import BATCH, finished_run, lock_state, runs, settled, upload, wait_for

TRAINER = "import os, sys\nos.execv(sys.executable, [sys.executable, '-m', 'trainer'])\n"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    local = LocalCloud(
        tmp_path / "state",
        schedule_overrides={"traffic": {"enabled": False}},
        # The waiting stand-in uses no CPU: keep the idle alarm from ending it.
        environment={"ALARM_CPU_THRESHOLD": "0"},
        function_log=tmp_path / "functions.log",
        web_dir=None,
        say=narrator(),
    )
    with local:
        yield local
    print_function_log(tmp_path / "functions.log")


def trainer_after(prelude: str) -> str:
    script = prelude + TRAINER
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"


@pytest.mark.slow
@pytest.mark.e2e
def test_coalesce_e2e_a_burst_before_the_scan_leads_to_exactly_one_run(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    wait = (
        f"import os, time\nopen({str(started)!r}, 'w').close()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.1)\n"
    )
    monkeypatch.setenv("LOCALCLOUD_TRAINER_CMD", trainer_after(wait))
    upload(cloud, BATCH, seed=1)
    wait_for("the trainer's instance to boot", started.exists, 120)
    launch_ms = lock_state(cloud).launch_ms
    upload(cloud, BATCH, seed=2)  # after the launch, before the scan: enough for a run of its own
    wait_for("the burst to be pending", lambda: lock_state(cloud).fresh(launch_ms) >= 200, 60)
    go.touch()
    run = wait_for("the run to finish", lambda: finished_run(cloud, set()), 180)
    wait_for("the run to be cleaned up", lambda: settled(cloud), 60)
    assert run["status"] == registry.PUBLISHED, run.get("error")
    assert run["sample_count"] == 2 * BATCH and run["scan_started_ms"] > launch_ms
    time.sleep(5)  # two firings of the train function's schedule: still nothing to start
    state = lock_state(cloud)
    assert set(runs(cloud)) == {run["version"]}
    assert state.holder is None and state.pending == 0 and state.watermark_ms >= launch_ms


@pytest.mark.slow
@pytest.mark.e2e
def test_retry_e2e_an_unreachable_endpoint_is_retried_by_the_schedule(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / "failed-once"
    fail_once = (
        "import os\n"
        f"if not os.path.exists({str(marker)!r}):\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    from botocore.exceptions import EndpointConnectionError\n"
        "    from trainer import data, run\n"
        "    def unreachable(*args, **kwargs):\n"
        "        raise EndpointConnectionError(endpoint_url='https://dynamodb.us-east-1.amazonaws.com')\n"
        "    data.scan = unreachable\n"
        "    raise SystemExit(run.main())\n"
    )
    monkeypatch.setenv("LOCALCLOUD_TRAINER_CMD", trainer_after(fail_once))
    upload(cloud, BATCH, seed=3)
    failed = wait_for("the first attempt to fail", lambda: finished_run(cloud, set()), 120)
    assert failed["status"] == registry.FAILED and failed["failure_kind"] == "infrastructure"
    assert "EndpointConnectionError" in failed["error"]
    retried = wait_for("the retry to finish", lambda: finished_run(cloud, {failed["version"]}), 180)
    wait_for("everything to be cleaned up", lambda: settled(cloud), 60)
    assert retried["status"] == registry.PUBLISHED and retried["trigger"]["attempt"] == 2
    assert runs(cloud)[failed["version"]]["retry"]["attempt"] == 1
    assert set(runs(cloud)) == {failed["version"], retried["version"]}
    # Started by the schedule, with no new data.
    lines = (tmp_path / "functions.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    [launched] = [e for e in events if e.get("launch") == retried["version"]]
    assert launched["event"] == "train_tick"
