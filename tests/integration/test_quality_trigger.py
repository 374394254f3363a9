"""The quality and drift rules end to end under moto: the score function judges the serving
version's window and asks for a run in the lock item; the train function starts it under the
lock and the minimum interval and records why."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest

from lambdas import score, train
from lambdas.core import aws, comfort, drift, ingest, live, lock, log, registry
from lambdas.core.schema import FEATURE_NAMES
from scripts.bench_score import publish_constant, stream_records
from tests.support.trigger import train_settings

V1 = "v20261120T080000Z-0001"


@pytest.fixture
def cloud(stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A serving model that answers "ok" to everything, 90 % right on 2,000 holdout samples."""
    monkeypatch.setenv("MODEL_SOURCE", "s3")
    monkeypatch.setenv("LIVE_BUCKET_S", "300")
    monkeypatch.setenv("LIVE_WINDOW_S", "3600")
    monkeypatch.setenv("QUALITY_MIN_SAMPLES", "30")
    monkeypatch.setenv("DRIFT_MIN_SAMPLES", "30")
    score.reset()
    stack.cfg = train_settings(stack, monkeypatch, MIN_NEW_SAMPLES="200")
    stack.registry = registry.Registry(stack.physical["ModelTable"])
    stack.locks = lock.LockStore(stack.physical["ModelTable"])
    stack.read = 0
    publish_constant(aws.s3(), stack.registry, stack.physical["ModelBucket"], V1, "ok")
    stack.registry.update_run(
        V1, expect_status=None, metrics={"holdout": {"accuracy": 0.9, "count": 2000, "loss": 0.3}}
    )
    yield stack
    score.reset()


def upload(cloud: Any, label: str, n: int) -> list[dict[str, Any]]:
    """``n`` samples labelled ``label`` through the upload path; their stream records."""
    time.sleep(0.005)
    payload = [{"temp": 70 + i % 10, "rh": 40, "wind": 0.1, "clo": 0.6, "label": label} for i in range(n)]
    ingest.ingest(payload, ingest.IngestSettings(cloud.physical["DataTable"]), source="api")
    records = stream_records(boto3.client("dynamodbstreams"), cloud.arns["DataTable.StreamArn"])
    fresh, cloud.read = records[cloud.read :], len(records)
    return [r for r in fresh if r["eventName"] == "INSERT"]


def deliver(records: list[dict[str, Any]]) -> list[str]:
    return [f["itemIdentifier"] for f in score.handler({"Records": records})["batchItemFailures"]]


def instances() -> list[dict[str, Any]]:
    reply = boto3.client("ec2").describe_instances(
        Filters=[{"Name": "tag:service", "Values": ["autoretrain"]}]
    )
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def test_quality_drop_starts_a_run_before_the_count_rule_and_the_run_says_why(cloud: Any) -> None:
    records = upload(cloud, "warm", 40)  # all wrong: 0 % live against 90 % on the holdout
    assert deliver(records) == []
    request = cloud.locks.read().request
    assert request is not None and request["rule"] == "quality" and request["version"] == V1
    assert (request["seen"], request["correct"], request["holdout_accuracy"]) == (40, 0, 0.9)
    assert request["upper"] < request["holdout_lower"] - request["tolerance"]

    decision = train.tick(cloud.cfg, train.Clients.default())  # the schedule's next minute
    assert decision is not None and decision.launch and decision.rule == "quality"
    run = cloud.registry.get_run(decision.launch)
    assert run["trigger"]["rule"] == "quality" and run["trigger"]["new_samples"] == 0
    assert run["trigger"]["min_new_samples"] == 200
    assert run["trigger"]["quality"] == {k: v for k, v in request.items() if k != "rule"}
    held = cloud.locks.read()
    assert held.holder == decision.launch and held.request is None  # answered by this run
    assert len(instances()) == 1


def test_quality_duplicates_and_a_run_in_flight_start_nothing_more(cloud: Any) -> None:
    records = upload(cloud, "warm", 40)
    assert deliver(records) == []
    rev = cloud.locks.read().rev
    assert deliver(records) == [] and deliver(records[:7]) == []  # replays count and ask nothing
    assert cloud.locks.read().rev == rev
    assert cloud.locks.request(cloud.locks.read().request or {}) is True  # the same request again
    decision = train.tick(cloud.cfg, train.Clients.default())
    assert decision is not None and decision.launch
    assert train.tick(cloud.cfg, train.Clients.default()) is None
    assert deliver(upload(cloud, "warm", 40)) == []  # still bad while the run trains: no request
    assert cloud.locks.read().request is None and cloud.locks.request({"rule": "quality"}) is False
    assert train.tick(cloud.cfg, train.Clients.default()) is None
    assert len(instances()) == 1


