"""The local cloud keeps its data: tables, objects, runs, the lock and ``latest`` survive a
clean stop and a crash (every process killed with SIGKILL); a run in flight at the crash is
resolved on restart (interrupted, lock freed, alarm removed), nothing is launched again by
accident, and new data leads to a new run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
import requests

from lambdas.core import comfort
from lambdas.core.lock import LockStore
from lambdas.core.registry import Registry
from localcloud import infra
from localcloud.cloud import LocalCloud, forget
from tests.support.clouds import QUIET, keyed, wait

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = infra.ROOT
# A trainer that stays busy (so the idle alarm leaves it alone) until it is killed.
BUSY_TRAINER = f"{sys.executable} -c 'while True: pass'"


def test_state_survives_a_clean_stop_and_fresh_starts_empty(tmp_path: Path) -> None:
    state = tmp_path / "state"
    samples = comfort.generate(3, 1, 0.0)
    with LocalCloud(state, durable=True, drivers=(), schedule_overrides=QUIET, web_dir=None) as cloud:
        reply = requests.post(f"{cloud.api_url}/upload", json=samples, headers=keyed(cloud), timeout=60)
        assert reply.status_code == 200
        key = cloud.api_key
        bucket = cloud.stack.physical["ModelBucket"]
        cloud.client("s3").put_object(Bucket=bucket, Key="models/v1/model.json", Body=b'{"v": 1}')
        registry = Registry(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb"))
        registry.create_run("v20261130T010101Z-aaaa", sample_count=3)
        registry.set_latest("v20261130T010101Z-aaaa", expected=None, reason="test", actor="test")
    with LocalCloud(state, durable=True, drivers=(), schedule_overrides=QUIET, web_dir=None) as again:
        ddb = again.client("dynamodb")
        assert ddb.scan(TableName=again.stack.table_name("DataTable"), Select="COUNT")["Count"] == 3
        body = again.client("s3").get_object(Bucket=bucket, Key="models/v1/model.json")["Body"].read()
        assert body == b'{"v": 1}'
        registry = Registry(again.stack.table_name("ModelTable"), ddb)
        assert registry.latest_version() == "v20261130T010101Z-aaaa"
        # the restored roles still work for the functions (new sessions, same policies)
        assert requests.get(f"{again.api_url}/models", timeout=60).status_code == 200
        # the default client keeps its key: what a user copied still works
        assert again.api_key == key
        reply = requests.post(f"{again.api_url}/upload", json=samples, headers=keyed(again), timeout=60)
        assert reply.status_code == 200, reply.text
    forget(state)
    with LocalCloud(state, durable=True, drivers=(), schedule_overrides=QUIET, web_dir=None) as empty:
        ddb = empty.client("dynamodb")
        assert ddb.scan(TableName=empty.stack.table_name("DataTable"), Select="COUNT")["Count"] == 0


class Process:
    """``python -m localcloud`` in a child process, as a user runs ``make local``."""

    def __init__(self, state: Path, log: Path, **env: str) -> None:
        self.state = state
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALCLOUD_TRAINER"))}
        environ.update(env)
        (state / "endpoints.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "localcloud",
                *("--api-port", "0", "--aws-port", "0", "--state-dir", str(state), "--no-traffic"),
                *("--function-log", str(log), "--duration", "300"),
            ],
            cwd=ROOT,
            env=environ,
            stdout=open(log.with_suffix(".out"), "a"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
        wait(lambda: (state / "endpoints.json").exists() or self.proc.poll() is not None, 120, "start")
        assert self.proc.poll() is None, log.with_suffix(".out").read_text()[-3000:]
        self.endpoints = json.loads((state / "endpoints.json").read_text())

    def client(self, service: str) -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoints["aws"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def crash(self) -> None:
        """Every process of the local cloud killed at once, as a power cut would."""
        tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(tree, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.crash()


def test_a_crash_mid_run_loses_nothing_and_the_pipeline_carries_on(tmp_path: Path, processes) -> None:
    state, log = tmp_path / "state", tmp_path / "functions.log"
    state.mkdir()
    first = Process(state, log, LOCALCLOUD_TRAINER_CMD=BUSY_TRAINER)
    processes.append(first)
    samples = comfort.generate(240, 3, 0.05)
    reply = requests.post(
        f"{first.endpoints['api']}/upload", json=samples, headers=keyed(first.endpoints), timeout=120
    )
    assert reply.status_code == 200 and reply.json()["written"] == 240
    model_table = "autoretrain-local-models"
    registry = Registry(model_table, first.client("dynamodb"))
    run = wait(lambda: next(iter(registry.list_runs(limit=5)[0]), None), 60, "a run")
    version = run["version"]
    lock = LockStore(model_table, first.client("dynamodb"))
    wait(lambda: lock.read().instance_id, 60, "the run's instance")
    wait(lambda: first.client("cloudwatch").describe_alarms()["MetricAlarms"], 30, "the run's alarm")

    first.crash()

    second = Process(state, log)
    processes.append(second)
    ddb = second.client("dynamodb")
    # every acknowledged sample is there
    assert ddb.scan(TableName="autoretrain-local-samples", Select="COUNT")["Count"] == 240
    registry = Registry(model_table, ddb)
    # the run in flight is resolved: interrupted, its lock freed, its alarm gone, its instance dead
    wait(lambda: registry.get_run(version).get("status") == "interrupted", 60, "the run to end interrupted")
    lock = LockStore(model_table, ddb)
    wait(lambda: lock.read().holder != version, 30, "the lock to be freed")
    # no instance of the first life is still running (the restart terminated them; a journal
    # replay may give a re-created instance another id than the first life's)
    ec2 = second.client("ec2")
    reply = ec2.describe_instances(Filters=[{"Name": "tag:run_version", "Values": [version]}])
    states = [i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]]
    assert states and all(state in ("shutting-down", "terminated") for state in states)
    # the pipeline carries on: the interrupted run (an infrastructure failure) is retried after
    # the retry backoff with the same samples, and nothing else is launched
    wait(lambda: len(registry.list_runs(limit=10)[0]) == 2, 120, "the retry")
    time.sleep(3)
    assert len(registry.list_runs(limit=10)[0]) == 2
    second.stop()
