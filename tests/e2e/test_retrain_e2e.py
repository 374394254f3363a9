"""The whole retraining loop on the local cloud, driven over HTTP like a client would.

Samples go in through ``POST /upload`` (synthetic traffic off, so the data is known); the data
table's stream reaches the train function, which launches a spot instance; the instance runner
runs its real user-data and the trainer; the gate decides; the instance powers itself off;
the model table's stream frees the lock and deletes the alarm; ``/infer`` and ``/s3proxy``
serve the result. Deadlines are generous: the machine is shared, and nothing here is timed.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from lambdas.core import registry
from localcloud.cloud import LocalCloud
from scripts import demo
from tests.support.clouds import keyed, narrator, print_function_log
from tests.support.retrain import (
    BATCH,
    alarms,
    driver,
    finished_run,
    instances,
    latest,
    lock_state,
    runs,
    settled,
    upload,
    wait_for,
)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    said: list[str] = []
    local = LocalCloud(
        tmp_path / "state",
        schedule_overrides={"traffic": {"enabled": False}},
        function_log=tmp_path / "functions.log",
        web_dir=None,
        say=narrator(said),
    )
    with local:
        local.said = said  # type: ignore[attr-defined]
        yield local
    print_function_log(tmp_path / "functions.log")
    assert not (tmp_path / "state" / "endpoints.json").exists()


def infer_version(cloud: LocalCloud) -> str:
    inputs = [
        {"temp": 64.0, "rh": 40, "wind": 0.3, "clo": 0.4},
        {"temp": 86.0, "rh": 60, "wind": 0.05, "clo": 1.0},
    ]
    reply = requests.post(f"{cloud.api_url}/infer", json=inputs, headers=keyed(cloud), timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["predictions"]) == len(inputs) == len(body["simpleResult"])
    return str(body["version"])


@pytest.mark.slow
@pytest.mark.e2e
def test_retrain_e2e_two_cycles_publish_gate_and_clean_up(cloud: LocalCloud) -> None:
    # Cycle 1: enough data for a first model, which must pass GATE_MIN_ACCURACY.
    upload(cloud, BATCH, seed=1)
    first = wait_for("the first run to finish", lambda: finished_run(cloud, set()))
    wait_for("the first run to be cleaned up", lambda: settled(cloud))
    a = first["version"]
    assert first["status"] == registry.PUBLISHED, first.get("gate") or first.get("error")
    assert latest(cloud) == a
    assert first["sample_count"] >= 200
    assert first["market"] == "spot" and first["instance_id"] in instances(cloud)
    assert infer_version(cloud) == a

    # Cycle 2: more data, a second run on all of it; latest moves only if the gate says so.
    upload(cloud, BATCH, seed=2)
    second = wait_for("the second run to finish", lambda: finished_run(cloud, {a}))
    wait_for("the second run to be cleaned up", lambda: settled(cloud))
    b = second["version"]
    assert b != a and b > a
    assert second["sample_count"] > first["sample_count"]
    assert second["gate"]["baseline_version"] == a
    assert second["status"] in (registry.PUBLISHED, registry.REJECTED)
    assert latest(cloud) == (b if second["status"] == registry.PUBLISHED else a)
    assert set(runs(cloud)) == {a, b}

    # Every instance was launched once, powered itself off, and left no alarm behind.
    states = instances(cloud)
    assert set(states) == {first["instance_id"], second["instance_id"]}
    assert set(states.values()) == {"terminated"}
    runner = driver(cloud, "instances")
    wait_for("the instance runner to see both instances end", lambda: len(runner.endings) == 2)
    assert runner.endings == {first["instance_id"]: "shutdown", second["instance_id"]: "shutdown"}
    assert runner.exit_codes == {first["instance_id"]: 0, second["instance_id"]: 0}
    assert alarms(cloud) == []
    assert driver(cloud, "alarms").terminated == []

    # Serving follows latest: /infer (its cache refreshes within MODEL_REFRESH_S) and the proxy.
    current = latest(cloud)
    wait_for("/infer to answer with the latest version", lambda: infer_version(cloud) == current, 120)
    reply = requests.get(f"{cloud.api_url}/s3proxy/latest/model.json", allow_redirects=False, timeout=30)
    assert reply.status_code == 302
    assert f"/models/{current}/model.json?" in reply.headers["Location"]
    model = requests.get(reply.headers["Location"], timeout=30).json()
    paths = [p for group in model["weightsManifest"] for p in group["paths"]]
    assert paths and all(p.startswith(f"../{current}/") for p in paths)


@pytest.mark.slow
@pytest.mark.e2e
def test_retrain_e2e_hung_trainer_is_terminated_by_its_alarm_and_the_run_recovers(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The "container" sleeps with no CPU: only the idle alarm can end this instance.
    pid_file = tmp_path / "hung.pid"
    hang = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(900)"
    monkeypatch.setenv("LOCALCLOUD_TRAINER_CMD", f"{shlex.quote(sys.executable)} -c {shlex.quote(hang)}")
    upload(cloud, BATCH, seed=3)
    hung = wait_for(
        "a run with an instance", lambda: next((r for r in runs(cloud).values() if "instance_id" in r), None)
    )
    instance_id = hung["instance_id"]
    evaluator = driver(cloud, "alarms")
    wait_for("the idle alarm to terminate the instance", lambda: instance_id in evaluator.terminated)
    wait_for("the instance to be terminated", lambda: instances(cloud)[instance_id] == "terminated")
    runner = driver(cloud, "instances")
    wait_for("the instance runner to stop the hung work", lambda: instance_id in runner.endings)
    assert runner.endings[instance_id] == "terminated"
    hung_pid = int(pid_file.read_text())
    assert not psutil.pid_exists(hung_pid) or psutil.Process(hung_pid).status() == psutil.STATUS_ZOMBIE

    # Without any new data, the instance's state-change event ends the run at once: it is
    # interrupted, the lock is free (long before its expiry) and no alarm is left.
    ended = wait_for(
        "the hung run to be interrupted",
        lambda: runs(cloud)[hung["version"]]["status"] == registry.INTERRUPTED,
        60,
    )
    assert ended
    after = runs(cloud)[hung["version"]]
    assert after["reason"] == "the instance was terminated before the trainer recorded an outcome"
    assert lock_state(cloud).holder is None and alarms(cloud) == []
    # The run ends on the first event; the second follows it asynchronously.
    sent = [("train", "shutting-down"), ("train", "terminated")]
    assert wait_for(
        "both state-change events to reach the train function",
        lambda: [(fn, state) for fn, iid, state in runner.events_sent if iid == instance_id] == sent,
        30,
    )
    assert set(runs(cloud)) == {hung["version"]}  # nothing was pending: no run starts

    # New data starts the next (real) trainer right away, which publishes.
    monkeypatch.delenv("LOCALCLOUD_TRAINER_CMD")
    upload(cloud, BATCH, seed=4)
    recovered = wait_for("the next run to finish", lambda: finished_run(cloud, {hung["version"]}))
    wait_for("everything to be cleaned up", lambda: settled(cloud))
    assert recovered["status"] == registry.PUBLISHED
    assert latest(cloud) == recovered["version"]
    assert set(instances(cloud)) == {instance_id, recovered["instance_id"]}
    assert alarms(cloud) == []
    assert lock_state(cloud).holder is None


@pytest.mark.slow
@pytest.mark.e2e
def test_retrain_e2e_data_pending_when_the_instance_dies_starts_the_next_run(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A trainer that keeps the CPU busy until told to hang idle: data arrives while it runs,
    # then the alarm kills it. The retrain that was pending starts from the instance's
    # state-change event, with no further upload.
    go_idle = tmp_path / "go-idle"
    hang = f"import os, time\nwhile not os.path.exists({str(go_idle)!r}): sum(range(100000))\ntime.sleep(900)"
    monkeypatch.setenv("LOCALCLOUD_TRAINER_CMD", f"{shlex.quote(sys.executable)} -c {shlex.quote(hang)}")
    upload(cloud, BATCH, seed=5)
    hung = wait_for(
        "a run with an instance", lambda: next((r for r in runs(cloud).values() if "instance_id" in r), None)
    )
    upload(cloud, BATCH, seed=6)
    # The run's own samples are pending too (until it ends): wait for the ones that came after it.
    wait_for("the new samples to be pending", lambda: (s := lock_state(cloud)).fresh(s.launch_ms) >= 200)
    assert set(runs(cloud)) == {hung["version"]} and lock_state(cloud).holder == hung["version"]
    monkeypatch.delenv("LOCALCLOUD_TRAINER_CMD")  # the next instance runs the real trainer
    go_idle.touch()
    recovered = wait_for("the pending run to finish", lambda: finished_run(cloud, {hung["version"]}))
    wait_for("everything to be cleaned up", lambda: settled(cloud))
    assert runs(cloud)[hung["version"]]["status"] == registry.INTERRUPTED
    assert recovered["status"] == registry.PUBLISHED
    assert recovered["trigger"]["new_samples"] >= 200
    assert driver(cloud, "alarms").terminated == [hung["instance_id"]]
    # Launched by the state-change event, not by a stream batch.
    lines = (tmp_path / "functions.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    [launched] = [e for e in events if e.get("launch") == recovered["version"]]
    assert launched["event"] == "train_instance_ended" and launched["taken_over"] == hung["version"]


@pytest.mark.slow
@pytest.mark.e2e
def test_retrain_e2e_demo_tells_the_whole_story_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.main(["--state-dir", str(tmp_path), "--watch-seconds", "12", "--interval", "3"]) == 0
    out = capsys.readouterr().out
    assert "by source: api 1, traffic" in out  # the scheduled traffic arrived on its own
    assert "by client: default 1, traffic" in out  # each sample names the key that sent it
    story = [
        "HTTP 200",
        "a run starts at 200 new samples",
        "-> train function: launch v",
        "launched (spot)",
        "idle alarm autoretrain-local-train-v",
        "user-data: running the trainer",
        "trainer: epoch   1",
        "trainer: epoch  10",
        "trainer: gate promote: first model",
        "shutdown stand-in: -h now: terminated i-",
        "deleted by the train function when the run ended",
        "instance time for this retrain:",
        "Predictions from POST /infer",
        "The model table",
        "  published  ",  # a row of the model table
        "Stop everything",
    ]
    positions = [out.find(line) for line in story]
    assert -1 not in positions, [line for line, at in zip(story, positions, strict=True) if at < 0]
    assert positions == sorted(positions), out
    # Printed by the instance runner when it notices, so not at a fixed place in the story.
    assert "powered itself off (user-data exited 0)" in out
    assert not (tmp_path / "endpoints.json").exists()
