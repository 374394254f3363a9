"""What the end-to-end tests of the retraining loop share: uploads, the run table, the lock,
instances and alarms of a running local cloud, and a patient wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests

from lambdas.core import comfort, lock, registry
from localcloud.cloud import LocalCloud
from tests.support.clouds import keyed

NOISE = 0.05
BATCH = 250  # above the local MIN_NEW_SAMPLES (200): one upload triggers one run
DEADLINE_S = 240.0
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], seconds: float = DEADLINE_S) -> T:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up after {seconds:g} s waiting for {what}"
        time.sleep(0.5)


def upload(cloud: LocalCloud, n: int, seed: int) -> list[str]:
    samples = comfort.generate(n, seed, NOISE)
    reply = requests.post(f"{cloud.api_url}/upload", json=samples, headers=keyed(cloud), timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["written"] == n
    return list(body["ids"])


def runs(cloud: LocalCloud) -> dict[str, dict[str, Any]]:
    listed, _ = registry.Registry(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb")).list_runs(
        limit=50
    )
    return {run["version"]: run for run in listed}


def latest(cloud: LocalCloud) -> str | None:
    return registry.Registry(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb")).latest_version()


def lock_state(cloud: LocalCloud) -> lock.LockState:
    return lock.LockStore(cloud.stack.table_name("ModelTable"), cloud.client("dynamodb")).read()


def instances(cloud: LocalCloud) -> dict[str, str]:
    reply = cloud.client("ec2").describe_instances(
        Filters=[{"Name": "tag:service", "Values": ["autoretrain"]}]
    )
    return {i["InstanceId"]: i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}


def alarms(cloud: LocalCloud) -> list[dict[str, Any]]:
    return list(cloud.client("cloudwatch").describe_alarms()["MetricAlarms"])


def driver(cloud: LocalCloud, name: str) -> Any:
    return next(d for d in cloud.drivers if d.name == name)


def finished_run(cloud: LocalCloud, exclude: set[str]) -> dict[str, Any] | None:
    for version, run in runs(cloud).items():
        if version not in exclude and run["status"] in registry.FINAL_STATUSES:
            return run
    return None


def settled(cloud: LocalCloud) -> bool:
    """No run in flight, every instance terminated, every alarm deleted."""
    return (
        lock_state(cloud).holder is None
        and all(state == "terminated" for state in instances(cloud).values())
        and not alarms(cloud)
    )