def test_quality_request_waits_for_the_minimum_interval(cloud: Any) -> None:
    cfg = train.TrainSettings(**{**cloud.cfg.__dict__, "min_interval_s": 3600})
    now = time.time()
    cloud.locks.write(lock.LockState(), lock.LockState(last_launch_at=now - 1000))
    assert deliver(upload(cloud, "warm", 40)) == []
    assert cloud.locks.read().wanted is not None  # evidence from after that launch
    assert train.tick(cfg, train.Clients.default(), now=now) is None
    assert instances() == []
    decision = train.tick(cfg, train.Clients.default(), now=now + 2700)
    assert decision is not None and decision.rule == "quality" and len(instances()) == 1


def test_quality_evidence_from_before_the_last_launch_asks_nothing(cloud: Any) -> None:
    """A rejected candidate leaves the same version serving: it is judged again only on what
    arrived after that run started."""
    cloud.locks.write(lock.LockState(), lock.LockState(last_launch_at=time.time()))
    assert deliver(upload(cloud, "warm", 40)) == []
    assert cloud.locks.read().request is None


def test_quality_no_request_while_the_model_does_as_well_as_on_its_holdout(cloud: Any) -> None:
    records = upload(cloud, "ok", 36) + upload(cloud, "cold", 4)  # 90 %
    assert deliver(records) == []
    assert cloud.locks.read() == lock.LockState()  # no lock item at all
    assert train.tick(cloud.cfg, train.Clients.default()) is None


def test_drift_starts_a_run_and_the_run_says_which_feature_moved(cloud: Any) -> None:
    """The model is right on every sample (no quality trigger), but the inputs are far from the
    training snapshot's: every sample has rh 40, wind 0.1 and clo 0.6."""
    rows = comfort.generate(1000, 1, 0.0)
    shape = drift.profile(np.array([[r[name] for name in FEATURE_NAMES] for r in rows], dtype=np.float32))
    cloud.registry.update_run(V1, expect_status=None, input_profile=shape.to_dict())
    records = upload(cloud, "ok", 40)
    assert deliver(records) == []
    since = int(time.time() * 1000) - 600_000
    _, items = live.LiveStore(cloud.physical["ModelTable"]).window_items(V1, since)
    assert [sum(h) for h in drift.histograms(items[0], shape)] == [40] * len(FEATURE_NAMES)
    request = cloud.locks.read().request
    assert request is not None and request["rule"] == "drift" and request["seen"] == 40
    assert request["psi"][request["feature"]] > request["threshold"] == 0.25
    assert deliver(records) == [] and cloud.locks.read().request == request  # a replay adds nothing

    decision = train.tick(cloud.cfg, train.Clients.default())
    assert decision is not None and decision.rule == "drift"
    trigger = cloud.registry.get_run(str(decision.launch))["trigger"]
    assert trigger["rule"] == "drift" and trigger["drift"]["feature"] == request["feature"]
    assert len(instances()) == 1


V2 = "v20261120T090000Z-0002"


def test_rule_request_about_a_version_no_longer_latest_is_dropped_not_launched(
    cloud: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person promoted another version after the request: the request judged a model that no
    longer answers, so it starts nothing; the new latest is judged on its own window."""
    assert deliver(upload(cloud, "warm", 40)) == []
    request = cloud.locks.read().request
    assert request is not None and request["version"] == V1
    publish_constant(aws.s3(), cloud.registry, cloud.physical["ModelBucket"], V2, "warm", promote=False)
    cloud.registry.promote(V2, reason="better", actor="test")
    lines: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(log, "log", lambda event, *_, **fields: lines.append((event, fields)))

    decision = train.tick(cloud.cfg, train.Clients.default())
    assert decision is not None and decision.launch is None and decision.dropped == request
    assert decision.reason == f"the quality request judged {V1}, latest is now {V2}"
    [(_, dropped)] = [line for line in lines if line[0] == "retrain_request_dropped"]
    assert dropped["reason"] == decision.reason and dropped["version"] == V1
    assert cloud.locks.read().request is None and instances() == []
    assert train.tick(cloud.cfg, train.Clients.default()) is None  # nothing left to do


def test_count_rule_launch_is_not_stopped_by_an_outdated_request(cloud: Any) -> None:
    assert deliver(upload(cloud, "warm", 40)) == []
    publish_constant(aws.s3(), cloud.registry, cloud.physical["ModelBucket"], V2, "warm", promote=False)
    cloud.registry.promote(V2, reason="better", actor="test")
    state = cloud.locks.read()
    samples = tuple((f"s{i:03}", 1) for i in range(200))
    cloud.locks.write(state, dataclasses.replace(state, pending_samples=samples))

    decision = train.tick(cloud.cfg, train.Clients.default())
    assert decision is not None and decision.launch and decision.rule == "count"
    assert decision.dropped is None and len(instances()) == 1
