"""The idle backstop on the local cloud: the alarm (no heartbeat AND idle CPU, metric math)
invokes the train function, which terminates only a trainer that is silent and idle.

LOCALCLOUD_TRAINER_CMD replaces the trainer in the instance's "container". Local alarm period
3 s x 2 periods (custom.localCloud in infra/serverless.yml)."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lambdas.core import registry
from localcloud.cloud import LocalCloud
from tests.support.clouds import narrator, print_function_log
from tests.support.retrain import BATCH, driver, instances, runs, upload, wait_for

PERIOD_S, PERIODS = 3, 2
WINDOW_S = PERIOD_S * PERIODS

# A trainer that is slow but progressing: one phase within its budget, blocked (no CPU) for
# three alarm windows, beating from trainer/heartbeat.py's thread, then done.
SLOW_TRAINER = """
import os, sys, time
from trainer import heartbeat
from trainer.imds import Imds
instance_id = Imds(os.environ["IMDS_ENDPOINT"], 1.0).instance_id()
beat = heartbeat.begin(instance_id, period_s=float(os.environ["HEARTBEAT_PERIOD_S"]))
heartbeat.enter(heartbeat.FIT)
time.sleep(float(sys.argv[1]))
heartbeat.end()
open(sys.argv[2], "w").write(str(beat.sent))
"""


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    local = LocalCloud(
        tmp_path / "state",
        schedule_overrides={"traffic": {"enabled": False}},
        function_log=tmp_path / "functions.log",
        web_dir=None,
        say=narrator(),
    )
    with local:
        yield local
    print_function_log(tmp_path / "functions.log")


def launched(cloud: LocalCloud) -> dict[str, object]:
    return wait_for(
        "a run with an instance", lambda: next((r for r in runs(cloud).values() if "instance_id" in r), None)
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_backstop_e2e_terminates_a_silent_idle_trainer_and_the_run_ends_interrupted(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    hang = f"echo $(date +%s) > {shlex.quote(str(started))}; exec sleep 600"
    monkeypatch.setenv("LOCALCLOUD_TRAINER_CMD", f"/bin/sh -c {shlex.quote(hang)}")
    upload(cloud, BATCH, seed=11)
    run = launched(cloud)
    instance_id = str(run["instance_id"])
    evaluator = driver(cloud, "alarms")
    wait_for("the alarm's function to terminate the instance", lambda: instance_id in evaluator.terminated)
    killed_at = time.time()
    hung_since = float(wait_for("the hung trainer to start", lambda: started.read_text().strip()))
    # The window (2 x 3 s), at most one period until it is complete, one evaluation, the
    # function's invocation: well within 4 windows, even on a shared machine.
    assert killed_at - hung_since <= 4 * WINDOW_S
    assert evaluator.invoked[0] == (f"autoretrain-local-train-{run['version']}", "train")
    assert evaluator.refused == []  # no EC2 action on the math alarm: the function acted
    runner = driver(cloud, "instances")
    wait_for("the instance runner to stop the hung work", lambda: instance_id in runner.endings)
    assert runner.endings[instance_id] == "terminated"

    ended = wait_for(
        "the run to be interrupted",
        lambda: (r := runs(cloud)[str(run["version"])])["status"] == registry.INTERRUPTED and r,
        60,
    )
    assert ended["failure_kind"] == registry.INFRASTRUCTURE  # retried, like any dead instance
    assert ended["reason"] == "the instance was terminated before the trainer recorded an outcome"


@pytest.mark.slow
@pytest.mark.e2e
def test_backstop_e2e_spares_a_slow_trainer_that_beats(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    done = tmp_path / "done"
    command = [sys.executable, "-c", SLOW_TRAINER, str(3 * WINDOW_S), str(done)]
    monkeypatch.setenv("LOCALCLOUD_TRAINER_CMD", shlex.join(command))
    upload(cloud, BATCH, seed=12)
    run = launched(cloud)
    instance_id = str(run["instance_id"])
    runner = driver(cloud, "instances")
    wait_for("the slow trainer's instance to end", lambda: instance_id in runner.endings, 120)
    assert runner.endings[instance_id] == "shutdown" and runner.exit_codes[instance_id] == 0
    assert int(done.read_text()) >= 3 * WINDOW_S // PERIOD_S  # it beat all along
    evaluator = driver(cloud, "alarms")
    assert evaluator.invoked == [] and evaluator.terminated == []
    assert instances(cloud)[instance_id] == "terminated"  # by its own shutdown
